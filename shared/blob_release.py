"""Deleting images no job needs any more, safely against a new job that needs one again.

Images are stored once per content hash (:mod:`shared.blobs`) and shared by every job of
every tenant that submitted the same picture, so erasing a job's content (a purge, or
retention) cannot simply delete its image. It is a mark and sweep with a grace period:

- **mark**: whatever erases jobs' content records their image keys in
  ``blob_releases`` (:func:`release_keys`), in the same transaction, so a key is never
  forgotten between "no job needs it" and "deleted";
- **sweep**: the sweeper (:func:`release_blobs`) takes released keys older than
  ``blob_grace_s``; a key some job still names (its ``image_key``; tombstones name no
  image) is dropped from the list, the blob stays; any other blob is deleted unless it
  was stored again at or after ``now - blob_grace_s`` (:meth:`BlobStore.delete_if_idle`).

Why not reference counting in the job's transaction: a submission stores its image
*before* the transaction that inserts the job (a batch stores thousands, in parallel,
with one sync before one ``COPY``), so a counter incremented in that transaction can be
zero while the image is already stored for a job not yet committed; a deleter trusting
it would delete the image from under that job. Closing that gap would take a lock or a
counter row per image on the submission path, before the upload. The grace period costs
the submission path nothing: a put of an existing blob refreshes its stored time.

Why it is safe: a job committed after the sweep's look at ``jobs`` stored its image at
most ``blob_grace_s`` before its commit (the grace is longer than any submission takes,
the batch intake deadline included), so its blob's stored time is at or after the sweep's
cutoff and the blob is kept; the next sweep then finds the job naming it. On a local disk
the check and the delete cannot interleave with a put (the file is renamed away first).
On an object store a PUT of exactly that image landing between the HEAD and the DELETE
(milliseconds) is not seen: that job then fails ``image_missing`` at its worker, and a
resubmission stores the image again. The stored times come from the storage's clock and
the cutoff from the sweeper's, so clocks must agree to well within the grace (an hour by
default).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.blobs import BlobStore
from shared.db import transaction
from shared.models import BlobRelease, Job
from shared.settings import Settings

log = logging.getLogger(__name__)

# Chunks one sweep works through at most: the rest waits for the next sweep.
MAX_CHUNKS = 20


def release_keys(session: Session, keys: Iterable[str], now: datetime) -> None:
    """Record, in ``session``'s transaction, that jobs stopped naming ``keys`` (an
    already recorded key keeps its time)."""
    rows = [{"key": key, "released_at": now} for key in set(keys) if key]
    if not rows:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(dialect.insert(BlobRelease).on_conflict_do_nothing(), rows)


def release_blobs(
    settings: Settings, sessions: sessionmaker[Session], blobs: BlobStore, now: datetime
) -> int:
    """Delete the released blobs no job names and nothing stored lately, in chunks of
    ``retention_chunk`` keys (at most :data:`MAX_CHUNKS` per call); returns how many
    blobs were deleted. A blob a recent put kept is looked at again a grace later.

    The storage is never called inside a transaction (a slow or hung store would keep a
    session idle in it, holding its locks): each chunk is taken in one transaction
    (:func:`_take_chunk`), deleted from the store outside any, and the deleted keys are
    forgotten in another. Storage errors propagate; the keys not yet deleted stay
    listed and are looked at again a grace later (so is the whole chunk if this process
    dies meanwhile: a blob already gone counts as deleted)."""
    cutoff = now - timedelta(seconds=settings.blob_grace_s)
    deleted = 0
    for _ in range(MAX_CHUNKS):
        taken, candidates = _take_chunk(settings, sessions, cutoff, now)
        gone: list[str] = []
        try:
            for key in candidates:
                if blobs.delete_if_idle(key, cutoff):
                    gone.append(key)
        finally:
            if gone:
                with transaction(sessions) as session:
                    session.execute(delete(BlobRelease).where(BlobRelease.key.in_(gone)))
        deleted += len(gone)
        if taken < settings.retention_chunk:
            break
    if deleted:
        log.info("blob release: %d images deleted", deleted)
    return deleted


def _take_chunk(
    settings: Settings, sessions: sessionmaker[Session], cutoff: datetime, now: datetime
) -> tuple[int, list[str]]:
    """Take up to ``retention_chunk`` keys released at or before ``cutoff``, in one
    transaction: those a job names again are forgotten (their blob stays), the others
    are stamped ``now`` so no other sweep takes them within a grace. Returns how many
    keys were taken and the others, whose blobs may be deleted."""
    with transaction(sessions) as session:
        keys = list(
            session.scalars(
                select(BlobRelease.key)
                .where(BlobRelease.released_at <= cutoff)
                .order_by(BlobRelease.released_at)
                .limit(settings.retention_chunk)
                .with_for_update(skip_locked=True)
            )
        )
        if not keys:
            return 0, []
        named = set(session.scalars(select(Job.image_key).where(Job.image_key.in_(keys))))
        candidates = [key for key in keys if key not in named]
        session.execute(delete(BlobRelease).where(BlobRelease.key.in_(named)))
        session.execute(
            update(BlobRelease).where(BlobRelease.key.in_(candidates)).values(released_at=now)
        )
    return len(keys), candidates
