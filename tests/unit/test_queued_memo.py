"""The queue cap's memo: trusted far below the cap while fresh, never near it."""

from __future__ import annotations

import uuid

from api.queued_memo import QueuedMemo
from tests.clock import ManualClock


def test_fresh_memo_admits_below_the_exact_zone_and_counts_what_it_admits() -> None:
    clock, tenant = ManualClock(), uuid.uuid4()
    memo = QueuedMemo(max_age_s=1.0, exact_fraction=0.1, clock=clock)
    assert not memo.admit(tenant, 1, cap=100), "nothing known yet: count"
    memo.counted(tenant, 80)

    assert [memo.admit(tenant, 5, cap=100) for _ in range(3)] == [True, True, False]


def test_near_the_cap_or_when_stale_the_queue_is_counted() -> None:
    clock, tenant = ManualClock(), uuid.uuid4()
    memo = QueuedMemo(max_age_s=1.0, exact_fraction=0.1, clock=clock)
    memo.counted(tenant, 0)
    assert not memo.admit(tenant, 1, cap=1), "a small cap is all exact zone"
    assert memo.admit(tenant, 1, cap=100)
    clock.now += 1.5
    assert not memo.admit(tenant, 1, cap=100)
    assert not memo.admit(uuid.uuid4(), 1, cap=100), "tenants are apart"
