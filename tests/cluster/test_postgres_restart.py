"""PostgreSQL restarted under load (``pg_ctl restart -m fast``, then ``-m immediate``).

While it is down the API answers 503 problem+json; afterwards every sightline process
carries on without a restart of its own: the API answers again, workers whose commits
failed leave their jobs to the lease, and every accepted job succeeds exactly once.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.cluster.cluster import Cluster, Load, settle
from tests.waiting import wait_until


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_under_load(cluster: Cluster, mode: str) -> None:
    pids = {name: process.pid for name, process in cluster.processes.items()}
    with Load(cluster).running() as load:
        wait_until(lambda: len(load.accepted) >= 20, timeout_s=60, what="jobs flowing")
        cluster.restart_postgres(mode)
        restarted_at = time.time()
        answered_s = load.accepted_again_s(restarted_at, what="a job accepted after the restart")
        time.sleep(5)  # jobs keep flowing after the restart
    report = settle(cluster, load, f"PostgreSQL restart -m {mode}", restarted_at)
    report.extra["api_answers_s"] = round(answered_s, 1)
    report.check()
    # Refusals are 503 problem+json only (or none, when no request hit the restart).
    assert set(report.refused) <= {503}, load.refused
    assert all("503" in body for _, _, body in load.refused), load.refused
    assert {n: p.pid for n, p in cluster.processes.items()} == pids, "a process was restarted"
    assert all(process.poll() is None for process in cluster.processes.values())
    assert requests.get(f"{cluster.url}/readyz", timeout=10).ok
