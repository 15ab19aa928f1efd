"""The worker's step publisher (``worker.step_events``) against a real Redis: what it
publishes for watched jobs, how it spreads their turns out when many are watched, and
when it reads the watch keys.

The engine is a stand-in holding each job's text (the publisher reads only ``running``
and ``text``); the clock is a counter the test moves.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pytest
import redis

from cli.redis_server import RedisServer
from shared.job_feed import (
    announce_watching,
    job_channel,
    text_key,
    watch_key,
    watching_channel,
)
from tests.waiting import wait_until
from worker.model.engine import StepEvents
from worker.step_events import StepPublisher


class Texts:
    """The two things the publisher asks of an engine."""

    def __init__(self, count: int) -> None:
        self.texts = {uuid.uuid4(): "" for _ in range(count)}

    @property
    def running(self) -> list[uuid.UUID]:
        return list(self.texts)

    def text(self, job_id: uuid.UUID) -> str:
        return self.texts[job_id]

    def write(self, text: str) -> None:
        for job_id in self.texts:
            self.texts[job_id] += text


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    found = redis.Redis(port=redis_server.port, db=15)
    found.flushdb()
    yield found
    found.flushdb()
    found.close()


def _hundred_watched(
    client: redis.Redis, now: list[float]
) -> tuple[StepPublisher, Texts, redis.client.PubSub]:
    """A publisher of 40 messages a second in rounds of 0.125 s on the clock ``now[0]``,
    an engine of 100 running jobs, all watched, and a listener of every job's channel."""
    publisher = StepPublisher(client, interval_s=0.125, messages_per_s=40, clock=lambda: now[0])
    engine = Texts(100)
    for job_id in engine.running:
        client.set(watch_key(job_id), "reader")
    # redis leaves pubsub() unannotated.
    listener: redis.client.PubSub = client.pubsub()  # type: ignore[no-untyped-call]
    listener.psubscribe("sightline:job:*")
    return publisher, engine, listener


def test_turns_spread_out_to_keep_within_the_message_budget(client: redis.Redis) -> None:
    now = [0.0]
    publisher, engine, listener = _hundred_watched(client, now)
    claim = uuid.uuid4()
    published: dict[bytes, list[float]] = {}
    # Ten seconds of steps every 62.5 ms, a word each: 100 watched jobs at 40 messages a
    # second means five every 0.125 s (not 100 every 2.5 s), each job every 2.5 s.
    for step in range(160):
        now[0] = step * 0.0625
        engine.write("word ")
        publisher.publish(engine, StepEvents(), claim)  # type: ignore[arg-type]
        while (message := listener.get_message(timeout=0.01)) is not None:
            if message["type"] == "pmessage":
                published.setdefault(message["channel"], []).append(now[0])
    rounds = Counter(at for times in published.values() for at in times)
    assert sorted(rounds) == [turn * 0.125 for turn in range(80)]
    assert set(rounds.values()) == {5}
    assert len(published) == 100
    assert all(
        [later - earlier for earlier, later in pairwise(times)] == [2.5] * (len(times) - 1)
        for times in published.values()
    )
    # Nothing is skipped: the replay hash holds each job's whole text as of its last turn.
    first = engine.running[0]
    last_turn = published[job_channel(first).encode()][-1]
    words = int(last_turn / 0.0625) + 1
    assert client.hget(text_key(first), "answer") == ("word " * words).encode()


def test_slow_steps_still_get_the_message_budget_out(client: redis.Redis) -> None:
    now = [0.0]
    publisher, engine, listener = _hundred_watched(client, now)
    counts = []
    for step in range(1, 5):  # a step every 0.5 s: twenty turns each
        now[0] = step * 0.5
        engine.write("word ")
        publisher.publish(engine, StepEvents(), uuid.uuid4())  # type: ignore[arg-type]
        count = 0
        while (message := listener.get_message(timeout=0.01)) is not None:
            count += message["type"] == "pmessage"
        counts.append(count)
    assert counts == [5, 20, 20, 20]  # the first round's budget is one interval's


