"""The result cache's lookup: earlier answers to an identical request, read by the worker."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, utcnow


def cached_results(
    session: Session, keys: Sequence[str], revision: str, ttl_s: int
) -> dict[str, Job]:
    """For each cache key, a job that succeeded with it on model ``revision`` within the
    last ``ttl_s`` seconds (and was not itself opted out of the cache). A purged job has
    no row and a tombstone no content: neither ever answers from the cache."""
    if not keys or ttl_s <= 0:
        return {}
    since = utcnow() - timedelta(seconds=ttl_s)
    rows = session.scalars(
        select(Job)
        .where(
            Job.cache_key.in_(set(keys)),
            Job.model_revision == revision,
            Job.status == JobStatus.SUCCEEDED,
            Job.use_cache.is_(True),
            Job.content_deleted_at.is_(None),
            Job.finished_at > since,
        )
        .order_by(Job.finished_at.desc())
    )
    found: dict[str, Job] = {}
    for job in rows:
        if job.cache_key is not None:
            found.setdefault(job.cache_key, job)
    return found
