"""A running sightline installation for integration tests: API and workers as processes.

Everything is started the way a user starts it (``sightline db upgrade``, ``sightline keys
create --json``, ``sightline api``, ``sightline worker``), against real PostgreSQL or
SQLite and a real Redis.

Loading the model is most of a worker's start-up, so a worker the last test started with
``start_worker`` is parked rather than stopped when that test ends: it stops consuming
(Celery's ``cancel_consumer``, answered only once it is idle) and waits. If the next test
on the same stack asks for a worker with the same settings, it resumes consuming
(``add_consumer``) instead of a new one loading the model; otherwise it is stopped first.
A parked worker consumes nothing, so a test that starts no worker still sees none work.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from PIL import Image, ImageDraw
from sqlalchemy import delete, select

from cli.processes import sightline_command, spawn, start_api, start_worker, stop, wait_http_ok
from cli.redis_server import free_port
from client import Client
from shared.celery_app import create_celery
from shared.db import create_engine_for, session_factory
from shared.models import (
    Batch,
    BlobRelease,
    Job,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from shared.settings import Settings
from shared.tasks import GPU_QUEUES


def make_image(index: int, size: tuple[int, int] = (96, 72), fmt: str = "PNG") -> bytes:
    """A distinct small picture per ``index`` (colour and shape vary)."""
    colour = ((index * 67) % 256, (index * 131) % 256, (index * 199) % 256)
    image = Image.new("RGB", size, (250, 250, 250))
    draw = ImageDraw.Draw(image)
    inset = 4 + index % 12
    draw.ellipse((inset, inset, size[0] - inset, size[1] - inset), fill=colour)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


@dataclass(frozen=True)
class _Reusable:
    """A ``sightline worker`` launcher with one child, named ``node``, started with
    ``settings`` (the test's overrides)."""

    process: subprocess.Popen[bytes]
    node: str
    settings: tuple[tuple[str, str], ...]


class Stack:
    """One database + broker + blob store + model, with the API running on a free port."""

    def __init__(
        self,
        database_url: str,
        broker_url: str,
        workdir: Path,
        model_path: Path,
        blob_url: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.env = {
            "SIGHTLINE_DATA_DIR": str(workdir),
            "SIGHTLINE_DATABASE_URL": database_url,
            "SIGHTLINE_BROKER_URL": broker_url,
            "SIGHTLINE_BLOB_URL": blob_url or str(workdir / "blobs"),
            "SIGHTLINE_MODEL_PATH": str(model_path),
            "SIGHTLINE_DEVICES": "cpu",
            "SIGHTLINE_MAX_BATCH_SIZE": "8",
            "SIGHTLINE_MAX_BATCH_WAIT_MS": "20",
            # Webhook receivers in the tests listen on loopback.
            "SIGHTLINE_OUTBOUND_ALLOWLIST": "127.0.0.1",
            # Its own port for the launcher's metrics: never 9101, which may be taken.
            "SIGHTLINE_WORKER_METRICS_PORT": str(free_port()),
            "SIGHTLINE_METRICS_TOKEN": "tests-metrics-token",  # tests.prometheus.METRICS_TOKEN
            # Small caps and a quick heartbeat, so tests can reach and free them.
            "SIGHTLINE_LONG_POLL_PER_TENANT": "6",
            "SIGHTLINE_STREAMS_PER_TENANT": "4",
            "SIGHTLINE_STREAM_HEARTBEAT_S": "2",
        }
        # model_validate, not Settings(**...): the values are env strings that pydantic
        # coerces, which Settings' typed keyword arguments do not describe. It still runs
        # BaseSettings.__init__ (environment variables included), as Settings(**...) would.
        self.settings = Settings.model_validate(
            {k.removeprefix("SIGHTLINE_").lower(): v for k, v in self.env.items()}
        )
        self.engine = create_engine_for(self.settings)
        self.sessions = session_factory(self.engine)
        self.redis = redis.Redis.from_url(broker_url)
        self.celery = create_celery(self.settings)
        self._workers: list[subprocess.Popen[bytes]] = []
        self._reusable: dict[int, _Reusable] = {}  # by pid, started by this test
        self._parked: _Reusable | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.key = ""
        self.webhook_secret = ""

    def cli(self, *args: str) -> str:
        """Run ``sightline ARGS`` with this stack's settings; returns its stdout."""
        done = self.cli_result(*args)
        assert done.returncode == 0, f"sightline {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def cli_result(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``sightline ARGS`` with this stack's settings, whatever its exit status."""
        return subprocess.run(
            sightline_command(*args),
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=False,
        )

    def start(self, api_workers: int | None = 2) -> Stack:
        """Migrate, create the ``tests`` key, start the API with ``api_workers`` gunicorn
        workers (``None``: ``sightline api``'s production default)."""
        self.cli("db", "upgrade")
        created = json.loads(self.cli("keys", "create", "tests", "--json"))
        self.key, self.webhook_secret = created["key"], created["webhook_secret"]
        port = free_port()
        self.api = start_api(self.env, port, self.workdir / "logs" / "api.log", api_workers)
        self.url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{self.url}/readyz", timeout_s=60, process=self.api)
        return self

    def client(self, key: str | None = None) -> Client:
        return Client(self.url, key or self.key)

    def call(
        self, method: str, path: str, *, key: str | None = None, **kwargs: Any
    ) -> requests.Response:
        """A raw HTTP request to the API as ``key`` (default: the ``tests`` key), for
        answers the client would turn into exceptions."""
        headers = {"Authorization": f"Bearer {key or self.key}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 60)
        return requests.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def start_worker(self, **settings: str) -> subprocess.Popen[bytes]:
        """Start ``sightline worker`` (the launcher) and wait until a worker answers a ping,
        or resume the parked one if it was started with the same ``settings``.

        ``settings`` override this stack's ones for that process (``max_batch_size="1"``).
        """
        key = tuple(sorted(settings.items()))
        parked, self._parked = self._parked, None
        if parked is not None:
            if parked.settings == key and self._consume(parked, resume=True):
                self._workers.append(parked.process)
                self._reusable[parked.process.pid] = parked
                return parked.process
            stop(parked.process)  # one cpu0@ node at a time
        process = start_worker(self._env(settings), self._log("worker"))
        self._workers.append(process)
        node = self._answering_node(process, "cpu0@")
        if "devices" not in settings:
            self._reusable[process.pid] = _Reusable(process, node, key)
        return process

    def start_worker_child(
        self, node: str, *, ready: bool = True, **settings: str
    ) -> subprocess.Popen[bytes]:
        """Start one ``python -m worker.child`` directly (no launcher to restart it), so a
        test can SIGKILL exactly the process that runs the batch. With ``ready`` False,
        return at once instead of waiting for it to answer a ping."""
        args = [sys.executable, "-m", "worker.child", "--device", "cpu", "--node", node]
        process = spawn(args, self._env(settings), self._log(node))
        if not ready:
            self._workers.append(process)
            return process
        return self._started(process, node)

    def start_ops(self, **settings: str) -> None:
        """Start ``sightline webhooks`` (sweeper, webhook sender) and ``sightline beat``."""
        env = self._env(settings)
        ops = spawn(sightline_command("webhooks"), env, self._log("ops"))
        self._started(ops, "ops@")
        self._workers.append(spawn(sightline_command("beat"), env, self._log("beat")))

    def _env(self, settings: dict[str, str]) -> dict[str, str]:
        return {**self.env, **{f"SIGHTLINE_{k.upper()}": v for k, v in settings.items()}}

    def _log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}-{len(self._workers)}.log"

    def _started(
        self, process: subprocess.Popen[bytes], node_prefix: str
    ) -> subprocess.Popen[bytes]:
        """Track ``process`` and wait until a node named ``node_prefix…`` answers a ping."""
        self._workers.append(process)
        self._answering_node(process, node_prefix)
        return process

    def _answering_node(self, process: subprocess.Popen[bytes], node_prefix: str) -> str:
        """The full name of the node ``node_prefix…``, once it answers a ping. Only that
        first answer counts: a worker that finds jobs waiting goes straight into a batch,
        and a solo worker in a batch answers no ping."""
        deadline = time.monotonic() + 120
        while True:
            replies = self.celery.control.ping(timeout=0.5)
            assert replies is not None  # a broadcast with reply=True, as ping is: a list
            for name in (name for reply in replies for name in reply):
                if name.startswith(node_prefix):
                    return name
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node_prefix} did not answer a ping within 120 s")

    def stop_workers(self) -> None:
        """Stop every worker, ops and beat process this stack started (SIGTERM), except
        one idle single-device worker from ``start_worker``, which is parked."""
        for process in self._workers:
            reusable = self._reusable.pop(process.pid, None)
            if reusable is not None and self._parked is None and self._consume(reusable):
                self._parked = reusable
            else:
                stop(process)
        self._workers.clear()
        self._reusable.clear()

    def _consume(self, worker: _Reusable, *, resume: bool = False) -> bool:
        """Make ``worker`` consume the GPU queues again, or stop consuming them; False when
        it is gone or did not answer within 30 s (a busy solo worker answers only when
        its task ends)."""
        if worker.process.poll() is not None:
            return False
        control = self.celery.control
        command = control.add_consumer if resume else control.cancel_consumer
        for queue in GPU_QUEUES:
            replies = command(queue, destination=[worker.node], reply=True, timeout=30)
            assert replies is not None  # reply=True: a list
            if not any("ok" in reply.get(worker.node, {}) for reply in replies):
                return False
        return True

    def reset(self) -> None:
        """Stop (or park) workers, delete every job, batch, webhook event and endpoint (a
        port a later test's receiver reuses must not find its endpoint disabled) and flush
        the broker: a clean slate per test."""
        self.stop_workers()
        with self.sessions.begin() as session:
            session.execute(delete(WebhookDelivery))
            session.execute(delete(WebhookEvent))
            session.execute(delete(WebhookEndpoint))
            session.execute(delete(Job))
            session.execute(delete(Batch))  # a later test may expect none (the console)
            session.execute(delete(BlobRelease))  # what earlier tests' jobs let go of
        self.redis.flushdb()

    def jobs(self, ids: Iterable[str] | None = None) -> list[Job]:
        """Job rows straight from the database (all, or those with ``ids``)."""
        with self.sessions() as session:
            query = select(Job)
            if ids is not None:
                query = query.where(Job.id.in_([uuid.UUID(i) for i in ids]))
            return list(session.scalars(query))

    def wait_all(self, ids: list[str], timeout_s: float = 180) -> list[dict[str, Any]]:
        """Each job once final; on a timeout the error shows the unfinished jobs' rows
        and the tail of every process log, so a failure in CI can be read afterwards."""
        client = self.client()
        try:
            return [client.wait(job_id, timeout_s=timeout_s) for job_id in ids]
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnosis(ids)}") from exc

    def diagnosis(self, ids: list[str], lines: int = 40) -> str:
        """The rows of the jobs among ``ids`` that are not final, and the last ``lines``
        of every log of this stack's processes, oldest log first."""
        unfinished = [
            f"{job.id} {job.status} worker={job.worker} attempts={job.attempts}"
            f" lease={job.lease_expires_at} started={job.started_at}"
            for job in self.jobs(ids)
            if job.finished_at is None
        ]
        logs = sorted((self.workdir / "logs").glob("*.log"), key=lambda path: path.stat().st_mtime)
        tails = [
            f"--- {path.name} ---\n"
            + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for path in logs
        ]
        return "\n".join(["unfinished jobs:", *unfinished, *tails])

    def close(self) -> None:
        self.stop_workers()
        if self._parked is not None:
            stop(self._parked.process)
        if self.api is not None:
            stop(self.api)
        self.redis.close()
        self.engine.dispose()