def test_a_few_watched_jobs_are_published_every_interval(client: redis.Redis) -> None:
    now = [0.0]
    publisher = StepPublisher(client, interval_s=0.125, messages_per_s=50, clock=lambda: now[0])
    engine = Texts(3)
    watched = engine.running[0]
    client.set(watch_key(watched), "reader")  # only one of the three is watched
    # redis leaves pubsub() unannotated.
    listener: redis.client.PubSub = client.pubsub()  # type: ignore[no-untyped-call]
    listener.subscribe(*(job_channel(job_id) for job_id in engine.running))
    listener.get_message(timeout=1)  # the subscription confirmations
    listener.get_message(timeout=1)
    listener.get_message(timeout=1)
    texts = []
    for step in range(10):
        now[0] = step * 0.125
        engine.write(f"{step} ")
        publisher.publish(engine, StepEvents(), uuid.uuid4())  # type: ignore[arg-type]
        while (message := listener.get_message(timeout=0.01)) is not None:
            assert message["channel"] == job_channel(watched).encode()
            texts.append(json.loads(message["data"])["answer"][1])
    assert "".join(texts) == engine.text(watched)
    assert len(texts) == 10


class CountingRedis(redis.Redis):
    """A client of the real Redis that counts its ``MGET`` calls (the publisher's reads of
    the watch keys)."""

    mgets = 0

    def mget(self, *args: Any, **kwargs: Any) -> Any:
        self.mgets += 1
        return super().mget(*args, **kwargs)


def test_watch_keys_are_read_when_they_may_have_changed_not_every_round(
    redis_server: RedisServer,
) -> None:
    """Listening to readers' announcements, the publisher reads the watch keys when a job
    joins, when a reader names a running job, and every ``recheck_s``: not at every round
    (ten round trips a second on the stepping thread)."""
    client = CountingRedis(port=redis_server.port, db=14)
    client.flushdb()
    now = [0.0]
    publisher = StepPublisher(
        client, interval_s=0.125, messages_per_s=50, recheck_s=10.0, clock=lambda: now[0]
    )
    engine = Texts(3)
    first, second, _ = engine.running
    # redis leaves pubsub() unannotated.
    listener: redis.client.PubSub = client.pubsub()  # type: ignore[no-untyped-call]
    listener.subscribe(*(job_channel(job_id) for job_id in engine.running))
    published: list[bytes] = []

    def step() -> int:
        """One round on the clock's next tick; the keys it read (0 or 1 MGET)."""
        before = client.mgets
        now[0] += 0.125
        engine.write("word ")
        publisher.publish(engine, StepEvents(), uuid.uuid4())  # type: ignore[arg-type]
        while (message := listener.get_message(timeout=0.05)) is not None:
            if message["type"] == "message":
                published.append(message["channel"])
        return client.mgets - before

    with publisher.listening():
        # The first rounds read the keys: the jobs are new, and until the subscription is
        # confirmed anything may have been announced.
        assert step() == 1
        wait_until(lambda: step() == 0, timeout_s=5, what="the subscription to be confirmed")
        assert [step() for _ in range(8)] == [0] * 8, "a second of rounds, no read"
        assert published == []

        client.set(watch_key(first), "reader")
        announce_watching(client, first)
        wait_until(lambda: step() == 1, timeout_s=5, what="the announcement to be heard")
        assert published and set(published) == {job_channel(first).encode()}

        client.set(watch_key(second), "upkeep")  # set again without an announcement
        assert [step() for _ in range(8)] == [0] * 8
        assert job_channel(second).encode() not in published
        now[0] += 10.0  # recheck_s later
        assert step() == 1
        assert job_channel(second).encode() in published


def test_bytes_that_name_no_job_on_the_watching_channel_do_not_stop_a_step(
    client: redis.Redis,
) -> None:
    """Anyone who can reach Redis can publish there; the stepping thread must go on."""
    now = [0.0]
    publisher = StepPublisher(client, interval_s=0.125, clock=lambda: now[0])
    engine = Texts(1)
    with publisher.listening():
        client.publish(watching_channel(client), b"\xff\xfe not a job")
        for _ in range(10):
            now[0] += 0.125
            engine.write("word ")
            publisher.publish(engine, StepEvents(), uuid.uuid4())  # type: ignore[arg-type]
            time.sleep(0.01)
