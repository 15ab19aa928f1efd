"""Counting semaphores in Redis whose holds expire: concurrency limits shared by processes.

A limit named by a Redis key allows at most N holders at once. Each hold is a member of
a sorted set scored by its expiry (Redis server time, so hosts' clocks do not matter);
expired members are dropped before counting, so a process killed while holding never
leaks a slot: its hold lapses after ``lease_s``. :func:`acquire` checks every key it is
given and takes a slot in all of them or in none (one Lua script, atomic in Redis), so
two processes cannot both take the last one.

Used for webhook attempts per endpoint and tenant (``worker.delivery_slots``) and for
long-polls and event streams per tenant (``api.wait_limits``, ``api.streams``). Errors
reaching Redis are raised as ``redis.RedisError``; callers choose whether to go ahead
without the limit.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import redis
from redis.client import Pipeline

# KEYS: the limits' sorted sets. ARGV: token, lease (s), then one limit per key.
# Returns 1 when every key had room (the token now holds a slot in each), else 0.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then
    return 0
  end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[1])
  redis.call('EXPIRE', key, math.ceil(lease) + 1)
end
return 1
"""

# KEYS: the hold's sorted sets. ARGV: lease (s), then one or more tokens. Pushes each
# token's expiry to now + lease where it is still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  for i = 2, #ARGV do
    redis.call('ZADD', key, 'XX', now + lease, ARGV[i])
  end
  redis.call('EXPIRE', key, math.ceil(lease) + 1)
end
return 1
"""


@dataclass(frozen=True)
class Hold:
    """One holder's slot in each of ``keys``."""

    keys: tuple[str, ...]
    token: str


class RedisSlots:
    """Takes and gives back slots of limits kept in one Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)

    def acquire(self, limits: dict[str, int], lease_s: float) -> Hold | None:
        """A slot in every key of ``limits`` (key → most holders), held for at most
        ``lease_s`` seconds; ``None`` when any of them is full. Raises
        ``redis.RedisError`` when Redis cannot be reached."""
        hold = Hold(keys=tuple(limits), token=uuid.uuid4().hex)
        taken = self._acquire(keys=list(hold.keys), args=[hold.token, lease_s, *limits.values()])
        return hold if taken == 1 else None

    def renew_all(self, holds: Iterable[Hold], lease_s: float, pipe: Pipeline) -> None:
        """Queue on ``pipe`` the renewal of every hold of ``holds`` (a holder that
        outlives its first lease renews it) for ``lease_s`` seconds from when it runs:
        one script call per distinct set of keys."""
        tokens: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for hold in holds:
            tokens[hold.keys].append(hold.token)
        for keys, same in tokens.items():
            self._renew(keys=list(keys), args=[lease_s, *same], client=pipe)

    def release(self, hold: Hold, pipe: Pipeline | None = None) -> None:
        """Give ``hold`` back, or queue that on ``pipe``; raises ``redis.RedisError``
        (the hold then lapses on its own after its lease)."""
        if pipe is not None:
            for key in hold.keys:
                pipe.zrem(key, hold.token)
            return
        with self._client.pipeline(transaction=False) as own:
            self.release(hold, own)
            own.execute()
