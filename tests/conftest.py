"""Session-wide fixtures: real services, the tiny checkpoint, running stacks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from cli.redis_server import RedisServer, free_port
from tests.services import postgres_server, scratch_database
from tests.stack import Stack


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny GLM-4V checkpoint, built once per test session."""
    from worker.model.tiny import build_tiny_checkpoint

    path = tmp_path_factory.mktemp("model") / "tiny-glm4v"
    build_tiny_checkpoint(path, size="tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def _stacks(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
    redis_server: RedisServer,
) -> Iterator[dict[str, Stack]]:
    """Started lazily, one per database kind; each on its own Redis database number."""
    started: dict[str, Stack] = {}
    with ExitStack() as cleanup:

        class Stacks(dict[str, Stack]):
            def __missing__(self, kind: str) -> Stack:
                broker = f"redis://127.0.0.1:{redis_server.port}/{len(started) + 1}"
                workdir = tmp_path_factory.mktemp(f"stack-{kind}")
                if kind == "sqlite":
                    url = f"sqlite:///{workdir / 'sightline.db'}"
                else:
                    admin = cleanup.enter_context(postgres_server())
                    url = cleanup.enter_context(scratch_database(admin))
                stack = cleanup.enter_context(_running(url, broker, workdir, tiny_checkpoint))
                started[kind] = self[kind] = stack
                return stack

        yield Stacks()


@contextmanager
def _running(url: str, broker: str, workdir: Path, model: Path) -> Iterator[Stack]:
    stack = Stack(url, broker, workdir, model)
    try:
        yield stack.start()
    finally:
        stack.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def stack(request: pytest.FixtureRequest, _stacks: dict[str, Stack]) -> Iterator[Stack]:
    """The API running against PostgreSQL and, in a second run, SQLite; no worker yet,
    no jobs, an empty broker. Workers the test started are stopped after it."""
    running = _stacks[request.param]
    running.reset()
    yield running
    running.stop_workers()


@pytest.fixture
def pg_stack(_stacks: dict[str, Stack]) -> Iterator[Stack]:
    """Like ``stack``, on PostgreSQL only (production's database)."""
    running = _stacks["postgresql"]
    running.reset()
    yield running
    running.stop_workers()
