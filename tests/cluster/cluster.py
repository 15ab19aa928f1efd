"""A sightline installation spread over network-namespace hosts (``tests/cluster/netns.py``).

Hosts and what runs on them, each process started as an operator would:

- ``data``: PostgreSQL (its own cluster, ``pg_ctl``), ``redis-server`` and a moto S3
  server (``python -m moto.server``), all listening on the host's address only;
- ``api``: ``sightline api`` (gunicorn, two workers);
- ``w1``, ``w2``: ``sightline worker`` with one CPU child each (``cpu0@w1``, ``cpu0@w2``);
- ``ops``: ``sightline webhooks`` (sweeper, webhook sender) and ``sightline beat``;
- ``hooks`` and ``sink``: webhook receivers (``tests/cluster/receiver.py``); ``sink`` is
  the one a scenario makes blackhole its packets (a cluster made with ``sink=False``, for
  scenarios that need no such receiver, has no ``sink`` host).

The test process sits on the bridge and reaches every host by address. Every setting is
the default unless the cluster is made with a shorter ``lease_s``. Start-up runs what it
can side by side: every sightline process is spawned as soon as the database is
migrated, and the API keys are made while the workers load their model.

A trigger on the ``jobs`` table (test-only, in this cluster's database) records every
claim and every final write in ``chaos_writes``: :meth:`Cluster.audit` checks from it
that each job's result was written once, by its last claim.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import psycopg
import requests

from cli.processes import sightline_command, wait_http_ok
from shared.celery_app import create_celery
from shared.settings import Settings
from tests.cluster.netns import Host, Network
from tests.stack import make_image
from tests.waiting import wait_until

PG_PORT, REDIS_PORT, S3_PORT, API_PORT, HOOK_PORT = 5432, 6379, 5000, 8000, 8080
BUCKET = "sightline-chaos"

AUDIT = """
CREATE TABLE chaos_writes (
    job_id uuid NOT NULL, status text NOT NULL, claim_token uuid, worker text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION chaos_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status OR NEW.claim_token IS DISTINCT FROM OLD.claim_token
    THEN
        INSERT INTO chaos_writes (job_id, status, claim_token, worker)
        VALUES (NEW.id, NEW.status::text, NEW.claim_token, NEW.worker);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_audit AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION chaos_audit();
"""


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (make system-deps)")
    return found[0]


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args]


class Cluster:
    """See the module docstring. Use as a context manager: everything is torn down at
    exit, whatever happened."""

    def __init__(
        self, model_path: Path, lease_s: int | None = None, blobs: str = "s3", sink: bool = True
    ) -> None:
        self.model_path = model_path
        self.blobs = blobs
        self.lease_s = lease_s or Settings.model_fields["job_lease_s"].default
        self.workdir = Path(tempfile.mkdtemp(prefix="sightline-cluster-"))
        self.net = Network()
        self.hosts = {
            name: self.net.host(name)
            for name in ("data", "api", "w1", "w2", "ops", "hooks", *(["sink"] if sink else []))
        }
        self.receivers: list[str] = [name for name in ("hooks", "sink") if name in self.hosts]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        data = self.data.address
        self.database_url = f"postgresql://postgres@{data}:{PG_PORT}/sightline"
        self.env = {
            "SIGHTLINE_DATABASE_URL": self.database_url,
            "SIGHTLINE_BROKER_URL": f"redis://{data}:{REDIS_PORT}/0",
            # "local": a directory every host sees (the hosts share one file system).
            "SIGHTLINE_BLOB_URL": f"s3://{BUCKET}/blobs"
            if blobs == "s3"
            else str(self.workdir / "blobs"),
            "SIGHTLINE_MODEL_PATH": str(model_path),
            "SIGHTLINE_DEVICES": "cpu",
            "SIGHTLINE_MAX_BATCH_SIZE": "8",
            "SIGHTLINE_OUTBOUND_ALLOWLIST": f"{self.net.subnet}.0/24",
            "SIGHTLINE_JOB_LEASE_S": str(self.lease_s),
            "AWS_ENDPOINT_URL_S3": f"http://{data}:{S3_PORT}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "HF_HUB_OFFLINE": "1",
        }
        # model_validate, not Settings(**...): the values are env strings that pydantic
        # coerces, which Settings' typed keyword arguments do not describe. It still runs
        # BaseSettings.__init__ (environment variables included), as Settings(**...) would.
        self.settings = Settings.model_validate(
            {
                **{
                    k.removeprefix("SIGHTLINE_").lower(): v
                    for k, v in self.env.items()
                    if k.startswith("SIGHTLINE_")
                },
                "data_dir": self.workdir,
            }
        )
        self.celery = create_celery(self.settings)
        self.url = f"http://{self.api.address}:{API_PORT}"
        self.key = self.other_key = ""

    # -- the hosts -------------------------------------------------------------------

    @property
    def data(self) -> Host:
        return self.hosts["data"]

    @property
    def api(self) -> Host:
        return self.hosts["api"]

    def hook_url(self, host: str = "hooks") -> str:
        return f"http://{self.hosts[host].address}:{HOOK_PORT}/hook"

    # -- start and stop --------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self._start_postgres()
        self.start_redis()
        if self.blobs == "s3":
            self._start_s3()
        self.cli("db", "upgrade")
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(AUDIT)
        for name in self.receivers:
            self._spawn(
                name,
                name,
                [
                    sys.executable,
                    "-m",
                    "tests.cluster.receiver",
                    self.hosts[name].address,
                    str(HOOK_PORT),
                ],
            )
        self._spawn(
            "api",
            "api",
            sightline_command(
                "api", "--host", self.api.address, "--port", str(API_PORT), "--workers", "2"
            ),
        )
        self._spawn("ops", "ops", sightline_command("webhooks"))
        self._spawn("beat", "ops", sightline_command("beat"))
        for name in ("w1", "w2"):
            self.start_worker(name)
        # While the workers load their model (the longest part of the start-up).
        self.key = json.loads(self.cli("keys", "create", "chaos", "--json"))["key"]
        # A second tenant: webhook slots are shared per tenant, so "a slow receiver does
        # not hold up the others" is about other tenants' receivers.
        self.other_key = json.loads(self.cli("keys", "create", "chaos-other", "--json"))["key"]
        wait_http_ok(f"{self.url}/readyz", timeout_s=120, process=self.processes["api"])
        for name in self.receivers:
            wait_until(partial(_answers, self.hook_url(name)), timeout_s=30, what=name)
        self.wait_workers(["w1", "w2"])

    def _start_s3(self) -> None:
        args = [sys.executable, "-m", "moto.server", "-H", self.data.address, "-p", str(S3_PORT)]
        self._spawn("s3", "data", args)
        endpoint = self.env["AWS_ENDPOINT_URL_S3"]
        wait_until(lambda: _answers(f"{endpoint}/"), timeout_s=60, what="the S3 server")
        requests.put(f"{endpoint}/{BUCKET}", timeout=10).raise_for_status()

    def _start_postgres(self) -> None:
        pgdir = self.workdir / "pg"
        pgdir.mkdir()
        shutil.chown(self.workdir, "postgres")
        shutil.chown(pgdir, "postgres")
        self.pgdata = pgdir / "data"
        subprocess.run(
            _as_postgres(
                [_pg_bin("initdb"), "-D", str(self.pgdata), "-A", "trust", "-U", "postgres"]
            ),
            check=True,
            capture_output=True,
        )
        with (self.pgdata / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.net.subnet}.0/24 trust\n")
        options = (
            f"-p {PG_PORT} -k {pgdir} -c listen_addresses={self.data.address} "
            "-c max_connections=200"
        )
        self.data.run(
            _as_postgres(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.pgdata),
                    "-o",
                    options,
                    "-l",
                    str(pgdir / "log"),
                    "-w",
                    "start",
                ]
            )
        )
        admin = self.database_url.rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE sightline")

    def restart_postgres(self, mode: str) -> None:
        """``pg_ctl restart -m MODE`` on the data host (returns once it accepts again)."""
        # -l again: without it the new server would hold this call's output pipe open.
        log = str(self.pgdata.parent / "log")
        pg_ctl = [_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-l", log, "-m", mode, "-w"]
        self.data.run(_as_postgres([*pg_ctl, "restart"]))

    def start_redis(self) -> None:
        self._spawn(
            "redis",
            "data",
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                self.data.address,
                "--port",
                str(REDIS_PORT),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
        )
        wait_until(
            lambda: _redis_answers(self.env["SIGHTLINE_BROKER_URL"]), timeout_s=30, what="redis"
        )

    def stop(self, name: str) -> None:
        """SIGTERM process ``name`` and wait for it (SIGKILL after 60 s)."""
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def start_worker(self, host: str, **settings: str) -> None:
        env = {f"SIGHTLINE_{k.upper()}": v for k, v in settings.items()}
        self._spawn(host, host, sightline_command("worker"), env)

    def wait_workers(self, hosts: list[str], timeout_s: float = 180) -> None:
        """Until ``cpu0@<host>`` answers a ping for every host, or has a job running (a
        solo worker in a batch answers none)."""
        wanted = {f"cpu0@{h}" for h in hosts}

        def answered() -> bool:
            replies = self.celery.control.ping(timeout=0.5)
            assert replies is not None  # a broadcast with reply=True, as ping is: a list
            names = {name for reply in replies for name in reply}
            return wanted <= names | self.busy_workers()

        wait_until(answered, timeout_s=timeout_s, interval_s=0, what=f"{sorted(wanted)}")

    def busy_workers(self) -> set[str]:
        rows = self.sql("SELECT DISTINCT worker FROM jobs WHERE status = 'running'")
        return {row[0] for row in rows if row[0]}

    def _spawn(
        self, name: str, host: str, args: list[str], env: dict[str, str] | None = None
    ) -> None:
        data_dir = self.workdir / "hosts" / host
        data_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**self.env, "SIGHTLINE_DATA_DIR": str(data_dir), **(env or {})}
        self.processes[name] = self.hosts[host].spawn(args, full_env, self.log(name))

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def log_lines(self, name: str, text: str) -> int:
        """How many lines of process ``name``'s log contain ``text``."""
        with self.log(name).open(errors="replace") as log:
            return sum(1 for line in log if text in line)

    def close(self) -> None:
        # All asked to stop at once, then waited for: the workers' warm shutdowns overlap.
        for process in self.processes.values():
            process.terminate()
        for name in reversed(list(self.processes)):
            self.stop(name)
        if getattr(self, "pgdata", None) is not None:
            subprocess.run(
                _as_postgres(
                    [_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", "immediate", "-w", "stop"]
                ),
                check=False,
                capture_output=True,
            )
        self.net.close()
        self.processes.clear()
        if os.environ.get("SIGHTLINE_CHAOS_KEEP_LOGS"):
            print(f"cluster logs kept in {self.workdir / 'logs'}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- using it --------------------------------------------------------------------

    def cli(self, *args: str) -> str:
        """``sightline ARGS`` from the test process (on the bridge)."""
        done = subprocess.run(
            sightline_command(*args),
            env={**os.environ, **self.env, "SIGHTLINE_DATA_DIR": str(self.workdir)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"sightline {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            return list(conn.execute(query, params).fetchall())

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        headers = {"Authorization": f"Bearer {self.key}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, **kwargs)

    def sightline_rss(self) -> dict[str, int]:
        """RSS in bytes of every sightline process (and its children), by name."""
        found: dict[str, int] = {}
        for name, process in self.processes.items():
            try:
                root = psutil.Process(process.pid)
                tree = [root, *root.children(recursive=True)]
                found[name] = sum(p.memory_info().rss for p in tree if p.is_running())
            except psutil.NoSuchProcess:
                continue
        return found

    def receiver_counts(self, host: str = "hooks") -> dict[str, list[str]]:
        answer = requests.get(self.hook_url(host), timeout=10)
        answer.raise_for_status()
        counts: dict[str, list[str]] = answer.json()
        return counts

    def audit(self, job_ids: list[str]) -> dict[str, int]:
        """Per job: how many final writes it got (each must be 1, by its last claim); and
        overall, claims made and late writes refused are summed in the answer."""
        rows = self.sql(
            "SELECT w.job_id::text, "
            "  count(*) FILTER (WHERE w.status IN ('succeeded', 'failed', 'canceled')), "
            "  count(*) FILTER (WHERE w.status = 'running'), "
            "  bool_and(w.status NOT IN ('succeeded', 'failed') OR w.claim_token = j.claim_token) "
            "FROM chaos_writes w JOIN jobs j ON j.id = w.job_id "
            "WHERE w.job_id = ANY(%s::uuid[]) GROUP BY w.job_id",
            job_ids,
        )
        writes = {job_id: finals for job_id, finals, _, _ in rows}
        assert all(by_last for _, _, _, by_last in rows), "a result written by a stale claim"
        return {job_id: writes.get(job_id, 0) for job_id in job_ids}


def _answers(url: str) -> bool:
    try:
        requests.get(url, timeout=2)
    except requests.RequestException:
        return False
    return True


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


# -- load -------------------------------------------------------------------------------


@dataclass
class Load:
    """Jobs submitted at a steady rate by two background threads while a scenario runs:
    what was accepted (by time), how long each answer took (by time), and every answer
    that was not a 202."""

    cluster: Cluster
    per_s: float = 4.0
    callback_host: str = "hooks"
    key: str = ""  # the cluster's first key unless given
    accepted: list[tuple[float, str]] = field(default_factory=list)
    refused: list[tuple[float, int, str]] = field(default_factory=list)
    answer_s: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    @contextmanager
    def running(self) -> Iterator[Load]:
        threads = [
            threading.Thread(target=self._submit_loop, args=(i,), daemon=True) for i in range(2)
        ]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join()

    def _submit_loop(self, lane: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key or self.cluster.key}"
        interval = 2 / self.per_s
        index = lane
        next_at = time.monotonic()
        while not self._stop.is_set():
            index += 2
            at = time.time()
            try:
                answer = session.post(
                    f"{self.cluster.url}/v1/jobs",
                    files={"image": ("image", make_image(index % 50))},
                    data={
                        "prompt": f"chaos #{index}",
                        "max_new_tokens": "24",
                        "callback_url": self.cluster.hook_url(self.callback_host),
                    },
                    timeout=30,
                )
                self.answer_s.append((at, time.time() - at))
                if answer.status_code == 202:
                    self.accepted.append((at, answer.json()["id"]))
                else:
                    self.refused.append((at, answer.status_code, answer.text[:300]))
            except requests.RequestException as exc:
                self.refused.append((at, 0, repr(exc)[:300]))
            next_at += interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    @property
    def ids(self) -> list[str]:
        return [job_id for _, job_id in self.accepted]

    def accepted_again_s(self, since: float, *, what: str) -> float:
        """Wait (60 s at most) for a job accepted after ``since``; seconds from ``since``
        to its acceptance."""
        wait_until(lambda: any(at > since for at, _ in self.accepted), timeout_s=60, what=what)
        return min(at for at, _ in self.accepted if at > since) - since

    def slowest_answer_s(self, start: float, end: float) -> float:
        """The longest a submission sent between ``start`` and ``end`` waited for its
        answer (0 if none was sent)."""
        return max((took for at, took in self.answer_s if start <= at < end), default=0.0)


@dataclass
class Report:
    """What a scenario prints and asserts on."""

    name: str
    accepted: int
    succeeded: int
    lost: int
    duplicates: int
    refused: dict[int, int]
    recovery_s: float
    webhooks_missing: int
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in self.extra.items())
        return (
            f"[chaos] {self.name}: accepted {self.accepted}, succeeded {self.succeeded}, "
            f"lost {self.lost}, duplicates {self.duplicates}, refused {self.refused}, "
            f"recovery {self.recovery_s:.1f} s after the fault ended, "
            f"webhooks missing {self.webhooks_missing}{extra}"
        )

    def check(self) -> None:
        """Print the figures; fail unless every accepted job succeeded exactly once and
        its webhook reached the receiver (under one ``webhook-id``)."""
        print(self.line())
        assert self.lost == 0, f"{self.lost} accepted jobs did not succeed"
        assert self.duplicates == 0, f"{self.duplicates} jobs written or delivered twice"
        assert self.succeeded == self.accepted
        assert self.webhooks_missing == 0, f"{self.webhooks_missing} webhooks never arrived"


def settle(
    cluster: Cluster, load: Load, name: str, fault_end: float, timeout_s: float = 240
) -> Report:
    """Wait until every accepted job is final and its webhook arrived (or the timeouts
    pass), then count: succeeded, lost (not final, or not succeeded), duplicates (more
    than one final write, or more than one distinct ``webhook-id`` delivered for a job),
    webhooks missing, and the recovery time: from ``fault_end`` (a ``time.time()``) until
    the last job accepted before it was finished. Nothing is asserted or printed here:
    :meth:`Report.check` does both."""
    ids = load.ids
    assert ids, "no job was accepted"

    def final() -> list[tuple[str, str, float]] | None:
        rows = cluster.sql(
            "SELECT id::text, status, extract(epoch FROM finished_at) FROM jobs "
            "WHERE id = ANY(%s::uuid[])",
            ids,
        )
        done = [(i, s, float(f)) for i, s, f in rows if s in ("succeeded", "failed", "canceled")]
        return done if len(done) == len(ids) else None

    try:
        rows = wait_until(final, timeout_s=timeout_s, interval_s=1, what="every job final")
    except AssertionError:
        rows = [
            (i, s, float(f or 0))
            for i, s, f in cluster.sql(
                "SELECT id::text, status, extract(epoch FROM finished_at) FROM jobs "
                "WHERE id = ANY(%s::uuid[])",
                ids,
            )
        ]
    by_id = {job_id: (status, finished) for job_id, status, finished in rows}
    succeeded = sum(1 for status, _ in by_id.values() if status == "succeeded")
    before_end = {job_id for at, job_id in load.accepted if at <= fault_end}
    last = max((by_id[j][1] for j in before_end if j in by_id), default=fault_end)
    writes = cluster.audit(ids)
    # Deliveries are asynchronous: wait until every job's event reached the receiver.
    hooks: dict[str, list[str]] = {}

    def delivered() -> bool:
        nonlocal hooks
        hooks = cluster.receiver_counts(load.callback_host)
        return all(job_id in hooks for job_id in ids)

    with suppress(AssertionError):
        wait_until(delivered, timeout_s=120, interval_s=1, what="every webhook delivered")
    duplicates = sum(1 for n in writes.values() if n > 1) + sum(
        1 for job_id in ids if len(set(hooks.get(job_id, []))) > 1
    )
    refused: dict[int, int] = {}
    for _, status, _ in load.refused:
        refused[status] = refused.get(status, 0) + 1
    report = Report(
        name=name,
        accepted=len(ids),
        succeeded=succeeded,
        lost=len(ids) - succeeded,
        duplicates=duplicates,
        refused=refused,
        recovery_s=max(0.0, last - fault_end),
        webhooks_missing=sum(1 for j in ids if j not in hooks),
    )
    return report
