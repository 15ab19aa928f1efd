"""Session-wide fixtures: real services, the tiny checkpoint, running stacks."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from cli.redis_server import RedisServer, free_port
from shared.settings import Settings
from tests.services import postgres_server, scratch_database
from tests.stack import Stack


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--blob-store",
        choices=("local", "s3"),
        default="local",
        help="where every stack keeps its images: a directory, or the loopback S3 server",
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny GLM-4V checkpoint, built once per test session."""
    from worker.model.tiny import build_tiny_checkpoint

    path = tmp_path_factory.mktemp("model") / "tiny-glm4v"
    build_tiny_checkpoint(path, size="tiny", seed=0)
    return path


@pytest.fixture(scope="session")
def medium_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline medium GLM-4V checkpoint (about 40 M parameters), built once per test
    session: its greedy text varies from token to token, where the tiny one's repeats."""
    from worker.model.tiny import build_tiny_checkpoint

    path = tmp_path_factory.mktemp("model") / "medium-glm4v"
    build_tiny_checkpoint(path, size="medium", seed=0)
    return path


@pytest.fixture(scope="session")
def s3_blob_url() -> Iterator[str]:
    """``s3://sightline-test/blobs`` on a moto S3 server at 127.0.0.1:<free port>.

    For the session, ``os.environ`` carries the endpoint (``AWS_ENDPOINT_URL_S3``), dummy
    credentials and a region, and hides any shared AWS config so real accounts are never
    touched; processes started from the tests inherit them. Restored afterwards.
    """
    from moto.server import ThreadedMotoServer

    # moto's server logs every request through werkzeug; the tests' output need not.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        import s3fs

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("sightline-test")
        try:
            yield "s3://sightline-test/blobs"
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer(free_port()) as server:
        yield server


@pytest.fixture(scope="session")
def _stacks(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
    redis_server: RedisServer,
) -> Iterator[dict[str, Stack]]:
    """Started lazily, one per kind (``postgresql``, ``sqlite``, ``s3``: PostgreSQL with
    images in a loopback S3 bucket); each on its own Redis database number."""
    started: dict[str, Stack] = {}
    with ExitStack() as cleanup:

        class Stacks(dict[str, Stack]):
            def __missing__(self, kind: str) -> Stack:
                broker = f"redis://127.0.0.1:{redis_server.port}/{len(started) + 1}"
                workdir = tmp_path_factory.mktemp(f"stack-{kind}")
                blobs = str(workdir / "blobs")
                if kind == "s3" or request.config.getoption("--blob-store") == "s3":
                    blobs = f"{request.getfixturevalue('s3_blob_url')}/{workdir.name}"
                if kind == "sqlite":
                    url = f"sqlite:///{workdir / 'sightline.db'}"
                else:
                    admin = cleanup.enter_context(postgres_server())
                    url = cleanup.enter_context(scratch_database(admin))
                stack = cleanup.enter_context(
                    _running(url, broker, workdir, tiny_checkpoint, blobs)
                )
                started[kind] = self[kind] = stack
                return stack

        yield Stacks()


@contextmanager
def _running(url: str, broker: str, workdir: Path, model: Path, blobs: str) -> Iterator[Stack]:
    stack = Stack(url, broker, workdir, model, blob_url=blobs)
    try:
        yield stack.start()
    finally:
        stack.close()


@pytest.fixture(params=["postgresql", "sqlite", "s3"])
def stack(request: pytest.FixtureRequest, _stacks: dict[str, Stack]) -> Iterator[Stack]:
    """The API running against PostgreSQL, then SQLite, then PostgreSQL with images on a
    loopback S3 server; no worker yet, no jobs, an empty broker. Workers the test started
    are stopped after it."""
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


@pytest.fixture(params=["postgresql", "sqlite"])
def database_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings for an empty scratch database (no tables yet): a fresh PostgreSQL
    database, then a SQLite file."""
    if request.param == "sqlite":
        yield Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'scratch.db'}")
        return
    with postgres_server() as admin, scratch_database(admin) as url:
        yield Settings(data_dir=tmp_path, database_url=url)
