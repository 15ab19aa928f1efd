"""The API process's memory of looked-up keys: fresh for ttl_s, never with ttl 0."""

from __future__ import annotations

from api.key_cache import KeyCache
from shared.models import ApiKey
from tests.clock import ManualClock


def test_a_key_is_remembered_for_ttl_seconds_only() -> None:
    clock, row = ManualClock(), ApiKey(name="k")
    cache = KeyCache(ttl_s=1.0, clock=clock)
    cache.put("digest", row)
    assert cache.get("digest") is row and cache.get("other") is None
    clock.now += 1.0
    assert cache.get("digest") is None


def test_ttl_zero_remembers_nothing() -> None:
    cache = KeyCache(ttl_s=0.0)
    cache.put("digest", ApiKey(name="k"))
    assert cache.get("digest") is None
