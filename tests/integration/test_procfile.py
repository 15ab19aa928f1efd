"""The Procfile as an operator runs it: ``honcho start`` brings the whole stack up.

``release`` (migrations) runs first on its own, as a platform's release phase would;
then web, worker, webhooks, beat and flower start together against the test PostgreSQL
(a scratch database) and Redis, a job submitted with curl succeeds, and SIGTERM to
honcho stops every process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.processes import wait_http_ok
from cli.redis_server import RedisServer, free_port, port_is_open
from tests.services import postgres_server, scratch_database
from tests.stack import make_image

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# honcho gives each process type PORT = base + 100 * its position on the command line.
PROCESSES = ["web", "worker", "webhooks", "beat", "flower"]


@pytest.fixture
def env(
    tmp_path: Path, redis_server: RedisServer, tiny_checkpoint: Path
) -> Iterator[dict[str, str]]:
    with postgres_server() as admin, scratch_database(admin) as database_url:
        yield {
            **{k: v for k, v in os.environ.items() if k != "PORT"},
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "SIGHTLINE_DATA_DIR": str(tmp_path),
            "SIGHTLINE_DATABASE_URL": database_url,
            "SIGHTLINE_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/12",
            "SIGHTLINE_MODEL_PATH": str(tiny_checkpoint),
            "SIGHTLINE_DEVICES": "cpu",
            "SIGHTLINE_WORKER_METRICS_PORT": "0",
            "FLOWER_UNAUTHENTICATED_API": "true",
        }


def _base_port() -> int:
    """A port free for web that leaves flower's (base + 400) free too."""
    while True:
        base = free_port()
        if base + 400 < 65536 and not port_is_open(base + 400):
            return base


def _curl(*args: str) -> dict[str, object]:
    done = subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


def test_honcho_starts_the_stack_and_a_curl_job_succeeds(
    env: dict[str, str], tmp_path: Path
) -> None:
    honcho = [str(BIN / "honcho"), "-f", str(ROOT / "Procfile"), "-d", str(ROOT)]
    release = subprocess.run(
        [*honcho, "start", "release"], env=env, capture_output=True, text=True, timeout=120
    )
    assert release.returncode == 0, release.stdout + release.stderr
    created = subprocess.run(
        ["sightline", "keys", "create", "procfile", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = json.loads(created.stdout)["key"]
    image = tmp_path / "photo.png"
    image.write_bytes(make_image(1))
    base = _base_port()
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        stack = subprocess.Popen(
            [*honcho, "start", "-p", str(base), *PROCESSES],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{base}"
        wait_http_ok(f"{url}/readyz", timeout_s=60, process=stack)
        wait_http_ok(f"http://127.0.0.1:{base + 400}/healthcheck", timeout_s=60, process=stack)
        auth = f"Authorization: Bearer {key}"
        job = _curl("-H", auth, "-F", f"image=@{image}", "-F", "prompt=describe", f"{url}/v1/jobs")
        deadline = time.monotonic() + 90
        while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
            job = _curl("-H", auth, f"{url}/v1/jobs/{job['id']}?wait=5")
        assert job["status"] == "succeeded", log.read_text()[-4000:]
    finally:
        stack.send_signal(signal.SIGTERM)
        try:
            stack.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
            raise
    assert not port_is_open(base), "the API outlived honcho"
