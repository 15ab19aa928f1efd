"""Start and stop sightline's processes as a user would (demo, tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import requests


def sightline_command(*args: str) -> list[str]:
    """The ``sightline`` command line for this interpreter (works without PATH set up)."""
    return [sys.executable, "-m", "cli.main", *args]


def spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own process group, output to ``log`` (or inherited)."""
    out: IO[bytes] | int | None = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
    return subprocess.Popen(
        args,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )


def start_api(
    env: dict[str, str], port: int, log: Path | None = None, workers: int | None = 2
) -> subprocess.Popen[bytes]:
    """``sightline api`` (gunicorn) on 127.0.0.1:``port`` with ``workers`` processes
    (``None``: the command's default, as in production)."""
    args = sightline_command("api", "--port", str(port))
    if workers is not None:
        args += ["--workers", str(workers)]
    return spawn(args, env, log)


def start_worker(env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """``sightline worker``: the launcher and its per-device children."""
    return spawn(sightline_command("worker"), env, log)


def wait_http_ok(
    url: str, timeout_s: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until ``GET url`` answers 2xx; raises ``RuntimeError`` if ``process`` dies or
    ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60.0) -> int:
    """SIGTERM the process (a graceful stop), SIGKILL its group after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode
