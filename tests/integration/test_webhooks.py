"""Webhooks a consumer can trust, checked with a real receiver on 127.0.0.1 and verified
with the reference ``standardwebhooks`` library."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from cli.redis_server import free_port
from shared.webhooks import sign
from tests.prometheus import scrape_until, total
from tests.receiver import Receiver
from tests.stack import Stack, make_image
from tests.waiting import wait_until

# Short clocks: retries 0.4 s apart, sweeps twice a second, no jitter.
FAST = {
    "sweep_interval_s": "0.5",
    "webhook_retry_schedule_s": "0,0.4,0.8,1.2",
    "webhook_jitter": "0",
    "requeue_after_s": "2",
    "job_lease_s": "3",
    "fault_injection": "1",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver(free_port()).start()
    yield started
    started.stop()


def _submit(stack: Stack, url: str, prompt: str = "hook me", index: int = 0, **extra: Any) -> str:
    job = stack.client().submit(
        make_image(index), prompt, callback_url=url, max_new_tokens=4, **extra
    )
    return str(job["id"])


def _deliveries(stack: Stack, job_id: str) -> dict[str, Any]:
    response = requests.get(
        f"{stack.url}/v1/jobs/{job_id}/deliveries",
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_for_event_status(stack: Stack, job_id: str, status: str) -> dict[str, Any]:
    """The job's one webhook event, once it has ``status`` (the receiver sees a request
    before the sender records its outcome)."""

    def event_with_status() -> dict[str, Any] | None:
        events = _deliveries(stack, job_id)["events"]
        return events[0] if [e["status"] for e in events] == [status] else None

    return wait_until(event_with_status, timeout_s=30, what=f"the event to be {status}")


def test_completion_is_signed_and_verifies_with_the_reference_library(
    pg_stack: Stack, receiver: Receiver
) -> None:
    pg_stack.start_ops(**FAST)
    pg_stack.start_worker(**FAST)
    job_id = _submit(pg_stack, receiver.url)

    request = receiver.wait_for(1)[0]

    payload = Webhook(pg_stack.webhook_secret).verify(request.body, request.headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["status"] == "succeeded"
    assert payload["data"] == pg_stack.client().get(job_id) | {"callback_url": receiver.url}
    assert request.headers["webhook-id"].startswith("msg_")
    assert request.headers["content-type"] == "application/json"

    with pytest.raises(WebhookVerificationError):
        Webhook(pg_stack.webhook_secret).verify(
            request.body.replace(b"succeeded", b"failed"), request.headers
        )
    stale = int(time.time()) - 600
    old_headers = request.headers | {
        "webhook-timestamp": str(stale),
        "webhook-signature": sign(
            pg_stack.webhook_secret, request.headers["webhook-id"], stale, request.body.decode()
        ),
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(pg_stack.webhook_secret).verify(request.body, old_headers)


def test_three_failures_then_success_are_four_recorded_attempts(
    pg_stack: Stack, receiver: Receiver
) -> None:
    receiver.script = [500, 500, 500]
    pg_stack.start_ops(**FAST)
    pg_stack.start_worker(**FAST)
    job_id = _submit(pg_stack, receiver.url)

    got = receiver.wait_for(4)
    _wait_for_event_status(pg_stack, job_id, "delivered")

    assert len({request.headers["webhook-id"] for request in got}) == 1, "same id on every retry"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(got)]
    for gap, scheduled in zip(gaps, [0.4, 0.8, 1.2], strict=True):
        assert gap >= scheduled - 0.05, f"retry after {gap:.2f} s, schedule says {scheduled} s"
    (event,) = _deliveries(pg_stack, job_id)["events"]
    assert event["status"] == "delivered" and event["attempts"] == 4
    assert [d["status_code"] for d in event["deliveries"]] == [500, 500, 500, 200]
    assert [d["attempt"] for d in event["deliveries"]] == [1, 2, 3, 4]
    assert all(d["latency_ms"] is not None for d in event["deliveries"])
    assert event["deliveries"][-1]["next_attempt_at"] is None
    assert all(d["next_attempt_at"] for d in event["deliveries"][:-1])


def test_events_wait_out_a_receiver_outage_and_arrive_once_each(pg_stack: Stack) -> None:
    port = free_port()
    down = Receiver(port)
    settings = FAST | {"webhook_retry_schedule_s": ",".join(["0"] + ["1"] * 30)}
    pg_stack.start_ops(**settings)
    pg_stack.start_worker(**settings)
    ids = [_submit(pg_stack, down.url, f"outage {i}", index=i) for i in range(50)]
    assert [job["status"] for job in pg_stack.wait_all(ids)] == ["succeeded"] * 50
    # Attempts fail against the closed port meanwhile.
    lagging = scrape_until(
        f"{pg_stack.url}/metrics",
        lambda found: (
            total(found, "sightline_webhook_oldest_pending_seconds") >= 2
            and total(found, "sightline_webhook_events", status="pending") == 50
        ),
        timeout_s=30,
        what="50 pending webhook events lagging by 2 s",
    )
    assert total(lagging, "sightline_webhook_events", status="pending") == 50
    assert total(lagging, "sightline_webhook_events", status="failed") == 0
    assert total(lagging, "sightline_webhook_oldest_pending_seconds") >= 2
    # The outage really hit every event: each has a failed attempt before the receiver
    # comes up (the metrics above do not say so of the newest one).
    wait_until(
        lambda: all(_failed_attempts(pg_stack, job_id) for job_id in ids),
        timeout_s=30,
        interval_s=0.5,
        what="a failed attempt of every event",
    )

    up = down.start()
    try:
        up.wait_for(50, timeout_s=90)
        # The receiver has the last body before the sender records it: wait for that.
        caught_up = scrape_until(
            f"{pg_stack.url}/metrics",
            lambda found: (
                total(found, "sightline_webhook_events", status="pending") == 0
                and total(found, "sightline_webhook_oldest_pending_seconds") == 0
            ),
            timeout_s=30,
            what="no pending webhook event",
        )
        assert total(caught_up, "sightline_webhook_oldest_pending_seconds") == 0
        ids_by_job: dict[str, set[str]] = {}
        for request in up.requests:
            job_id = json.loads(request.body)["data"]["id"]
            ids_by_job.setdefault(job_id, set()).add(request.headers["webhook-id"])
    finally:
        up.stop()

    assert sorted(ids_by_job) == sorted(ids), "every job's event arrived"
    assert all(len(webhook_ids) == 1 for webhook_ids in ids_by_job.values())
    assert all(_failed_attempts(pg_stack, job_id) for job_id in ids), "failures still recorded"


def _failed_attempts(stack: Stack, job_id: str) -> int:
    """How many attempts of the job's first event found no receiver (no status code)."""
    events = _deliveries(stack, job_id)["events"]
    return sum(1 for d in events[0]["deliveries"] if d["status_code"] is None) if events else 0


