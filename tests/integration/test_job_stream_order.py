"""A job's event stream (``api/job_stream.py``) driven directly, against a real Redis: a
status event that does not end the job is held back for its delay, but never behind the
text or the end that follows it. The job's database row is a stand-in the test moves;
the notices and text go through Redis pub/sub as the worker sends them."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from api.feed_listener import FeedListener
from api.job_stream import JobStream
from api.stream_upkeep import StreamUpkeep
from cli.redis_server import RedisServer
from shared.job_feed import CHANGED, claim_label, job_channel, text_key, text_message
from shared.models import Job, JobStatus, Priority

QUIET_S = 0.5  # how long "nothing was sent" is watched for


class Row:
    """The job as the database holds it."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.fields: dict[str, Any] = dict(
            id=uuid.uuid4(),
            status=JobStatus.QUEUED,
            attempts=0,
            priority=Priority.BULK,
            prompt="p",
            options={},
            image_sha256="0" * 64,
            image_width=1,
            image_height=1,
            thinking=False,
            cached=False,
            created_at=now,
            deadline_at=now + timedelta(hours=1),
        )
        self.job = Job(**self.fields)

    def read(self, since: float) -> Job:
        return self.job

    def move(self, **changes: Any) -> None:
        self.fields.update(changes)
        self.job = Job(**self.fields)

    def start(self) -> uuid.UUID:
        token = uuid.uuid4()
        attempts = self.fields["attempts"] + 1
        self.move(status=JobStatus.RUNNING, attempts=attempts, claim_token=token, worker="cpu0@t")
        return token


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    """Left open: the listeners' threads outlive the test."""
    return redis.Redis.from_url(redis_server.url)


def _events(stream: JobStream) -> queue.Queue[str]:
    """The names of the stream's events (without comments), read in a thread of their
    own."""
    names: queue.Queue[str] = queue.Queue()
    _read_in_thread(stream, lambda name, data: names.put(name))
    return names


def _read_in_thread(stream: JobStream, put: Callable[[str, Any], None]) -> None:
    def read() -> None:
        for event in stream.events(None):
            fields = dict(
                line.split(": ", 1) for line in event.splitlines() if line and line[0] != ":"
            )
            if "event" in fields:
                put(fields["event"], json.loads(fields["data"]))

    threading.Thread(target=read, daemon=True).start()


def _stream(client: redis.Redis, row: Row, delay_s: float) -> JobStream:
    return JobStream(
        row.job.id,
        row.read,
        ahead=lambda job: 0,
        listener=FeedListener(client),
        redis=client,
        upkeep=StreamUpkeep(client, lease_s=30),
        heartbeat_s=60,
        status_delay=lambda: delay_s,
    )


def test_a_held_status_goes_out_before_the_text_that_follows_it(client: redis.Redis) -> None:
    row = Row()
    events = _events(_stream(client, row, delay_s=60))
    assert events.get(timeout=10) == "status"  # queued: the first event is never held
    token = row.start()
    client.publish(job_channel(row.job.id), CHANGED)
    with pytest.raises(queue.Empty):
        events.get(timeout=QUIET_S)  # running: held back
    text = text_message(claim_label(token), 1, {"reasoning": (0, ""), "answer": (0, "Hi")})
    client.publish(job_channel(row.job.id), text)
    assert [events.get(timeout=10), events.get(timeout=10)] == ["status", "delta"]
    row.move(status=JobStatus.CANCELED, claim_token=None)
    client.publish(job_channel(row.job.id), CHANGED)
    assert events.get(timeout=10) == "done"


def test_a_held_status_goes_out_when_its_delay_ends_or_before_the_end(
    client: redis.Redis,
) -> None:
    row = Row()
    events = _events(_stream(client, row, delay_s=1.0))
    assert events.get(timeout=10) == "status"
    row.start()
    client.publish(job_channel(row.job.id), CHANGED)
    assert events.get(timeout=10) == "status"  # running, once its delay is over
    # Moved again with a long delay, then ended: the held status comes before done.
    held = _events(_stream(client, row, delay_s=60))
    assert held.get(timeout=10) == "status"  # running, at once: a stream's first event
    row.start()  # claimed again
    client.publish(job_channel(row.job.id), CHANGED)
    with pytest.raises(queue.Empty):
        held.get(timeout=QUIET_S)
    row.move(status=JobStatus.CANCELED, claim_token=None)
    client.publish(job_channel(row.job.id), CHANGED)
    assert [held.get(timeout=10), held.get(timeout=10)] == ["status", "done"]


def test_a_queued_job_s_claim_is_read_after_its_spread_and_its_status_sent_at_once(
    client: redis.Redis,
) -> None:
    # A batch's claim wakes every reader of its jobs at once: each puts off its read by
    # its spread, then sends what it read without holding it back a second time.
    row = Row()
    reads: list[float] = []

    def read(since: float) -> Job:
        reads.append(since)
        return row.job

    delays = iter([0.5] + [30.0] * 10)
    stream = JobStream(
        row.job.id,
        read,
        ahead=lambda job: 0,
        listener=FeedListener(client),
        redis=client,
        upkeep=StreamUpkeep(client, lease_s=30),
        heartbeat_s=60,
        status_delay=lambda: next(delays),
    )
    events = _events(stream)
    assert events.get(timeout=10) == "status"  # queued
    before = len(reads)
    row.start()
    client.publish(job_channel(row.job.id), CHANGED)
    time.sleep(0.25)
    assert len(reads) == before, "the claim's notice was read within its spread"
    assert events.get(timeout=10) == "status"  # running: not held back another 30 s
    assert len(reads) == before + 1
    # Ended, so that no reader is left subscribed once the test's Redis server stops.
    row.move(status=JobStatus.CANCELED, claim_token=None)
    client.publish(job_channel(row.job.id), CHANGED)
    assert events.get(timeout=10) == "done"


def test_a_message_the_replay_snapshot_already_holds_is_not_sent_again(
    client: redis.Redis,
) -> None:
    # A stream subscribes, then reads the replay hash: a message the worker published
    # in between is both in the hash and, after it, in the stream's inbox.
    row = Row()
    claim = claim_label(row.start())
    channel = job_channel(row.job.id)
    client.hset(
        text_key(row.job.id),
        mapping={"claim": claim, "seq": 2, "reasoning": "", "answer": "Hello world"},
    )
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    _read_in_thread(_stream(client, row, delay_s=0), lambda name, data: events.put((name, data)))
    assert [events.get(timeout=10)[0] for _ in range(2)] == ["status", "delta"]

    older = {"reasoning": (0, ""), "answer": (0, "Hello")}  # what the hash holds already
    client.publish(channel, text_message(claim, 1, older))
    client.publish(channel, text_message(claim, 3, {"reasoning": (0, ""), "answer": (11, "!")}))
    row.move(status=JobStatus.CANCELED, claim_token=None)
    time.sleep(QUIET_S)  # the text first, then the end
    client.publish(channel, CHANGED)

    rest = [events.get(timeout=10) for _ in range(2)]
    assert rest == [("delta", {"part": "answer", "text": "!"}), ("done", rest[1][1])]
