"""``sightline worker`` as operators run it: real launcher, real children, real Celery.

``SIGHTLINE_DEVICES=cpu,cpu`` exercises the multi-device path without a GPU: the
launcher starts two pinned children, ``cpu0@host`` and ``cpu1@host``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import psutil

from cli.processes import sightline_command
from shared.models import Job, JobStatus
from tests.stack import Stack, make_image
from tests.waiting import wait_until

# The clock tick in which the kernel counts a process's start time.
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _start_time(pid: int) -> float:
    """When ``pid`` started, on the wall clock, to within :data:`TICK_S`: its start in
    ticks since boot (``/proc/PID/stat``) placed on the wall clock by reading the boot
    clock and the wall clock together. (psutil's ``create_time`` adds the boot time in
    whole seconds, so it can be off by up to a second.)"""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ticks * TICK_S


def _children(launcher: subprocess.Popen[bytes]) -> dict[str, int]:
    """``{node name prefix ("cpu0@"): pid}`` of the launcher's live worker children."""
    found: dict[str, int] = {}
    for child in psutil.Process(launcher.pid).children():
        try:
            args = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "worker.child" in args and child.status() != psutil.STATUS_ZOMBIE:
            found[args[args.index("--node") + 1].split("@")[0] + "@"] = child.pid
    return found


def _wait_for_pings(stack: Stack, prefixes: Iterable[str], timeout_s: float = 90) -> None:
    """Wait until a node named ``prefix…`` answers a Celery ping, for every prefix."""
    wanted = set(prefixes)

    def all_answer() -> bool:
        replies = stack.celery.control.ping(timeout=0.5)
        assert replies is not None  # a broadcast with reply=True, as ping is: a list
        answered = {p for p in wanted for reply in replies for name in reply if name.startswith(p)}
        return answered == wanted

    wait_until(all_answer, timeout_s=timeout_s, interval_s=0, what=f"{wanted} to answer a ping")


def test_two_cpu_devices_run_two_workers_that_both_take_work(pg_stack: Stack) -> None:
    launcher = pg_stack.start_worker(devices="cpu,cpu")
    _wait_for_pings(pg_stack, ["cpu0@", "cpu1@"])
    assert set(_children(launcher)) == {"cpu0@", "cpu1@"}
    client = pg_stack.client()

    ids = [client.submit(make_image(i), "describe", max_new_tokens=16)["id"] for i in range(40)]
    done = pg_stack.wait_all(ids)

    assert {job["status"] for job in done} == {"succeeded"}
    # The database records which child ran each job: both did some.
    ran = {row.worker.split("@")[0] for row in pg_stack.jobs(ids) if row.worker}
    assert ran == {"cpu0", "cpu1"}


def test_a_killed_child_is_restarted_and_sigterm_stops_everything_cleanly(
    pg_stack: Stack,
) -> None:
    launcher = pg_stack.start_worker(devices="cpu,cpu")
    _wait_for_pings(pg_stack, ["cpu0@", "cpu1@"])
    before = _children(launcher)

    os.kill(before["cpu1@"], signal.SIGKILL)

    def restarted() -> dict[str, int] | None:
        assert launcher.poll() is None, "the launcher must outlive its child"
        children = _children(launcher)
        return None if children.get("cpu1@") in (None, before["cpu1@"]) else children

    after = wait_until(restarted, timeout_s=60, interval_s=0.2, what="cpu1 to be restarted")
    assert after["cpu0@"] == before["cpu0@"], "the healthy child is left alone"
    _wait_for_pings(pg_stack, ["cpu1@"])
    job = pg_stack.client().submit(make_image(1), "after the restart", max_new_tokens=4)
    assert pg_stack.wait_all([job["id"]])[0]["status"] == "succeeded"

    launcher.send_signal(signal.SIGTERM)

    assert launcher.wait(timeout=60) == 0
    assert not any(psutil.pid_exists(pid) for pid in after.values())


def test_a_dead_child_s_jobs_are_freed_before_its_successor_starts(pg_stack: Stack) -> None:
    """The launcher sees its child die and expires the leases of the jobs it was running
    (attempts and claim token kept) before starting the next child: another worker could
    take them at once, not after the successor's imports and model load, nor the 60 s
    lease. They then run once more each and succeed."""
    launcher = pg_stack.start_worker(fault_injection="1")  # [[slow]]: 1.5 s steps
    client = pg_stack.client()
    ids = [client.submit(make_image(i), "[[slow]] held", max_new_tokens=4)["id"] for i in range(3)]

    def running() -> list[Job] | None:
        rows = [row for row in pg_stack.jobs(ids) if row.status is JobStatus.RUNNING]
        return rows or None

    held = {
        row.id: (row.attempts, row.claim_token)
        for row in wait_until(running, timeout_s=60, what="running jobs")
    }
    dead = _children(launcher)["cpu0@"]
    os.kill(dead, signal.SIGKILL)

    def freed() -> list[Job] | None:
        rows = pg_stack.jobs(str(job_id) for job_id in held)
        now = datetime.now(UTC)
        return rows if all(r.lease_expires_at and r.lease_expires_at <= now for r in rows) else None

    rows = wait_until(freed, timeout_s=30, interval_s=0.1, what="the dead child's jobs freed")
    assert {row.id: (row.attempts, row.claim_token) for row in rows} == held

    def successor() -> int | None:
        pid = _children(launcher).get("cpu0@")
        return pid if pid not in (None, dead) else None

    started = _start_time(wait_until(successor, timeout_s=30, what="the successor"))
    # Freed before it started, to the clock tick that start times are counted in.
    expiries = [r.lease_expires_at.timestamp() for r in rows if r.lease_expires_at]
    assert len(expiries) == len(rows) and max(expiries) < started + TICK_S
    done = {job["id"]: job for job in pg_stack.wait_all(ids)}
    assert {job["status"] for job in done.values()} == {"succeeded"}
    assert all(done[str(job_id)]["attempts"] == n + 1 for job_id, (n, _) in held.items())


def test_a_missing_model_path_is_refused_at_once_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    env = {
        **os.environ,
        "SIGHTLINE_DATA_DIR": str(tmp_path),
        "SIGHTLINE_MODEL_PATH": str(missing),
        "SIGHTLINE_DEVICES": "cpu,cpu",
    }
    started = time.monotonic()

    done = subprocess.run(
        sightline_command("worker"), env=env, capture_output=True, text=True, timeout=30
    )

    assert done.returncode == 2
    assert time.monotonic() - started < 15
    assert f"model path '{missing}' does not exist" in done.stderr
    assert "SIGHTLINE_MODEL_PATH" in done.stderr
    assert "started worker" not in done.stderr, "no child may start"


def test_a_checkpoint_that_does_not_load_makes_the_launcher_give_up(tmp_path: Path) -> None:
    """The parent's pre-check passes (a directory with a JSON config), but it is no
    image-text-to-text model: every child dies at start-up, and the launcher stops
    retrying after three attempts instead of looping."""
    broken = tmp_path / "not-a-vlm"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    env = {
        **os.environ,
        "SIGHTLINE_DATA_DIR": str(tmp_path),
        "SIGHTLINE_MODEL_PATH": str(broken),
        "SIGHTLINE_DEVICES": "cpu",
    }

    done = subprocess.run(
        sightline_command("worker"), env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 1
    assert done.stderr.count("started worker cpu0@") == 3
    assert "ModelLoadError" in done.stderr
    assert "died 3 times at start-up" in done.stderr
