"""Reading a ``/metrics`` page the way Prometheus does, for assertions."""

from __future__ import annotations

from collections.abc import Callable

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.waiting import wait_until

# (sample name, its labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# The API's /metrics wants a bearer token; tests.stack.Stack gives its API this one. The
# workers' metrics ask for none and ignore it.
METRICS_TOKEN = "tests-metrics-token"


def scrape(url: str, token: str = METRICS_TOKEN) -> Samples:
    """Every sample on the page at ``url``, asked for with ``token`` as Prometheus does
    (``authorization`` in its scrape config)."""
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    response.raise_for_status()
    return parse(response.text)


def parse(page: str) -> Samples:
    """Every sample in a page of the Prometheus text format."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples that carry at least ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def scrape_until(
    url: str, wanted: Callable[[Samples], bool], *, timeout_s: float, what: str
) -> Samples:
    """Scrape ``url`` until ``wanted(samples)`` holds; returns that scrape. For values that
    settle a moment after what the test waited for (a worker records a batch just after
    committing it; the sender records an attempt after the receiver got it; each API
    process refreshes its cached figures on its own), so every value a test then reads
    must be part of ``wanted``."""

    def settled() -> Samples | None:
        samples = scrape(url)
        return samples if wanted(samples) else None

    return wait_until(settled, timeout_s=timeout_s, what=f"{what} at {url}")
