"""Which workers count as alive (``shared.workers``), on the real broker and database."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from shared.models import Job, JobStatus, utcnow
from shared.workers import Worker, device_of, live_workers, node_names
from tests.stack import Stack, make_image


def test_node_names_and_devices() -> None:
    assert node_names(["0", "cpu", "3", "cpu"], "h") == ["gpu0@h", "cpu0@h", "gpu3@h", "cpu1@h"]
    assert [device_of(n) for n in ("gpu3@h", "cpu1@h", "ops@h", "x@h")] == [
        "GPU 3",
        "CPU",
        "no GPU (webhooks, sweeper)",
        "unknown",
    ]


def test_a_worker_busy_in_a_batch_is_alive_though_it_answers_no_ping(pg_stack: Stack) -> None:
    """A solo worker in a long batch cannot answer pings; its live lease says it is
    there. One whose lease ran out is not listed; answering nodes are."""
    pg_stack.start_worker()
    client = pg_stack.client()
    busy, gone = (uuid.UUID(client.submit(make_image(i), "x")["id"]) for i in range(2))
    pg_stack.stop_workers()  # parked: answers pings, takes no work
    now = utcnow()
    with pg_stack.sessions.begin() as session:
        for job_id, node, lease in ((busy, "gpu7@far", 60), (gone, "gpu8@far", -60)):
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    status=JobStatus.RUNNING,
                    worker=node,
                    lease_expires_at=now + timedelta(seconds=lease),
                )
            )
    with pg_stack.sessions() as session:
        found = live_workers(pg_stack.celery, session, utcnow())
    assert found is not None
    assert Worker("gpu7@far", "GPU 7", busy=True) in found
    assert "gpu8@far" not in [worker.name for worker in found]
    assert [w.busy for w in found if w.name.startswith("cpu0@")] == [False]
