"""Webhook delivery health through the API and the client, with real receivers on
127.0.0.1 and no model worker: jobs submitted with ``timeout_s=1`` fail as ``expired``
when the sweeper finds them, and their ``job.failed`` events are what is delivered.

Covered: ``Retry-After`` on a 429 holds the next attempt back; an endpoint failing every
attempt for ``SIGHTLINE_ENDPOINT_DISABLE_AFTER_S`` (shrunk to 1.5 s) is disabled and its
events kept, even new ones, without an attempt; ``GET /v1/deliveries`` lists them by
status, page by page; redelivering them, by range or by job, leaves them kept while the
endpoint is disabled (a job's redelivery answers 409); enabling the endpoint and
redelivering the time range recovers them, and a second redelivery sends nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cli.redis_server import free_port
from client import Client
from tests.console_browser import ConsoleBrowser
from tests.prometheus import scrape_until, total
from tests.receiver import Receiver
from tests.stack import Stack, make_image
from tests.waiting import wait_until

# Sweeps (and so retries) every 0.5 s, no jitter, plenty of quick attempts.
OPS = {
    "sweep_interval_s": "0.5",
    "webhook_retry_schedule_s": "0,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2",
    "webhook_jitter": "0",
    "endpoint_disable_after_s": "1.5",
}


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started = [Receiver(free_port()).start(), Receiver(free_port()).start()]
    yield started
    for receiver in started:
        receiver.stop()


def _expiring_job(client: Client, url: str, index: int) -> str:
    """A job that fails as ``expired`` at the first sweep after one second."""
    job = client.submit(make_image(60 + index), "hook", callback_url=url, timeout_s=1)
    return str(job["id"])


def _events(client: Client, status: str) -> dict[str, dict[str, Any]]:
    """The tenant's events in ``status``, by job id."""
    return {e["job_id"]: e for e in client.deliveries(status=status, limit=500)["deliveries"]}


def test_retry_after_holds_the_next_attempt_back(pg_stack: Stack) -> None:
    receiver = Receiver(free_port(), script=[429], headers={"Retry-After": "2"}).start()
    try:
        pg_stack.start_ops(**OPS)
        _expiring_job(pg_stack.client(), receiver.url, 0)
        first, second = receiver.wait_for(2, timeout_s=60)[:2]
    finally:
        receiver.stop()
    # The schedule alone would have retried 0.2 s later (at the next sweep, 0.5 s).
    assert second.at - first.at >= 2.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


def test_a_failing_endpoint_is_disabled_keeps_its_events_and_recovers_them(
    pg_stack: Stack, receivers: list[Receiver]
) -> None:
    failing, gone = receivers
    failing.default, gone.default = 500, 410
    client = pg_stack.client()
    since = datetime.now(UTC) - timedelta(seconds=1)
    pg_stack.start_ops(**OPS)
    first = _expiring_job(client, failing.url, 0)
    refused = _expiring_job(client, gone.url, 1)

    disabled = wait_until(
        lambda: [e for e in client.endpoints() if e["state"] == "disabled"],
        timeout_s=60,
        what="the failing endpoint to be disabled",
    )
    assert [e["url"] for e in disabled] == [f"http://127.0.0.1:{failing.port}"]
    assert disabled[0]["last_error"] == "HTTP 500"
    kept = wait_until(lambda: _events(client, "kept"), timeout_s=30, what="a kept event")
    assert list(kept) == [first]
    # 410 Gone fails the event at once; that endpoint is failing, not disabled.
    failed = wait_until(lambda: _events(client, "failed"), timeout_s=30, what="a failed event")
    assert list(failed) == [refused] and failed[refused]["last_error"] == "HTTP 410"
    attempts = len(failing.requests)

    # A new event for the disabled endpoint is kept without an attempt.
    second = _expiring_job(client, failing.url, 2)
    wait_until(lambda: set(_events(client, "kept")) == {first, second}, timeout_s=30, what="2 kept")
    assert len(failing.requests) == attempts
    page = client.deliveries(limit=1)
    rest = client.deliveries(limit=5, cursor=page["next_cursor"])
    listed = [e["job_id"] for e in page["deliveries"] + rest["deliveries"]]
    # Newest first (the other two expired in one sweep: same time, either order).
    assert listed[0] == second and sorted(listed) == sorted([first, second, refused])
    assert rest["next_cursor"] is None

    scrape_until(
        f"{pg_stack.url}/metrics",
        lambda found: total(found, "sightline_webhook_events", status="kept") == 2,
        timeout_s=30,
        what="the kept events in /metrics",
    )
    # The console shows the disabled endpoint, with its button, and the kept events.
    html = ConsoleBrowser(pg_stack.url, pg_stack.key).get("/deliveries").text
    assert f"http://127.0.0.1:{failing.port}" in html and ">Enable</button>" in html
    assert html.count("badge-kept") == 2 and "badge-failed" in html

    # Redelivery skips a disabled endpoint's events: they stay kept.
    gone.default = 200
    assert client.redeliver(since)["redelivering"] == [failed[refused]["id"]]
    one_job = pg_stack.call("POST", f"/v1/jobs/{first}/deliveries/redeliver")
    assert one_job.status_code == 409, one_job.text
    assert one_job.json()["code"] == "endpoint_disabled"
    assert disabled[0]["id"] in one_job.json()["detail"]
    endpoint = client.enable_endpoint(disabled[0]["id"])
    assert endpoint["state"] == "healthy" and endpoint["kept"] == 2
    failing.default = 200

    recovered = client.redeliver(since, datetime.now(UTC))
    assert sorted(recovered["redelivering"]) == sorted(
        e["id"] for e in _events_of(client, [first, second])
    )
    assert client.redeliver(since)["redelivering"] == []  # already on their way
    wait_until(
        lambda: set(_events(client, "delivered")) == {first, second, refused},
        timeout_s=30,
        what="every event delivered",
    )
    delivered_ids = [r.headers["webhook-id"] for r in failing.requests[attempts:]]
    assert sorted(delivered_ids) == sorted(recovered["redelivering"])
    assert [e["state"] for e in client.endpoints()] == ["healthy", "healthy"]


def _events_of(client: Client, job_ids: list[str]) -> list[dict[str, Any]]:
    return [e for e in client.deliveries(limit=500)["deliveries"] if e["job_id"] in job_ids]


def test_bad_redelivery_and_listing_requests_are_refused(pg_stack: Stack) -> None:
    now = datetime.now(UTC)
    refused = {
        "no since": pg_stack.call("POST", "/v1/deliveries/redeliver", json={}),
        "naive since": pg_stack.call(
            "POST", "/v1/deliveries/redeliver", json={"since": "2026-01-01T00:00:00"}
        ),
        "until before since": pg_stack.call(
            "POST",
            "/v1/deliveries/redeliver",
            json={"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()},
        ),
        "bad status": pg_stack.call("GET", "/v1/deliveries?status=lost"),
        "unknown parameter": pg_stack.call("GET", "/v1/deliveries?job=1"),
        "unknown endpoint": pg_stack.call("POST", "/v1/endpoints/nope/enable"),
    }
    answers = {why: (r.status_code, r.json()["code"]) for why, r in refused.items()}
    assert answers == {
        "no since": (422, "invalid_fields"),
        "naive since": (422, "invalid_time_range"),
        "until before since": (422, "invalid_time_range"),
        "bad status": (422, "invalid_query"),
        "unknown parameter": (422, "invalid_query"),
        "unknown endpoint": (404, "not_found"),
    }
