"""The worker's database sessions (:func:`shared.db.worker_engine`) on a real PostgreSQL:
one left idle inside a transaction is ended by the server after a quarter of the lease
(what frees the locks of a worker host cut off mid-transaction; the cluster scenario in
``tests/cluster/test_worker_partition.py`` shows it across hosts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared.db import create_engine_for, worker_engine
from shared.settings import Settings
from tests.services import postgres_server, scratch_database


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with postgres_server() as admin, scratch_database(admin) as url:
        yield url


def _show(settings: Settings, name: str, *, worker: bool = True) -> str:
    engine = worker_engine(settings) if worker else create_engine_for(settings)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text(f"SHOW {name}")).scalar_one())
    finally:
        engine.dispose()


def test_worker_sessions_end_idle_transactions_after_a_quarter_of_the_lease(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, job_lease_s=8)
    assert _show(settings, "idle_in_transaction_session_timeout") == "2s"
    # The API's and the tools' sessions keep the server's default (none).
    assert _show(settings, "idle_in_transaction_session_timeout", worker=False) == "0"


def test_options_given_in_the_url_are_kept(database_url: str, tmp_path: Path) -> None:
    url = f"{database_url}?options=-c%20statement_timeout%3D7000"
    settings = Settings(data_dir=tmp_path, database_url=url, job_lease_s=8)
    assert _show(settings, "statement_timeout") == "7s"
    assert _show(settings, "idle_in_transaction_session_timeout") == "2s"


def test_a_transaction_left_idle_is_rolled_back_and_its_locks_freed(
    database_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url, job_lease_s=4)
    engine = worker_engine(settings)
    other = create_engine_for(settings)
    try:
        with other.begin() as connection:
            connection.execute(text("CREATE TABLE held (id int PRIMARY KEY)"))
            connection.execute(text("INSERT INTO held VALUES (1)"))
        idle = engine.connect()
        idle.begin()
        idle.execute(text("SELECT id FROM held FOR UPDATE"))
        with other.connect() as connection:
            # SKIP LOCKED passes the row over while the idle transaction holds it...
            query = text("SELECT id FROM held FOR UPDATE SKIP LOCKED")
            assert connection.execute(query).all() == []
            connection.rollback()
            time.sleep(1.5)  # ...and takes it once the server has ended that session (1 s)
            assert connection.execute(query).all() == [(1,)]
            connection.rollback()
        with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
            idle.execute(text("SELECT 1"))
        idle.close()
    finally:
        engine.dispose()
        other.dispose()
