"""Crash detection on a live host: the jobs a dead worker child held are freed at once.

Its launcher sees the child die within :data:`worker.launcher.POLL_S` and, before
restarting it under the same node name, expires the leases of the jobs still running
under that name (:func:`shared.lifecycle.expire_predecessor`) and leaves a wake-up for
each: the other workers take them again within seconds, alone, as suspects, instead of
after the lease or the new child's model load. Every child does the same as it starts,
before loading its model and so before it can claim anything, for a predecessor whose
launcher died with it (a host that rebooted). The lease remains the bound when the whole
host is lost or cut off, since nothing on it can then say that the worker is dead.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from shared import lifecycle
from shared.celery_app import create_celery
from shared.db import create_engine_for, session_factory, transaction
from shared.enqueue import enqueue_job
from shared.models import Job
from shared.settings import Settings

log = logging.getLogger(__name__)


def free_predecessor_jobs(settings: Settings, node: str) -> int:
    """Expire the leases left under ``node`` and wake workers for those jobs; returns how
    many. Never raises: a database or broker that cannot be reached now leaves the jobs
    to their lease and the sweeper, and must not keep the worker from starting."""
    database = create_engine_for(settings)
    try:
        sessions = session_factory(database)
        with transaction(sessions) as session:
            freed = lifecycle.expire_predecessor(lifecycle.JobChanges(session), worker=node)
            woken = session.execute(select(Job.id, Job.priority).where(Job.id.in_(freed))).all()
        if freed:
            log.warning(
                "%s died: %d jobs it was running are claimable again",
                node,
                len(freed),
                extra={"jobs": len(freed)},
            )
            app = create_celery(settings)
            for job_id, priority in woken:
                enqueue_job(app, job_id, priority)
        return len(freed)
    except Exception:
        log.exception("could not free the jobs of %s's predecessor; their lease will", node)
        return 0
    finally:
        database.dispose()
