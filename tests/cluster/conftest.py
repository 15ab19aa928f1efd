"""The cluster scenarios run only when asked: ``make chaos`` sets ``SIGHTLINE_CHAOS=1``.

They need root (network namespaces), ``ip``, ``iptables``, PostgreSQL's server binaries
and ``redis-server``, and take minutes; everywhere else they are skipped. One cluster
serves every scenario of a run; each scenario leaves it healed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.environ.get("SIGHTLINE_CHAOS") == "1":
        return
    skip = pytest.mark.skip(reason="cluster scenarios run with `make chaos` (SIGHTLINE_CHAOS=1)")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cluster(tiny_checkpoint: Path) -> Iterator[Cluster]:
    """Every host started, with default settings (a shorter lease with
    ``SIGHTLINE_CHAOS_LEASE_S``); images on the data host's S3 server, or in a directory
    all hosts share with ``SIGHTLINE_CHAOS_BLOBS=local``."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lease = os.environ.get("SIGHTLINE_CHAOS_LEASE_S")
    blobs = os.environ.get("SIGHTLINE_CHAOS_BLOBS", "s3")
    with Cluster(tiny_checkpoint, lease_s=int(lease) if lease else None, blobs=blobs) as running:
        yield running
