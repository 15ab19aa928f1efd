"""A worker child SIGKILLed on a live host: its jobs run again within seconds, not after
the lease (``worker/predecessor.py``), with default settings.

Its launcher sees it die (within half a second) and, before restarting it, expires the
leases of the jobs still running under its node name and wakes workers for them. The
other host's worker takes them one after another, each alone, as suspects, with their
attempt count kept, and each is written exactly once.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from shared.settings import Settings
from tests.cluster.cluster import Cluster, Load, settle
from tests.waiting import wait_until

W1 = "cpu0@w1"
DEFAULT_LEASE_S = Settings.model_fields["job_lease_s"].default


def _children(cluster: Cluster, host: str) -> list[int]:
    """The live worker children of ``host``'s launcher: none for a moment after one
    died, while the launcher frees its jobs before starting the next."""
    launcher = psutil.Process(cluster.processes[host].pid)
    return [
        child.pid
        for child in launcher.children()
        if "worker.child" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE
    ]


def _child_of(cluster: Cluster, host: str) -> int:
    found = _children(cluster, host)
    assert found, f"{host} has no worker child"
    return found[0]


def test_a_killed_worker_child_s_jobs_run_again_within_seconds(cluster: Cluster) -> None:
    if cluster.lease_s != DEFAULT_LEASE_S:
        pytest.skip("measured with the default lease only")
    # A short burst rather than a steady flow (see test_worker_partition.STARVED).
    load = Load(cluster, per_s=16)
    with load.running():
        time.sleep(2)
    child = _child_of(cluster, "w1")

    def running_on_w1() -> list[tuple[str, int]]:
        rows = cluster.sql(
            "SELECT id::text, attempts FROM jobs WHERE status = 'running' AND worker = %s", W1
        )
        return [(job_id, attempts) for job_id, attempts in rows]

    wait_until(running_on_w1, timeout_s=60, interval_s=0, what="w1 running jobs")
    os.kill(child, signal.SIGKILL)
    killed_at = time.time()
    orphans = dict(running_on_w1())  # what the dead child held: no one else can move them
    assert orphans, "w1's batch ended before the kill"

    def reclaimed() -> list[float] | None:
        rows = cluster.sql(
            "SELECT job_id::text, min(extract(epoch FROM at)) FROM chaos_writes "
            "WHERE job_id = ANY(%s::uuid[]) AND status = 'running' AND at > to_timestamp(%s) "
            "GROUP BY job_id",
            list(orphans),
            killed_at,
        )
        return [float(at) - killed_at for _, at in rows] if len(rows) == len(orphans) else None

    delays = wait_until(reclaimed, timeout_s=DEFAULT_LEASE_S, interval_s=0.2, what="reclaims")
    first, last = min(delays), max(delays)
    report = settle(cluster, load, "worker child SIGKILL", killed_at)
    attempts = dict(
        cluster.sql("SELECT id::text, attempts FROM jobs WHERE id = ANY(%s::uuid[])", list(orphans))
    )
    report.extra.update(
        orphans=len(orphans), first_rerun_s=round(first, 1), last_rerun_s=round(last, 1)
    )
    report.check()
    assert attempts == {job_id: n + 1 for job_id, n in orphans.items()}, "one more claim each"
    # Without crash detection the first would wait out the 60 s lease; freed by the
    # child's successor instead of the launcher, it waited for its imports (3-7 s), and
    # each orphan for a batch of queued work before it (the last 10-22 s).
    assert first < 5, f"the first job ran again after {first:.1f} s"
    assert last < 20, f"the last job ran again after {last:.1f} s"
    wait_until(
        lambda: [pid for pid in _children(cluster, "w1") if pid != child],
        timeout_s=30,
        what="w1 restarted",
    )
    cluster.wait_workers(["w1"])
