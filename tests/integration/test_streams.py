"""Event streams on the real stack: ``GET /v1/jobs/{id}/events`` and the batch's.

The worker runs with fault injection so that ``[[slow]]`` prompts take 0.5 s per step:
a job of 12 tokens streams for about 6 s, long enough to read, disconnect and come back.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import requests
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus
from tests.prometheus import scrape, scrape_until, total
from tests.sse import Event, answer, events
from tests.stack import Stack, make_image
from tests.waiting import wait_until

SLOW = {"fault_injection": "1"}
OPEN = "sightline_event_streams_open"
FIRST_DELTA = "sightline_stream_first_delta_seconds"


@contextmanager
def _stream(
    stack: Stack, path: str, last_id: str | None = None, *, within_s: float = 120
) -> Iterator[Iterator[Event]]:
    """The events of ``path``; an event arriving after ``within_s`` fails the test (the
    server's heartbeats keep the connection itself alive)."""
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    response = stack.call("GET", path, headers=headers, stream=True, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    deadline = time.monotonic() + within_s

    def bounded() -> Iterator[Event]:
        for event in events(response):
            assert time.monotonic() < deadline, f"{path} still streaming after {within_s} s"
            yield event

    try:
        yield bounded()
    finally:
        response.close()


def test_deltas_arrive_before_the_end_and_add_up_to_the_result(pg_stack: Stack) -> None:
    pg_stack.start_worker(**SLOW)
    client = pg_stack.client()
    job_id = client.submit(make_image(1), "[[slow]] stream me", max_new_tokens=12)["id"]
    received: list[Event] = []
    state_at_first_delta = None
    open_then = 0.0
    with _stream(pg_stack, f"/v1/jobs/{job_id}/events") as stream:
        for event in stream:
            received.append(event)
            if event.event == "delta" and state_at_first_delta is None:
                state_at_first_delta = client.get(job_id)["status"]
                open_then = total(scrape(f"{pg_stack.url}/metrics"), OPEN)

    names = [event.event for event in received]
    print(f"\n{names.count('delta')} deltas, events: {names[:4]}…{names[-2:]}")
    assert names[0] == "status" and names[-1] == "done"
    assert state_at_first_delta == "running", "text arrived while the job ran"
    assert names.count("delta") > 1
    final = client.get(job_id)
    assert received[-1].data == final, "done carries the job as GET returns it"
    assert answer(received) == final["result"]
    ids = [event.id for event in received]
    assert all(ids) and len(set(ids)) >= names.count("delta"), "every event names its position"
    assert open_then >= 1, "the open stream is counted"
    # Other tests' streams may still be open (a closed one is noticed at its next
    # heartbeat): this one's end shows as one fewer.
    samples = scrape_until(
        f"{pg_stack.url}/metrics",
        lambda found: total(found, OPEN) < open_then and total(found, f"{FIRST_DELTA}_count") >= 1,
        timeout_s=10,
        what="the closed stream and its time to first delta",
    )
    first_delta_s = total(samples, f"{FIRST_DELTA}_sum") / total(samples, f"{FIRST_DELTA}_count")
    assert 0 < first_delta_s < 60


def test_a_finished_job_streams_one_done(pg_stack: Stack) -> None:
    pg_stack.start_worker(**SLOW)  # the same settings: the parked worker is reused
    client = pg_stack.client()
    job = client.wait(client.submit(make_image(2), "quick", max_new_tokens=4)["id"])

    with _stream(pg_stack, f"/v1/jobs/{job['id']}/events") as stream:
        received = list(stream)

    assert [(event.event, event.data) for event in received] == [("done", job)]


def test_resuming_with_last_event_id_loses_and_repeats_nothing(pg_stack: Stack) -> None:
    pg_stack.start_worker(**SLOW)
    client = pg_stack.client()
    job_id = client.submit(make_image(3), "[[slow]] resume me", max_new_tokens=16)["id"]
    before: list[Event] = []
    with _stream(pg_stack, f"/v1/jobs/{job_id}/events") as stream:
        for event in stream:
            before.append(event)
            if sum(e.event == "delta" for e in before) == 3:
                break  # the connection is dropped here, mid-answer
    time.sleep(1.5)  # tokens generated while no one listens

    with _stream(pg_stack, f"/v1/jobs/{job_id}/events", last_id=before[-1].id) as stream:
        after = list(stream)

    final = client.get(job_id)
    print(f"\n{answer(before)!r} before the drop, {answer(after)!r} after")
    assert "reset" not in [event.event for event in after]
    assert answer(before) and answer(after)
    assert answer(before) + answer(after) == final["result"]
    assert after[-1].event == "done"


def test_another_tenants_job_is_404_and_canceling_ends_the_stream(pg_stack: Stack) -> None:
    client = pg_stack.client()
    waiting = [client.submit(make_image(5 + i), f"ahead {i}", max_new_tokens=2) for i in range(3)]
    with _stream(pg_stack, f"/v1/jobs/{waiting[-1]['id']}/events") as stream:
        first = next(stream)
    assert (first.event, first.data) == ("status", {"status": "queued", "ahead": 2})
    pg_stack.start_worker(**SLOW)
    job_id = client.submit(make_image(4), "[[slow]] cancel me", max_new_tokens=40)["id"]
    rival = json.loads(pg_stack.cli("keys", "create", f"rival-{uuid.uuid4().hex[:6]}", "--json"))

    refused = pg_stack.call("GET", f"/v1/jobs/{job_id}/events", key=rival["key"])
    assert refused.status_code == 404
    assert refused.headers["Content-Type"] == "application/problem+json"

    received: list[Event] = []
    canceled = False
    with _stream(pg_stack, f"/v1/jobs/{job_id}/events") as stream:
        for event in stream:
            received.append(event)
            if event.event == "delta" and not canceled:
                canceled = pg_stack.call("DELETE", f"/v1/jobs/{job_id}").status_code == 200
    assert canceled
    assert received[-1].event == "done"
    assert received[-1].data["status"] == "canceled"


def test_a_reclaimed_job_resets_its_stream_and_streams_the_new_attempt(pg_stack: Stack) -> None:
    # A short lease, and a sweeper that re-sends the lost wake-up (tests/test_durability).
    recovery = {"job_lease_s": "3", "requeue_after_s": "2", "sweep_interval_s": "1", **SLOW}
    pg_stack.start_ops(**recovery)
    client = pg_stack.client()
    job_id = client.submit(make_image(5), "[[slow]] outlive me", max_new_tokens=12)["id"]
    victim = pg_stack.start_worker_child("victim@test", ready=False, **recovery)
    received: list[Event] = []
    with _stream(pg_stack, f"/v1/jobs/{job_id}/events") as stream:
        for event in stream:
            received.append(event)
            if event.event == "delta" and victim.poll() is None:
                os.kill(victim.pid, signal.SIGKILL)
                victim.wait()
                pg_stack.start_worker_child("heir@test", ready=False, **recovery)

    names = [event.event for event in received]
    final = client.get(job_id)
    print(f"\nevents: {names}")
    assert final["status"] == "succeeded" and final["attempts"] == 2
    assert "reset" in names, "the new attempt's text starts over"
    reset_at = names.index("reset")
    reset_id = received[reset_at].id
    assert reset_id is not None and reset_id.startswith("2-")
    assert answer(received) == final["result"]


def test_a_batch_stream_reports_every_item_then_done(pg_stack: Stack) -> None:
    pg_stack.start_worker(**SLOW)
    client = pg_stack.client()
    items = [
        {"image": make_image(10 + i), "prompt": f"item {i}", "max_new_tokens": 4} for i in range(5)
    ]
    batch_id = client.batch(items)["id"]

    with _stream(pg_stack, f"/v1/batches/{batch_id}/events") as stream:
        received = list(stream)

    finished = [event.data for event in received if event.event == "item"]
    assert sorted(item["index"] for item in finished) == [0, 1, 2, 3, 4]
    assert {item["status"] for item in finished} == {"succeeded"}
    assert received[-1].event == "done"
    assert received[-1].data["counts"]["succeeded"] == 5
    assert [event.event for event in received].count("progress") >= 1


def test_a_batch_stream_resumes_with_an_item_that_ended_later_in_the_same_millisecond(
    pg_stack: Stack,
) -> None:
    # Items end in separate transactions (workers, cancels). The one with the higher
    # index ends first; the other ends 0.6 ms later, after the reader left.
    items = [{"image": make_image(20 + i), "prompt": "no worker: ends by hand"} for i in range(2)]
    ids = [item["id"] for item in pg_stack.client().batch(items)["accepted"]]
    batch_id = pg_stack.client().get(ids[0])["batch_id"]
    second = datetime(2026, 12, 1, 12, 0, 0, 5100, tzinfo=UTC)
    _end(pg_stack, ids[1], second)
    path = f"/v1/batches/{batch_id}/events"
    with _stream(pg_stack, path) as stream:
        first = next(event for event in stream if event.event == "item")
    assert first.data["index"] == 1

    _end(pg_stack, ids[0], second + timedelta(microseconds=600))
    with _stream(pg_stack, path, first.id) as stream:
        # The first read's items, then its progress event.
        resumed = list(itertools.takewhile(lambda event: event.event != "progress", stream))

    assert [(event.event, event.data["index"]) for event in resumed] == [("item", 0)]
    for hostile in ("99999999999999-999999999", "9999999999999999-0"):  # the largest ids
        with _stream(pg_stack, path, hostile) as stream:
            assert next(stream).event == "progress", "a cursor past every item sends none"


def _end(stack: Stack, job_id: str, at: datetime) -> None:
    """Cancel ``job_id`` as of ``at`` (a stand-in for a worker's commit)."""
    with Session(stack.engine) as session, session.begin():
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None
        job.status, job.finished_at = JobStatus.CANCELED, at


def test_streams_over_the_tenant_cap_are_refused_until_one_closes(pg_stack: Stack) -> None:
    # The test stack allows 4 streams per tenant and beats every 2 s
    # (tests.stack: SIGHTLINE_STREAMS_PER_TENANT, SIGHTLINE_STREAM_HEARTBEAT_S).
    job_id = pg_stack.client().submit(make_image(6), "no worker: stays queued")["id"]
    path = f"/v1/jobs/{job_id}/events"
    opened = []
    for _ in range(4):
        response = pg_stack.call("GET", path, stream=True, timeout=30)
        assert response.status_code == 200
        next(events(response))  # the first status event: the stream is really open
        opened.append(response)

    over = pg_stack.call("GET", path, timeout=30)
    assert over.status_code == 429, over.text
    assert over.json()["code"] == "too_many_streams"
    assert int(over.headers["Retry-After"]) > 0

    opened.pop().close()  # the server notices at its next heartbeat and frees the slot
    again = wait_until(
        lambda: _opens(pg_stack, path), timeout_s=15, what="a slot after a stream closed"
    )
    again.close()
    for response in opened:
        response.close()


def _opens(stack: Stack, path: str) -> requests.Response | None:
    response = stack.call("GET", path, stream=True, timeout=30)
    if response.status_code == 200:
        return response
    response.close()
    return None


def test_a_stream_holds_its_slot_for_longer_than_one_lease(pg_stack: Stack) -> None:
    """The test stack's slot lease is 2 × the 2 s heartbeat + 10 s = 14 s: streams open
    for longer still count against the cap (their slots are renewed)."""
    tenant = json.loads(pg_stack.cli("keys", "create", f"long-{uuid.uuid4().hex[:6]}", "--json"))
    key = tenant["key"]
    job_id = pg_stack.client(key).submit(make_image(7), "no worker: stays queued")["id"]
    path = f"/v1/jobs/{job_id}/events"
    opened = []
    for _ in range(4):
        response = pg_stack.call("GET", path, key=key, stream=True, timeout=30)
        assert response.status_code == 200
        reading = events(response)  # kept: a dropped reader closes its connection
        next(reading)
        opened.append((response, reading))
    time.sleep(18)  # past the first lease, and a renewal (every 14 ÷ 3 s) after it
    over = pg_stack.call("GET", path, key=key, stream=True, timeout=30)
    over.close()
    for response, _ in opened:
        response.close()
    assert over.status_code == 429, "the four open streams still hold their slots"


def test_head_requests_on_event_routes_hold_no_stream_slot(pg_stack: Stack) -> None:
    # HEAD runs the GET view, whose body is never read: a slot given back only when
    # the body ends would be held for as long as the API process lives.
    tenant = json.loads(pg_stack.cli("keys", "create", f"head-{uuid.uuid4().hex[:6]}", "--json"))
    key = tenant["key"]
    client = pg_stack.client(key)
    job_id = client.submit(make_image(8), "no worker: stays queued")["id"]
    batch = client.batch([{"image": make_image(9), "prompt": "queued too"}])
    paths = [f"/v1/jobs/{job_id}/events", f"/v1/batches/{batch['id']}/events"]
    for path in paths * 3:  # six, over the test stack's cap of four
        head = pg_stack.call("HEAD", path, key=key, timeout=30)
        assert head.status_code == 200, head.text
        assert head.headers["Content-Type"].startswith("text/event-stream")

    opened = []
    for path in paths * 2:
        response = pg_stack.call("GET", path, key=key, stream=True, timeout=30)
        assert response.status_code == 200, "the HEADs left every slot free"
        opened.append(response)
    for response in opened:
        response.close()


def test_a_revoked_key_reads_nothing_more_of_the_streams_it_opened(pg_stack: Stack) -> None:
    # A stream used to outlive the key that opened it: revoked, the key went on reading
    # its job's and its batch's events for as long as they ran (hours, for a batch).
    name = f"revoked-{uuid.uuid4().hex[:6]}"
    key = json.loads(pg_stack.cli("keys", "create", name, "--json"))["key"]
    client = pg_stack.client(key)
    job_id = client.submit(make_image(12), "no worker: stays queued")["id"]
    batch = client.batch([{"image": make_image(13), "prompt": "queued too"}])
    paths = [f"/v1/jobs/{job_id}/events", f"/v1/batches/{batch['id']}/events"]
    readers = [_opened(pg_stack, path, key) for path in paths]

    pg_stack.cli("keys", "revoke", name)
    revoked_at = time.monotonic()
    for response, lines in readers:
        # The key cache (1 s) and the stream's own check (1 s) lapse, then the next
        # write (a heartbeat at the latest: 2 s on the test stack) finds the key gone.
        assert "event: done" not in _until_closed(lines, revoked_at, within_s=15)
        response.close()
    print(f"\nstreams ended {time.monotonic() - revoked_at:.1f} s after the revocation")
    for path in paths:
        resumed = pg_stack.call("GET", path, key=key, timeout=30)
        assert resumed.status_code == 401, "a resume gets what any request with the key gets"


def test_a_purged_job_or_batch_ends_its_stream_at_once_and_quietly(pg_stack: Stack) -> None:
    # A purge deletes what a stream follows: the job stream's next read found nothing and
    # raised through the response (a server error in the API's log), and the batch
    # stream, told nothing, waited for its 30 s recheck to find the same. A tenant of its
    # own: the tests' tenant may still hold slots of streams closed just before.
    key = json.loads(pg_stack.cli("keys", "create", f"purged-{uuid.uuid4().hex[:6]}", "--json"))
    client = pg_stack.client(key["key"])
    job_id = client.submit(make_image(14), "no worker: stays queued")["id"]
    batch = client.batch([{"image": make_image(15), "prompt": "queued too"}])
    paths = [f"/v1/jobs/{job_id}/events", f"/v1/batches/{batch['id']}/events"]
    log = pg_stack.workdir / "logs" / "api.log"
    errors_before = log.read_text().count("LookupError")
    readers = [_opened(pg_stack, path, key["key"]) for path in paths]

    for path in (f"/v1/jobs/{job_id}", f"/v1/batches/{batch['id']}"):
        assert pg_stack.call("DELETE", f"{path}?purge=true", key=key["key"]).status_code < 300
    purged_at = time.monotonic()
    for response, lines in readers:
        assert "event: done" not in _until_closed(lines, purged_at, within_s=10)
        response.close()
    print(f"\nstreams ended {time.monotonic() - purged_at:.1f} s after the purges")
    assert log.read_text().count("LookupError") == errors_before, "no server error"
    for path in paths:
        assert pg_stack.call("GET", path, key=key["key"], timeout=30).status_code == 404


def _opened(
    stack: Stack, path: str, key: str | None = None
) -> tuple[requests.Response, Iterator[str]]:
    """A stream of ``path`` read up to its first event: its response and its lines."""
    response = stack.call("GET", path, key=key, stream=True, timeout=30)
    assert response.status_code == 200, response.text
    lines = (
        line if isinstance(line, str) else line.decode()
        for line in response.iter_lines(decode_unicode=True)
    )
    assert next(line for line in lines if line.startswith("event:"))
    return response, lines


def _until_closed(lines: Iterator[str], since: float, *, within_s: float) -> list[str]:
    """The lines of a stream until the server closes it, which must be less than
    ``within_s`` after ``since`` (its heartbeats, every 2 s, keep coming until then)."""
    after: list[str] = []
    for line in lines:
        assert time.monotonic() - since < within_s, f"still streaming: {after[-3:]}"
        after.append(line)
    return after
