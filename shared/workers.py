"""Worker nodes, defined once: how they are named and when one counts as alive.

A GPU worker is ``gpu<id>@<host>``, the n-th CPU worker of a launcher ``cpu<n>@<host>``,
the no-GPU ops worker ``ops@<host>``. A worker is alive when it answers a broadcast ping
within :data:`PING_TIMEOUT_S`, or when it holds an unexpired lease on a running job: a
solo worker in the middle of a long batch answers no ping, yet renews its lease.
Everything that shows or checks workers (the launcher's names, the console's Status
page) goes through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus

# A broadcast ping waits this long for replies, whatever the number of workers.
PING_TIMEOUT_S = 0.5
_NODE = re.compile(r"^(?P<kind>gpu|cpu)(?P<index>\d+)@")


def node_names(devices: list[str], host: str) -> list[str]:
    """Celery node names, one per device: ``gpu<id>@host`` for a GPU, ``cpu<n>@host`` for
    the n-th CPU worker (counting CPU entries only, from 0)."""
    names: list[str] = []
    cpus = 0
    for device in devices:
        if device == "cpu":
            names.append(f"cpu{cpus}@{host}")
            cpus += 1
        else:
            names.append(f"gpu{device}@{host}")
    return names


def device_of(node: str) -> str:
    """What node ``node`` runs on, for people: ``GPU 0``, ``CPU``, or the ops worker."""
    found = _NODE.match(node)
    if found is None:
        return "no GPU (webhooks, sweeper)" if node.startswith("ops@") else "unknown"
    return f"GPU {found['index']}" if found["kind"] == "gpu" else "CPU"


@dataclass(frozen=True)
class Worker:
    """A live node: its name, what it runs on, and whether it is busy in a batch (it
    holds a live lease but did not answer the ping)."""

    name: str
    device: str
    busy: bool = False


def live_workers(celery: Celery, session: Session, now: datetime) -> list[Worker] | None:
    """The alive nodes (see the module docstring), sorted by name; ``None`` when the
    broker cannot be reached (the lease holders alone would then be half the answer)."""
    try:
        # ``None`` only when called with ``reply=False``; the stubs cannot tell.
        replies = celery.control.ping(timeout=PING_TIMEOUT_S) or []
    except Exception:  # any broker failure reads as "unreachable"
        return None
    answered = {name for reply in replies for name in reply}
    leasing = set(
        session.scalars(
            select(Job.worker)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at > now)
            .distinct()
        )
    )
    names = sorted(answered | {name for name in leasing if name})
    return [Worker(name, device_of(name), busy=name not in answered) for name in names]
