"""Real PostgreSQL and Redis for the test session, started here when not already running.

PostgreSQL: the server on 127.0.0.1:5432 when one answers (CI's machine has one), else a
private cluster created with the installed binaries (as the ``postgres`` user when we are
root: ``initdb`` refuses to run as root). Either way the tests get a database of their
own, dropped at the end, so they never touch anyone else's data.

Redis: always a private ``redis-server`` on a free port, because the tests flush it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from cli.redis_server import free_port, port_is_open

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _postgres_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(
            f"PostgreSQL's {name} was not found: install the server "
            "(apt-get install postgresql; `make test` does this)"
        )
    return found


def _as_postgres_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _local_server_answers() -> bool:
    if not port_is_open(5432):
        return False
    try:
        with psycopg.connect(LOCAL_POSTGRES, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL (database ``postgres``) of a running PostgreSQL server."""
    if _local_server_answers():
        yield LOCAL_POSTGRES
        return
    workdir = tempfile.mkdtemp(prefix="sightline-pg-")
    data, sockets = Path(workdir) / "data", Path(workdir) / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        shutil.chown(sockets, "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres_user(
            [_postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
        ),
        check=True,
        capture_output=True,
    )
    ctl = _postgres_bin("pg_ctl")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        _as_postgres_user(
            [ctl, "-D", str(data), "-o", options, "-l", str(Path(workdir) / "log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres_user([ctl, "-D", str(data), "-m", "fast", "-w", "stop"]), check=False
        )
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    """Create a uniquely named database on the server, yield its URL, drop it after."""
    name = f"sightline_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        deadline = time.monotonic() + 10
        while True:
            try:
                with psycopg.connect(admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.Error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
