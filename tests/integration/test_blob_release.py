"""Blob release (:func:`shared.blob_release.release_blobs`) on real PostgreSQL and a real
blob store on disk, with the ops process's engine (:func:`shared.db.worker_engine`),
whose sessions the database ends once idle inside a transaction for a quarter of the
lease: the store is never called inside a transaction, so a slow store neither holds
locks nor loses its work to that limit, and a store that fails leaves what it did not
delete listed for a later pass.

The store under test is the real :class:`~shared.blobs.BlobStore`, observed (or made to
fail once) by a subclass around its own ``delete_if_idle``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from shared.blob_release import release_blobs, release_keys
from shared.blobs import BlobMissing, BlobStore
from shared.db import create_engine_for, session_factory, transaction, worker_engine
from shared.models import BlobRelease, utcnow
from shared.settings import Settings
from tests.services import postgres_server, scratch_database

# A lease of 4 s: the ops engine's sessions are ended after 1 s idle in a transaction.
LEASE_S = 4
SLOW_DELETE_S = 1.5
GRACE_S = 1


@dataclass
class Released:
    settings: Settings
    sessions: sessionmaker[Session]
    observer: Engine
    keys: list[str]

    def listed(self) -> set[str]:
        with self.sessions() as session:
            return set(session.scalars(select(BlobRelease.key)))

    def stored(self) -> set[str]:
        store = BlobStore(self.settings.blob_url)
        return {key for key in self.keys if _exists(store, key)}


def _exists(store: BlobStore, key: str) -> bool:
    try:
        store.get(key)
    except BlobMissing:
        return False
    return True


@pytest.fixture
def released(tmp_path: Path) -> Iterator[Released]:
    """Five images stored now, whose keys were released 5 s ago, no job naming them."""
    with postgres_server() as admin, scratch_database(admin) as url:
        settings = Settings(
            data_dir=tmp_path,
            database_url=url,
            job_lease_s=LEASE_S,
            blob_grace_s=GRACE_S,
            retention_chunk=3,
        )
        upgrade(settings)
        engine, observer = worker_engine(settings), create_engine_for(settings)
        sessions = session_factory(engine)
        store = BlobStore(settings.blob_url)
        keys = [store.put(f"image {i}".encode())[0] for i in range(5)]
        with transaction(sessions) as session:
            release_keys(session, keys, utcnow() - timedelta(seconds=5))
        try:
            yield Released(settings, sessions, observer, keys)
        finally:
            engine.dispose()
            observer.dispose()


def _past_the_grace() -> datetime:
    """A sweep's ``now`` once the images stored by the fixture are past the grace."""
    return utcnow() + timedelta(seconds=GRACE_S + 1)


class ObservedStore(BlobStore):
    """The real store; each delete first counts the sessions of the database idle inside
    a transaction, and the first one takes ``SLOW_DELETE_S`` longer (a slow store)."""

    def __init__(self, url: str, observer: Engine) -> None:
        super().__init__(url)
        self.observer = observer
        self.idle_in_transaction: list[int] = []

    def delete_if_idle(self, key: str, stored_before: datetime) -> bool:
        with self.observer.connect() as connection:
            self.idle_in_transaction.append(
                connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND state LIKE 'idle in transaction%'"
                    )
                ).scalar_one()
            )
        if len(self.idle_in_transaction) == 1:
            time.sleep(SLOW_DELETE_S)
        return super().delete_if_idle(key, stored_before)


class FailingStore(BlobStore):
    """The real store, failing its second delete as an unreachable object store would."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls = 0

    def delete_if_idle(self, key: str, stored_before: datetime) -> bool:
        self.calls += 1
        if self.calls == 2:
            raise OSError(f"blob store: cannot delete {key}: connection refused")
        return super().delete_if_idle(key, stored_before)


def test_blobs_are_deleted_outside_any_transaction_however_slow_the_store(
    released: Released,
) -> None:
    store = ObservedStore(released.settings.blob_url, released.observer)

    deleted = release_blobs(released.settings, released.sessions, store, _past_the_grace())

    assert deleted == 5
    assert store.idle_in_transaction == [0] * 5, "a delete ran inside a transaction"
    assert released.listed() == set() and released.stored() == set()


def test_a_failing_store_leaves_what_it_did_not_delete_listed_for_a_later_pass(
    released: Released,
) -> None:
    store = FailingStore(released.settings.blob_url)
    now = _past_the_grace()

    with pytest.raises(OSError, match="connection refused"):
        release_blobs(released.settings, released.sessions, store, now)

    # The chunk's first key was deleted and forgotten; the rest stay listed and stored.
    gone = set(released.keys) - released.stored()
    assert len(gone) == 1
    assert released.listed() == set(released.keys) - gone == released.stored()
    # Keys of the failed chunk wait a grace; a pass after it deletes everything.
    later = now + timedelta(seconds=released.settings.blob_grace_s)
    assert release_blobs(released.settings, released.sessions, store, later) == 4
    assert released.listed() == set() and released.stored() == set()
