"""The worker's job notices (``worker/job_notices.py``) against a real Redis: which running
jobs it asks the database about before a step. A fake clock drives the full checks."""

from __future__ import annotations

import json
import uuid

import redis

from cli.redis_server import RedisServer
from shared.job_feed import CHANGED, job_channel
from tests.waiting import wait_until
from worker.job_notices import JobNotices


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _settled(client: redis.Redis, notices: JobNotices, running: list[uuid.UUID]) -> None:
    """Step until every job's subscription is confirmed and it was checked once: Redis
    holds every subscription (so every confirmation is on its way), then a step has
    nothing left to check. A step before the confirmations arrive has nothing to check
    either, and a job whose confirmation came after it would be checked in the test."""
    channels = [job_channel(job_id) for job_id in running]
    wait_until(
        lambda: all(count for _, count in client.pubsub_numsub(*channels)),
        timeout_s=5,
        what="subscribed",
    )
    wait_until(lambda: not notices.to_check(running), timeout_s=5, what="quiet")


def test_only_jobs_with_a_notice_are_looked_up(redis_server: RedisServer) -> None:
    client, clock = redis.Redis.from_url(redis_server.url), Clock()
    notices = JobNotices(client, full_check_s=60, clock=clock)
    running = [uuid.uuid4() for _ in range(4)]
    assert notices.to_check(running) == set(running), "the first step checks every job"
    _settled(client, notices, running)

    client.publish(job_channel(running[2]), CHANGED)  # e.g. canceled
    text = json.dumps({"kind": "text", "claim": "0", "reasoning": [0, ""], "answer": [0, "x"]})
    client.publish(job_channel(running[0]), text)  # the worker's own text: not a move
    wait_until(lambda: notices.to_check(running) == {running[2]}, timeout_s=5, what="noticed")
    assert notices.to_check(running) == set(), "a notice is answered once"


def test_a_job_that_joins_is_checked_once_subscribed(redis_server: RedisServer) -> None:
    """A notice published between the claim and the subscription would be missed: the
    job is looked up once its subscription is confirmed."""
    client, clock = redis.Redis.from_url(redis_server.url), Clock()
    notices = JobNotices(client, full_check_s=60, clock=clock)
    first = [uuid.uuid4()]
    notices.to_check(first)
    _settled(client, notices, first)
    joined = [*first, uuid.uuid4()]
    checked: set[uuid.UUID] = set()

    def joined_checked() -> bool:
        checked.update(notices.to_check(joined))
        return joined[1] in checked

    wait_until(joined_checked, timeout_s=5, what="joined")
    assert checked == {joined[1]}
    assert notices.to_check(joined) == set()


def test_every_job_is_checked_every_full_check_s(redis_server: RedisServer) -> None:
    client, clock = redis.Redis.from_url(redis_server.url), Clock()
    notices = JobNotices(client, full_check_s=2, clock=clock)
    running = [uuid.uuid4(), uuid.uuid4()]
    notices.to_check(running)
    _settled(client, notices, running)
    clock.now += 2
    assert notices.to_check(running) == set(running), "a lost notice is caught"


def test_without_redis_every_job_is_checked_every_step(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    clock = Clock()
    notices = JobNotices(client, full_check_s=60, clock=clock)
    running = [uuid.uuid4()]
    notices.to_check(running)
    _settled(client, notices, running)
    client.client_kill_filter(_type="pubsub")  # what a Redis restart does to it
    gone = JobNotices(redis.Redis(port=1, socket_connect_timeout=0.2), clock=clock)
    for _ in range(3):
        assert gone.to_check(running) == set(running)
    wait_until(lambda: notices.to_check(running) == set(running), timeout_s=5, what="lost: all")
