"""``sightline worker``: one worker process per device, kept alive.

Each child runs ``python -m worker.child`` with ``CUDA_VISIBLE_DEVICES`` pinned to its
card (or hidden, for ``cpu``) and the node name ``gpu<i>@host`` / ``cpu<i>@host``. A child
that dies is restarted after a backoff; one that keeps dying right after start-up (a
missing model, say) makes the launcher stop everything and exit non-zero instead of
looping. SIGTERM and SIGINT are forwarded so every child finishes its batch first.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from shared.settings import Settings

log = logging.getLogger(__name__)

# A child that exits sooner than this after starting counts as a start-up failure.
STARTUP_GRACE_S = 30.0
MAX_STARTUP_FAILURES = 3
MAX_BACKOFF_S = 30.0


def plan_devices(settings: Settings) -> list[str]:
    """The devices to run on: ``SIGHTLINE_DEVICES`` if set (``0,2``, ``cpu,cpu``), else
    every GPU ``nvidia-smi`` lists, else one ``cpu`` worker."""
    if settings.devices.strip():
        return [d.strip() for d in settings.devices.split(",") if d.strip()]
    return _visible_gpus() or ["cpu"]


def _visible_gpus() -> list[str]:
    # Asked of nvidia-smi rather than torch: the launcher must not initialise CUDA.
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def node_name(device: str, index: int) -> str:
    """``gpu<i>@host`` for GPU index ``i``, ``cpu<n>@host`` for the n-th CPU worker."""
    host = socket.gethostname()
    return f"cpu{index}@{host}" if device == "cpu" else f"gpu{device}@{host}"


@dataclass
class _Child:
    device: str
    node: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    startup_failures: int = 0
    restart_at: float | None = None
    env: dict[str, str] = field(default_factory=dict)


class Launcher:
    """Starts, watches and stops the worker children."""

    def __init__(self, devices: list[str]) -> None:
        self._children = [_Child(device=d, node=node_name(d, i)) for i, d in enumerate(devices)]
        self._stopping = threading.Event()

    def run(self) -> int:
        """Run until told to stop (exit 0 if every child exited cleanly) or until a child
        keeps failing at start-up (exit 1)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self._children:
            self._start(child)
        while not self._stopping.is_set():
            if not self._watch():
                self._stop_all()
                return 1
            self._stopping.wait(0.5)
        return self._stop_all()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info(
            "launcher received %s; stopping workers after their current batch",
            signal.Signals(signum).name,
        )
        self._stopping.set()

    def _start(self, child: _Child) -> None:
        env = dict(os.environ)
        # Hide every card but this child's one; a CPU child sees none at all.
        env["CUDA_VISIBLE_DEVICES"] = "" if child.device == "cpu" else child.device
        command = [
            sys.executable,
            "-m",
            "worker.child",
            "--device",
            child.device,
            "--node",
            child.node,
        ]
        child.process = subprocess.Popen(command, env=env)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info(
            "started worker %s on device %s (pid %d)", child.node, child.device, child.process.pid
        )

    def _watch(self) -> bool:
        """Restart dead children; False when one has failed at start-up too often."""
        now = time.monotonic()
        for child in self._children:
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
                continue
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            if now - child.started_at < STARTUP_GRACE_S:
                child.startup_failures += 1
            else:
                child.startup_failures = 0
            if child.startup_failures >= MAX_STARTUP_FAILURES:
                log.error(
                    "worker %s died %d times at start-up (last exit %s); giving up",
                    child.node,
                    child.startup_failures,
                    code,
                )
                return False
            backoff = min(MAX_BACKOFF_S, 2.0**child.startup_failures)
            log.warning("worker %s exited with %s; restarting in %.0f s", child.node, code, backoff)
            child.restart_at = now + backoff
        return True

    def _stop_all(self) -> int:
        running = [c.process for c in self._children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        codes = [c.process.wait() for c in self._children if c.process is not None]
        return 0 if all(code == 0 for code in codes) else 1


def main(settings: Settings) -> int:
    """Entry point of ``sightline worker``."""
    devices = plan_devices(settings)
    log.info("launching %d worker(s) on %s", len(devices), ", ".join(devices))
    return Launcher(devices).run()
