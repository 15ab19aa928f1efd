"""Every cluster scenario runs with ``make chaos`` (``SIGHTLINE_CHAOS=1``); a plain
``pytest`` (``make test``) runs a short subset, :data:`SUBSET`: a worker host cut off for
longer than a lease shortened to :data:`SUBSET_LEASE_S` (and a claim left open by a
silent session), and PostgreSQL restarted with
``-m immediate``, on a cluster without the S3 server and the blackholing receiver.

The scenarios need root (network namespaces), ``ip``, ``iptables``, PostgreSQL's server
binaries and ``redis-server``; where one is missing every scenario is skipped, saying
which. One cluster serves every scenario of a run and is torn down after the last one;
each scenario leaves it healed.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster

HERE = Path(__file__).parent

# Test ids, relative to this directory, that `make test` runs.
SUBSET = {
    "test_worker_partition.py::test_a_worker_host_cut_off_longer_than_the_lease",
    "test_worker_partition.py::"
    "test_jobs_claimed_by_a_session_gone_silent_are_freed_before_its_lease_ends",
    "test_postgres_restart.py::test_postgres_restart_under_load[immediate]",
}
# The lease of make test's cluster: the partition scenario waits it out (plus 10 s).
SUBSET_LEASE_S = 10


def _chaos() -> bool:
    return os.environ.get("SIGHTLINE_CHAOS") == "1"


def _missing() -> str | None:
    """Why this machine cannot run the cluster, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "redis-server", "runuser"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH"
    if not glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"):
        return "PostgreSQL's server binaries are not installed (make system-deps)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in item.path.parents]
    missing = _missing()
    if missing is not None:
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=f"cluster scenarios: {missing}"))
        return
    if _chaos():
        return
    skip = pytest.mark.skip(
        reason="runs with `make chaos` (SIGHTLINE_CHAOS=1); make test runs only the worker "
        "partition and the PostgreSQL restart -m immediate"
    )
    for item in ours:
        if item.nodeid.split("tests/cluster/", 1)[-1] not in SUBSET:
            item.add_marker(skip)


@pytest.fixture(scope="package")
def cluster(tiny_checkpoint: Path) -> Iterator[Cluster]:
    """Every host started. With ``make chaos``: default settings (a shorter lease with
    ``SIGHTLINE_CHAOS_LEASE_S``), images on the data host's S3 server (or in a directory
    all hosts share with ``SIGHTLINE_CHAOS_BLOBS=local``). For make test's subset: a
    :data:`SUBSET_LEASE_S` lease, images in a shared directory, no ``sink`` receiver."""
    if _chaos():
        lease = os.environ.get("SIGHTLINE_CHAOS_LEASE_S")
        blobs = os.environ.get("SIGHTLINE_CHAOS_BLOBS", "s3")
        made = Cluster(tiny_checkpoint, lease_s=int(lease) if lease else None, blobs=blobs)
    else:
        made = Cluster(tiny_checkpoint, lease_s=SUBSET_LEASE_S, blobs="local", sink=False)
    with made as running:
        yield running
