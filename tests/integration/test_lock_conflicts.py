"""A transaction that PostgreSQL aborts to break a deadlock is run again, not given up.

A worker commits the results of a step in one transaction while its lease renewal, a
cancel from the API or another worker's batch completion may lock the same rows in
another order; PostgreSQL then aborts one of the two. Before ``retrying_conflicts`` a
worker whose commit was the one aborted lost its whole run: every job in it stayed
``running`` until its lease ran out and was claimed again, an attempt spent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from shared.db import create_engine_for, retrying_conflicts
from shared.settings import Settings
from tests.services import postgres_server, scratch_database
from tests.waiting import wait_until


@pytest.fixture
def rows(tmp_path: Path) -> Iterator[tuple[Engine, str]]:
    """An engine on a scratch database holding rows 1 and 2, and the database's URL."""
    with postgres_server() as admin, scratch_database(admin) as url:
        engine = create_engine_for(Settings(data_dir=tmp_path, database_url=url))
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, v text)"))
            conn.execute(text("INSERT INTO t VALUES (1, 'start'), (2, 'start')"))
        yield engine, url
        engine.dispose()


def _waiting_for_a_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(found and found[0])


def _deadlock(engine: Engine, url: str, *, tries: int) -> tuple[list[int], list[BaseException]]:
    """Run a transaction (row 1, then row 2) through ``retrying_conflicts`` while
    another (row 2, then row 1) deadlocks with its first run; returns the runs it made
    and what it raised. The first to wait checks for the deadlock first (after
    ``deadlock_timeout``), so the transaction under test is the one aborted."""
    runs: list[int] = []
    raised: list[BaseException] = []

    def attempt() -> None:
        runs.append(len(runs) + 1)
        with engine.begin() as conn:
            conn.execute(text("UPDATE t SET v = 'mine' WHERE id = 1"))
            conn.execute(text("UPDATE t SET v = 'mine' WHERE id = 2"))

    def run() -> None:
        try:
            retrying_conflicts(attempt, tries=tries)
        except BaseException as exc:
            raised.append(exc)

    with psycopg.connect(url) as other:
        other.execute("UPDATE t SET v = 'other' WHERE id = 2")
        worker = threading.Thread(target=run)
        worker.start()
        wait_until(lambda: _waiting_for_a_lock(url), timeout_s=30, what="a wait on row 2")
        other.execute("UPDATE t SET v = 'other' WHERE id = 1")  # the cycle: one is aborted
        other.commit()
    worker.join(timeout=60)
    return runs, raised


def test_a_transaction_that_loses_a_deadlock_runs_again_and_goes_through(
    rows: tuple[Engine, str],
) -> None:
    engine, url = rows

    runs, raised = _deadlock(engine, url, tries=3)

    assert raised == []
    assert runs == [1, 2], "aborted once, then run again"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t ORDER BY id")).scalars().all() == [
            "mine",
            "mine",
        ]


def test_a_transaction_out_of_tries_raises_the_deadlock(rows: tuple[Engine, str]) -> None:
    engine, url = rows

    runs, [raised] = _deadlock(engine, url, tries=1)

    assert runs == [1]
    assert isinstance(raised, DBAPIError)
    assert getattr(raised.orig, "sqlstate", None) == "40P01"
