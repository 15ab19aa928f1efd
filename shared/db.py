"""Engine and session factory.

``create_engine_for(settings)`` is the only place an engine is built. On SQLite (the
embedded default, written by the API and the worker at once) it turns on WAL and a busy
timeout so short write transactions from two processes wait for each other instead of
failing with "database is locked". :func:`retrying_conflicts` runs a transaction again
when PostgreSQL aborted it to break a lock conflict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
# libpq's tcp_user_timeout: how long sent data may go unacknowledged by the database
# host's TCP stack (not by PostgreSQL: a busy server still acknowledges at once).
TCP_USER_TIMEOUT_MS = 10_000
# The share of the job lease a worker's session may sit idle inside a transaction before
# PostgreSQL ends it (see worker_engine): well under the two thirds of a lease that are
# left when a host is cut off in the middle of a lease renewal.
IDLE_IN_TRANSACTION_LEASE_SHARE = 0.25
# SQLSTATEs of a transaction PostgreSQL aborted to break a conflict with another one
# (deadlock_detected, serialization_failure): run again, it goes through.
LOST_CONFLICT = frozenset({"40P01", "40001"})
# How many times in all a transaction that lost a conflict is run.
CONFLICT_TRIES = 3

log = logging.getLogger(__name__)
T = TypeVar("T")


def create_engine_for(
    settings: Settings,
    *,
    fail_fast: bool = False,
    idle_in_transaction_s: float | None = None,
    **kwargs: Any,
) -> Engine:
    """Build the engine for ``settings.database_url``.

    PostgreSQL URLs without a driver use psycopg 3. Connections are checked before use so
    a restarted database does not surface as an error on the first request after it.
    With ``fail_fast`` (the API), a PostgreSQL connection whose packets go unacknowledged
    for ``TCP_USER_TIMEOUT_MS`` (the database host cut off, no RST) fails instead of
    waiting for the kernel's retransmissions, minutes long: the API answers 503 rather
    than hanging. Workers keep waiting: their work resumes where it was once the link is
    back. With ``idle_in_transaction_s``, PostgreSQL ends a session that waits that long
    for its client inside a transaction, releasing its locks (see :func:`worker_engine`).
    """
    url = make_url(settings.database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url.render_as_string(hide_password=False), **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    connect_args: dict[str, Any] = {"connect_timeout": 3}
    if fail_fast:
        connect_args["tcp_user_timeout"] = TCP_USER_TIMEOUT_MS
    if idle_in_transaction_s is not None:
        # A startup option, kept beside any the URL gives (?options=...): unlike a SET,
        # it cannot outlive this client on a pooler's shared server connection.
        timeout_ms = max(1, round(idle_in_transaction_s * 1000))
        given = url.query.get("options", ())
        options = [given] if isinstance(given, str) else list(given)
        options.append(f"-c idle_in_transaction_session_timeout={timeout_ms}")
        connect_args["options"] = " ".join(options)
    kwargs.setdefault("connect_args", connect_args)
    return create_engine(url, **kwargs)


def worker_engine(settings: Settings) -> Engine:
    """The engine of a worker process: a model worker or the ops worker.

    Both lock job rows inside short transactions: a model worker's ``FOR UPDATE SKIP
    LOCKED`` claims, lease renewals and commits of finished rows; the sweeper's expiries,
    re-enqueues and retention chunks. If the host is cut off while one is open, the
    database keeps the session, and its locks, until the kernel gives up on the dead
    peer: hours with default keepalives. Claims elsewhere skip the locked jobs, so a
    lease would run out with no one able to take them, and a commit to one of them
    would wait. PostgreSQL therefore ends a worker's session that has waited for its
    client inside a transaction for a quarter of ``job_lease_s``
    (:data:`IDLE_IN_TRANSACTION_LEASE_SHARE`): its work is rolled back, its locks freed
    before the lease runs out, and the cut-off process finds its connection gone when
    the link comes back (its late writes would be refused by the claim token anyway).
    So no worker transaction may wait on anything but the database: webhook attempts
    and blob deletes run outside them. The API's engine has no such limit (a long-poll
    holds its session)."""
    return create_engine_for(
        settings, idle_in_transaction_s=settings.job_lease_s * IDLE_IN_TRANSACTION_LEASE_SHARE
    )


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let pysqlite leave transaction control to us so BEGIN IMMEDIATE below works.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock at BEGIN: a deferred transaction that reads then writes can
        # fail with SQLITE_BUSY immediately instead of waiting out busy_timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def retrying_conflicts(attempt: Callable[[], T], *, tries: int = CONFLICT_TRIES) -> T:
    """``attempt()`` (one whole transaction), run again while PostgreSQL aborts it to
    break a lock conflict (:data:`LOST_CONFLICT`), at most ``tries`` times in all. Two
    transactions that lock the same rows in different orders (a worker committing the
    results of a step, its own lease renewal, a cancel from the API) deadlock now and
    then, and PostgreSQL aborts one of them: that one is run again, not given up on."""
    tried = 1
    while True:
        try:
            return attempt()
        except DBAPIError as exc:
            state = getattr(exc.orig, "sqlstate", None)
            if tried >= tries or state not in LOST_CONFLICT:
                raise
            log.warning("a transaction lost a lock conflict (SQLSTATE %s); running it again", state)
            tried += 1


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commits on success, rolls back on any exception."""
    with sessions() as session, session.begin():
        yield session
