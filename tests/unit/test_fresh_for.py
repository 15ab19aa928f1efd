"""A value recomputed at most once per interval, however many threads ask at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from api.fresh_for import FreshFor
from tests.clock import ManualClock


def test_value_is_reused_within_its_interval_and_recomputed_after() -> None:
    clock = ManualClock()
    computed: list[float] = []

    def compute() -> int:
        computed.append(clock.now)
        return len(computed)

    memo = FreshFor(5.0, compute, clock=clock)
    assert [memo.get(), memo.get()] == [1, 1]
    clock.now += 4.9
    assert memo.get() == 1
    clock.now += 0.1
    assert memo.get() == 2
    assert len(computed) == 2


def test_zero_interval_computes_every_time() -> None:
    calls = iter(range(10))
    memo = FreshFor(0.0, lambda: next(calls), clock=ManualClock())
    assert [memo.get(), memo.get(), memo.get()] == [0, 1, 2]


def test_concurrent_callers_share_one_computation() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        started.set()
        release.wait(timeout=10)
        return "figures"

    memo = FreshFor(60.0, slow)
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(memo.get)
        started.wait(timeout=10)
        others = [pool.submit(memo.get) for _ in range(7)]
        release.set()
        answers = [first.result(timeout=10)] + [f.result(timeout=10) for f in others]
    assert answers == ["figures"] * 8
    assert len(calls) == 1


def test_a_failed_computation_is_not_remembered() -> None:
    failures = [RuntimeError("database down")]

    def compute() -> str:
        if failures:
            raise failures.pop()
        return "ok"

    memo = FreshFor(60.0, compute, clock=ManualClock())
    with pytest.raises(RuntimeError):
        memo.get()
    assert memo.get() == "ok"