def test_worker_killed_between_commit_and_send_still_delivers(
    pg_stack: Stack, receiver: Receiver
) -> None:
    pg_stack.start_ops(**FAST)
    child = pg_stack.start_worker_child("doomed@test", ready=True, **FAST)
    job_id = _submit(pg_stack, receiver.url, "[[crash-after-commit]] deliver anyway")
    assert child.wait(timeout=60) < 0, "the worker died right after committing"

    request = receiver.wait_for(1)[0]

    assert pg_stack.client().get(job_id)["status"] == "succeeded"
    assert (
        Webhook(pg_stack.webhook_secret).verify(request.body, request.headers)["data"]["id"]
        == job_id
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://[::1]/hook",
        "ftp://x/hook",
    ],
)
def test_private_or_odd_callback_urls_are_refused(pg_stack: Stack, url: str) -> None:
    response = requests.post(
        f"{pg_stack.url}/v1/jobs",
        files={"image": ("a.png", make_image(1))},
        data={"prompt": "x", "callback_url": url},
        headers={"Authorization": f"Bearer {pg_stack.key}"},
        timeout=10,
    )
    assert response.status_code == 422
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden_destination"
    assert pg_stack.jobs() == []


def test_rotation_signs_with_both_secrets_and_redeliver_resends_the_same_id(
    pg_stack: Stack, receiver: Receiver
) -> None:
    old = pg_stack.webhook_secret
    new = json.loads(pg_stack.cli("keys", "rotate-secret", "tests", "--json"))["webhook_secret"]
    try:
        pg_stack.start_ops(**FAST)
        pg_stack.start_worker(**FAST)
        job_id = _submit(pg_stack, receiver.url)
        first = receiver.wait_for(1)[0]
        assert len(first.headers["webhook-signature"].split(" ")) == 2
        for secret in (old, new):
            assert Webhook(secret).verify(first.body, first.headers)["data"]["id"] == job_id

        redo = requests.post(
            f"{pg_stack.url}/v1/jobs/{job_id}/deliveries/redeliver",
            headers={"Authorization": f"Bearer {pg_stack.key}"},
            timeout=10,
        )
        assert redo.status_code == 202
        second = receiver.wait_for(2)[1]
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        assert second.body == first.body
    finally:
        pg_stack.webhook_secret = new


def test_redeliver_during_an_attempt_in_flight_is_sent_after_it(
    pg_stack: Stack, receiver: Receiver
) -> None:
    """Redeliver while the first attempt waits for its answer: the attempt's outcome must
    not overwrite the request (its wake-up found the event reserved and was skipped)."""
    receiver.hold = threading.Event()
    pg_stack.start_ops(**FAST)
    pg_stack.start_worker(**FAST)
    job_id = _submit(pg_stack, receiver.url)
    receiver.wait_for(1)
    redo = pg_stack.call("POST", f"/v1/jobs/{job_id}/deliveries/redeliver")
    assert redo.status_code == 202, redo.text
    receiver.hold.set()
    first, second = receiver.wait_for(2)[:2]
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    event = _wait_for_event_status(pg_stack, job_id, "delivered")
    assert [d["status_code"] for d in event["deliveries"]] == [200, 200]


def test_event_filter_and_410_gone(pg_stack: Stack, receiver: Receiver) -> None:
    receiver.script = [410]
    pg_stack.start_ops(**FAST)
    pg_stack.start_worker(**FAST)
    unwanted = _submit(pg_stack, receiver.url, "only failures please", webhook_events="job.failed")
    gone = _submit(pg_stack, receiver.url, "receiver says gone", index=1)
    pg_stack.wait_all([unwanted, gone])

    receiver.wait_for(1)
    time.sleep(2)  # a retry would be due by now

    assert len(receiver.requests) == 1
    assert json.loads(receiver.requests[0].body)["data"]["id"] == gone
    assert _deliveries(pg_stack, unwanted)["events"] == []
    (event,) = _deliveries(pg_stack, gone)["events"]
    assert (event["status"], event["attempts"]) == ("failed", 1)
