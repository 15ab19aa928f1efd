"""The long-lived objects one API process shares between requests."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial

import redis
from celery import Celery
from flask import current_app
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from api.feed_listener import FeedListener
from api.job_reads import JobReads
from api.key_cache import KeyCache, active_key_row
from api.queued_memo import QueuedMemo
from api.stream_keys import StreamKeys
from api.stream_upkeep import StreamUpkeep
from shared.blobs import BlobStore
from shared.celery_app import create_celery
from shared.db import create_engine_for, session_factory
from shared.job_feed import JobFeed
from shared.models import Job
from shared.presets import Preset, load_presets
from shared.settings import Settings
from shared.ssrf import OutboundPolicy

# How often an open event stream asks again whether the key that opened it still holds,
# and for how long it goes on without an answer (the database away) before it ends.
STREAM_KEY_CHECK_S = 1.0
STREAM_KEY_STALE_S = 10.0


@dataclass(frozen=True)
class Services:
    """Settings, database, blob store and broker of one API process."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    celery: Celery
    outbound: OutboundPolicy
    presets: dict[str, Preset]
    counters: redis.Redis
    queued: QueuedMemo
    keys: KeyCache
    stream_keys: StreamKeys
    feed: JobFeed
    listener: FeedListener
    reads: JobReads
    upkeep: StreamUpkeep

    @classmethod
    def build(cls, settings: Settings) -> Services:
        # fail_fast: with PostgreSQL or Redis cut off, a request still answers within
        # seconds (503; or 202 with the wake-up left to the sweeper) instead of hanging.
        engine = create_engine_for(settings, fail_fast=True)
        sessions = session_factory(engine)
        keys = KeyCache(settings.key_cache_s)
        # Rate-limit counters live in the broker's Redis; connecting is lazy.
        counters = redis.Redis.from_url(
            settings.broker_url, socket_timeout=1, socket_connect_timeout=1
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            blobs=BlobStore(settings.blob_url),
            celery=create_celery(settings, fail_fast=True),
            outbound=OutboundPolicy.from_setting(settings.outbound_allowlist),
            presets=load_presets(settings.presets_path),
            counters=counters,
            queued=QueuedMemo(),
            keys=keys,
            stream_keys=StreamKeys(
                partial(active_key_row, sessions, keys),
                check_s=STREAM_KEY_CHECK_S,
                stale_s=STREAM_KEY_STALE_S,
            ),
            feed=JobFeed.from_url(settings.broker_url),
            # Its own connection: a subscribed connection can do nothing else.
            listener=FeedListener(
                redis.Redis.from_url(
                    settings.broker_url, socket_connect_timeout=2, health_check_interval=30
                )
            ),
            reads=JobReads(partial(_load_jobs, sessions)),
            # A stream slot's lease: two heartbeats (a vanished reader is noticed at a
            # write) and room for a renewal that comes late.
            upkeep=StreamUpkeep(counters, lease_s=2 * settings.stream_heartbeat_s + 10),
        )


def _load_jobs(
    sessions: sessionmaker[Session], job_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, Job]:
    """The jobs with these ids that the database holds (purged ones are missing), in one
    query."""
    with sessions() as session:
        return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}


def services() -> Services:
    """The :class:`Services` of the app handling the current request."""
    found: Services = current_app.extensions["sightline"]
    return found
