"""The API process's answers to "does the key of this stream still hold": its row as
last looked up, asked for again once per ``check_s`` by one stream while the others take
the row it has; expiry checked at every answer; no answer for ``stale_s``: no longer."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import OperationalError

from api.stream_keys import StreamKeys
from shared.models import ApiKey
from tests.clock import ManualClock

ROW = ApiKey(name="k", key_sha256="a", revoked_at=None, expires_at=None)


def _down(digest: str) -> ApiKey | None:
    raise OperationalError("select", {}, Exception("database down"))


def test_a_key_is_looked_up_once_per_check_s() -> None:
    clock, asked = ManualClock(), []
    answers = iter([ROW, None])

    def lookup(digest: str) -> ApiKey | None:
        asked.append(digest)
        return next(answers)

    keys = StreamKeys(lookup, check_s=1.0, stale_s=10.0, clock=clock)
    keys.opened(ROW)
    assert all(keys.holds("a") for _ in range(100)) and asked == [], "authenticated at open"
    clock.now += 1.0
    assert keys.holds("a") and keys.holds("a") and asked == ["a"]
    clock.now += 1.0
    assert not keys.holds("a") and asked == ["a", "a"], "revoked: gone at the next lookup"
    assert not keys.holds("a")


def test_while_one_stream_asks_the_others_take_the_row_it_has() -> None:
    # A thousand streams whose answer fell due together once sent a thousand queries.
    clock, asked, release = ManualClock(), [], threading.Event()

    def slow_lookup(digest: str) -> ApiKey | None:
        asked.append(digest)
        release.wait(5)
        return None

    keys = StreamKeys(slow_lookup, check_s=1.0, stale_s=10.0, clock=clock)
    keys.opened(ROW)
    clock.now += 1.0
    first = threading.Thread(target=keys.holds, args=("a",))
    first.start()
    while not asked:
        threading.Event().wait(0.01)
    assert all(keys.holds("a") for _ in range(50)), "the row it has, while one asks"
    release.set()
    first.join()
    assert asked == ["a"] and not keys.holds("a")


def test_an_expiry_counts_at_once_between_lookups() -> None:
    clock = ManualClock()
    soon = datetime.now(UTC) + timedelta(seconds=0.5)
    expiring = ApiKey(name="k", key_sha256="e", revoked_at=None, expires_at=soon)
    keys = StreamKeys(lambda digest: expiring, check_s=3600.0, stale_s=7200.0, clock=clock)
    keys.opened(expiring)
    assert keys.holds("e")
    threading.Event().wait(0.6)
    assert not keys.holds("e"), "expired, though not looked up again"


def test_a_failed_lookup_keeps_the_last_answer_for_stale_s_at_most() -> None:
    clock, database_up = ManualClock(), [True]

    def revoked_lookup(digest: str) -> ApiKey | None:
        return None if database_up[0] else _down(digest)

    revoked = StreamKeys(revoked_lookup, check_s=1.0, stale_s=10.0, clock=clock)
    revoked.opened(ROW)
    clock.now += 1.0
    assert not revoked.holds("a")
    database_up[0] = False
    clock.now += 1.0
    assert not revoked.holds("a"), "the database away: the key stays revoked"

    keys = StreamKeys(_down, check_s=1.0, stale_s=10.0, clock=clock)
    keys.opened(ROW)
    clock.now += 1.0
    assert keys.holds("a"), "the first lookup failed: the row it had"
    clock.now += 8.0
    assert keys.holds("a"), "a short outage: the row it had"
    clock.now += 2.0
    assert not keys.holds("a"), "lookups failing for stale_s: it ends, as new requests fail"


def test_a_key_no_stream_asked_about_for_long_still_holds_while_it_is_looked_up() -> None:
    # Between two batches no stream writes. The time since the last lookup was once
    # taken for an outage: while the first stream of the next batch asked again, every
    # other one was told the key no longer held, and a thousand streams ended.
    clock, meanwhile = ManualClock(), []

    def lookup(digest: str) -> ApiKey | None:
        meanwhile.append(keys.holds(digest))  # another stream, while this one asks
        return ROW

    keys = StreamKeys(lookup, check_s=1.0, stale_s=10.0, clock=clock)
    keys.opened(ROW)
    clock.now += 60.0
    keys.opened(ROW)
    assert keys.holds("a") and meanwhile == [True]
