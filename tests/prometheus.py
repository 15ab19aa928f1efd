"""Reading a ``/metrics`` page the way Prometheus does, for assertions."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

# (sample name, its labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample on the page at ``url``."""
    response = requests.get(url, timeout=10)
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
