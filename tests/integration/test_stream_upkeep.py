"""The streams' upkeep (``api/stream_upkeep.py``) against a real Redis: held slots outlive
their lease while kept, a released slot is free at once, watch keys stay set while a
stream of their job is open and lapse after the last one closes."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from api.stream_upkeep import StreamUpkeep
from cli.redis_server import RedisServer
from shared.job_feed import watch_key
from tests.waiting import wait_until


@pytest.fixture
def limit() -> str:
    """A limit of this test's own (an upkeep's thread outlives its test)."""
    return f"sightline:streams:{uuid.uuid4()}"


def test_kept_slots_outlive_their_lease_and_a_release_frees_one_at_once(
    redis_server: RedisServer, limit: str
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    upkeep = StreamUpkeep(client, lease_s=1.5)  # renewed every 0.5 s
    holds = [upkeep.take({limit: 3}) for _ in range(3)]
    assert all(holds)
    time.sleep(4)  # more than two leases
    assert upkeep.slots.acquire({limit: 3}, upkeep.lease_s) is None, "all three still held"
    assert holds[0] is not None
    upkeep.release(holds[0])
    wait_until(
        lambda: upkeep.slots.acquire({limit: 3}, upkeep.lease_s) is not None,
        timeout_s=0.5,
        what="the released slot free again",
    )
    for hold in holds[1:]:
        assert hold is not None
        upkeep.release(hold)
    wait_until(lambda: upkeep._thread is None, timeout_s=5, what="the thread ended, idle")


def test_a_slot_no_longer_kept_lapses(redis_server: RedisServer, limit: str) -> None:
    """What a process that died with open streams leaves: nothing renews its holds."""
    client = redis.Redis.from_url(redis_server.url)
    kept, dead = StreamUpkeep(client, lease_s=1.5), StreamUpkeep(client, lease_s=1.5)
    alive = kept.take({limit: 2})
    assert alive is not None and dead.slots.acquire({limit: 2}, dead.lease_s) is not None
    wait_until(
        lambda: kept.slots.acquire({limit: 2}, kept.lease_s) is not None,
        timeout_s=5,
        what="the unkept slot lapsed",
    )
    assert client.zscore(limit, alive.token) is not None, "the kept one still held"
    kept.release(alive)


def test_watch_keys_are_kept_while_a_stream_of_their_job_is_open(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    upkeep = StreamUpkeep(client, lease_s=1.5)
    watched, left = uuid.uuid4(), uuid.uuid4()
    upkeep.watch(watched)
    upkeep.watch(watched)  # two streams of one job
    upkeep.watch(left)
    upkeep.unwatch(watched)  # one of them closes: still watched
    upkeep.unwatch(left)
    wait_until(lambda: client.exists(watch_key(watched)), timeout_s=5, what="watch key set")
    client.expire(watch_key(watched), 1)  # about to lapse, as after a quiet spell
    time.sleep(1.5)
    assert client.ttl(watch_key(watched)) > 20, "renewed to its full TTL"
    assert not client.exists(watch_key(left)), "no stream of that job is open"
    upkeep.unwatch(watched)
    client.expire(watch_key(watched), 1)
    time.sleep(1.5)
    assert not client.exists(watch_key(watched)), "lapsed once the last stream closed"
