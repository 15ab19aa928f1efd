"""The worker's step publisher (``worker.step_events``) against a real Redis: what it
publishes for watched jobs, and how its rounds spread out when many are watched.

The engine is a stand-in holding each job's text (the publisher reads only ``running``
and ``text``); the clock is a counter the test moves.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from cli.redis_server import RedisServer
from shared.job_feed import job_channel, text_key, watch_key
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


def test_rounds_spread_out_to_keep_within_the_message_budget(client: redis.Redis) -> None:
    now = [0.0]
    publisher = StepPublisher(client, interval_s=0.1, messages_per_s=50, clock=lambda: now[0])
    engine = Texts(100)
    for job_id in engine.running:
        client.set(watch_key(job_id), "reader")
    listener = client.pubsub()
    listener.psubscribe("sightline:job:*")
    claim = uuid.uuid4()
    published: list[float] = []
    # Ten seconds of steps every 50 ms, a word each: 100 watched jobs at 50 messages a
    # second means a round (100 messages) every 2 s, not every 0.1 s.
    for step in range(200):
        now[0] = step * 0.05
        engine.write("word ")
        publisher.publish(engine, StepEvents(), claim)  # type: ignore[arg-type]
        while (message := listener.get_message(timeout=0.01)) is not None:
            if message["type"] == "pmessage":
                published.append(now[0])
    rounds = sorted(set(published))
    assert rounds == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert len(published) == 5 * 100
    # Nothing is skipped: the replay hash holds each job's whole text of the last round.
    first = engine.running[0]
    assert client.hget(text_key(first), "answer") == ("word " * 161).encode()


def test_a_few_watched_jobs_are_published_every_interval(client: redis.Redis) -> None:
    now = [0.0]
    publisher = StepPublisher(client, interval_s=0.125, messages_per_s=50, clock=lambda: now[0])
    engine = Texts(3)
    watched = engine.running[0]
    client.set(watch_key(watched), "reader")  # only one of the three is watched
    listener = client.pubsub()
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
