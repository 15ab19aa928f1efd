"""The API process's answers to "does the key of this stream still hold": asked once per
``check_s`` per key, by one stream while the others take the last answer."""

from __future__ import annotations

import threading

from sqlalchemy.exc import OperationalError

from api.stream_keys import StreamKeys
from tests.clock import ManualClock


def test_a_key_is_asked_about_once_per_check_s() -> None:
    clock, asked = ManualClock(), []
    answers = iter([True, False])

    def lookup(digest: str) -> bool:
        asked.append(digest)
        return next(answers)

    keys = StreamKeys(lookup, check_s=1.0, clock=clock)
    assert all(keys.holds("a") for _ in range(100)) and asked == ["a"]
    clock.now += 0.9
    assert keys.holds("a") and asked == ["a"]
    clock.now += 0.1
    assert not keys.holds("a") and asked == ["a", "a"], "revoked: asked again when due"
    assert not keys.holds("a")


def test_while_one_stream_asks_the_others_take_the_last_answer() -> None:
    # A thousand streams whose answer fell due together once sent a thousand queries.
    clock, asked, release = ManualClock(), [], threading.Event()

    def slow_lookup(digest: str) -> bool:
        asked.append(digest)
        release.wait(5)
        return False

    keys = StreamKeys(slow_lookup, check_s=1.0, clock=clock)
    first = threading.Thread(target=keys.holds, args=("a",))
    first.start()
    while not asked:
        threading.Event().wait(0.01)
    assert all(keys.holds("a") for _ in range(50)), "not asked yet: it held when it opened"
    release.set()
    first.join()
    assert asked == ["a"] and not keys.holds("a")


def test_a_failed_lookup_keeps_the_last_answer_and_asks_again_later() -> None:
    clock, calls = ManualClock(), []

    def failing(digest: str) -> bool:
        calls.append(digest)
        raise OperationalError("select", {}, Exception("database down"))

    keys = StreamKeys(failing, check_s=1.0, clock=clock)
    assert keys.holds("a") and keys.holds("a") and len(calls) == 1
    clock.now += 1.0
    assert keys.holds("a") and len(calls) == 2
