"""A worker host unplugged mid-batch for longer than the lease.

While ``w1`` is cut off it keeps running its batch and later tries to write the results;
its jobs' leases run out, ``w2`` takes them (as abandoned jobs) and finishes them before
the link comes back. Then ``w1``'s late writes are refused by the claim token, nothing is
written twice, and ``w1`` takes work again. And jobs that a worker's session gone silent
in the middle of a claim holds locked (as a host cut off there would) are freed for the
other workers before the lease would run out.
"""

from __future__ import annotations

import sys
import time
from contextlib import suppress
from pathlib import Path

from tests.cluster.cluster import Cluster, Load, settle
from tests.waiting import wait_until

W1 = "cpu0@w1"


def _running_on(cluster: Cluster, worker: str) -> list[str]:
    rows = cluster.sql("SELECT id::text FROM jobs WHERE status = 'running' AND worker = %s", worker)
    return [row[0] for row in rows]


def test_a_worker_host_cut_off_longer_than_the_lease(cluster: Cluster) -> None:
    w1 = cluster.hosts["w1"]
    with Load(cluster).running() as load:
        stranded: list[str] = []
        for _ in range(50):  # cut while w1 holds jobs (a tiny model's batch is short)
            wait_until(lambda: _running_on(cluster, W1), timeout_s=60, interval_s=0, what="w1")
            w1.cut()
            stranded = _running_on(cluster, W1)
            if stranded:
                break
            w1.heal()
        assert stranded, "w1 was never cut off in the middle of a batch"
        cut_at = time.time()

        # Until the link comes back (the lease and 15 s more), watch for w2 taking over.
        def taken_over() -> bool:
            rows = cluster.sql(
                "SELECT status, worker FROM jobs WHERE id = ANY(%s::uuid[])", stranded
            )
            return all(status == "succeeded" and worker != W1 for status, worker in rows)

        partition_s = cluster.lease_s + 15
        with suppress(AssertionError):
            wait_until(taken_over, timeout_s=partition_s, interval_s=1, what="w2 takeover")
        taken_s = time.time() - cut_at if taken_over() else None
        time.sleep(max(0.0, cut_at + partition_s - time.time()))
        w1.heal()
        healed_at = time.time()

        # w1 resumes: it finishes a job claimed after the link came back.
        def w1_works() -> bool:
            rows = cluster.sql(
                "SELECT count(*) FROM chaos_writes WHERE worker = %s AND status = 'succeeded' "
                "AND at > to_timestamp(%s)",
                W1,
                healed_at,
            )
            return bool(rows[0][0])

        wait_until(w1_works, timeout_s=180, interval_s=1, what="w1 to finish a job again")
        resumed_s = time.time() - healed_at
    report = settle(cluster, load, "worker host partition", healed_at)
    report.extra.update(
        stranded=len(stranded),
        taken_over_s=taken_s and round(taken_s, 1),
        w1_resumed_s=round(resumed_s, 1),
    )
    report.check()
    assert not report.refused, (
        f"the API refused jobs while only a worker host was cut: {load.refused}"
    )
    # w2 is busy with the steady flow the whole time and still takes w1's jobs over.
    assert taken_s is not None, "w2 did not finish w1's jobs while w1 was cut off"


def test_jobs_claimed_by_a_session_gone_silent_are_freed_before_its_lease_ends(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A worker's session that stops talking between a claim and its COMMIT, as a host
    cut off (or frozen) there looks to the database: the database would keep the session,
    and its locks on the claimed (still queued) jobs, until the kernel gave up on the
    peer, hours later, and every other claim skips locked jobs. The worker's sessions
    end after a quarter of a lease idle in a transaction (:func:`shared.db.worker_engine`),
    so the workers run those jobs before the lease is out."""
    log = tmp_path / "holder.log"
    with Load(cluster).running() as load:
        holder = cluster.hosts["w1"].spawn(
            [sys.executable, "-m", "tests.cluster.claim_holder"],
            {**cluster.env, "SIGHTLINE_DATA_DIR": str(tmp_path)},
            log,
        )
        try:
            wait_until(lambda: "holding" in log.read_text(), timeout_s=60, what="a claim held")
            held_at = time.time()
            held = log.read_text().split("holding", 1)[1].split()
            rows = cluster.sql("SELECT status FROM jobs WHERE id = ANY(%s::uuid[])", held)
            assert {status for (status,) in rows} == {"queued"}, rows

            def done() -> bool:
                rows = cluster.sql("SELECT status FROM jobs WHERE id = ANY(%s::uuid[])", held)
                return {status for (status,) in rows} == {"succeeded"}

            wait_until(done, timeout_s=cluster.lease_s, interval_s=0.5, what="held jobs")
            freed_s = time.time() - held_at
        finally:
            holder.kill()
            holder.wait()
        ended_at = time.time()
    report = settle(cluster, load, "claim left open by a silent session", ended_at)
    report.extra.update(held=len(held), freed_s=round(freed_s, 1))
    report.check()
