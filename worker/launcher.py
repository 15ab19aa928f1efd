"""``sightline worker``: one worker process per device, kept alive.

Each child runs ``python -m worker.child`` with ``CUDA_VISIBLE_DEVICES`` pinned to its
card (or empty, for ``cpu``) and the node name ``gpu<i>@host`` / ``cpu<n>@host``. A child
reports through a pipe when its model is loaded and Celery is consuming. A child that dies
after that (a crash mid-batch) may have died holding claims: the launcher frees them at once
(``on_child_lost``: :func:`worker.predecessor.free_predecessor_jobs`), so the other workers
take them again within seconds instead of after the new child's imports and model load,
and restarts it a second later. One that dies before it ever got ready (a checkpoint that
does not load, say) is restarted with a growing backoff, and after
``MAX_STARTUP_FAILURES`` such deaths in a row the launcher stops everything and exits 1
instead of looping. Readiness, not time, tells the two apart: a job that kills its worker
right after start-up must not make the launcher give up on a healthy card.
A configuration that cannot work (no such model path, a malformed device list) is
refused before any child starts, with exit status 2. SIGTERM and SIGINT are forwarded as
SIGTERM, a Celery warm shutdown: every child finishes its batch first.

Metrics: the children write Prometheus values into a directory private to this launcher
(prometheus_client's multiprocess mode), and the launcher serves their sum, with its own
``sightline_worker_up`` and ``sightline_worker_restarts_total``, on
``SIGHTLINE_WORKER_METRICS_HOST`` (loopback by default) and ``SIGHTLINE_WORKER_METRICS_PORT``
(see :mod:`worker.metrics`).

The launcher itself never imports torch or touches CUDA: a process that initialised CUDA
cannot hand a card to a child, and it would hold memory on every card for nothing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import mark_process_dead

from shared.logs import configure_logging
from shared.settings import Settings
from shared.workers import node_names

log = logging.getLogger(__name__)

MAX_STARTUP_FAILURES = 3
MAX_BACKOFF_S = 30.0
# How often the launcher looks at its children (seconds).
POLL_S = 0.5

EXIT_GAVE_UP = 1
EXIT_REFUSED = 2

# What CUDA_VISIBLE_DEVICES accepts: an index, or a GPU/MIG UUID as nvidia-smi -L shows it.
_GPU_ID = re.compile(r"\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+")
# prctl(2) option: a signal the kernel sends the child when its parent dies.
_PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    """The workers cannot start as configured; the message says what to fix.

    It stands apart from :class:`shared.errors.SightlineError`: it is the launcher's
    refusal to start (logged, then exit status :data:`EXIT_REFUSED`), seen by an operator
    on the command line, never by an API client or in a job's ``error.code``.
    """


def plan_devices(settings: Settings) -> list[str]:
    """The devices to run on, one child each.

    ``SIGHTLINE_DEVICES`` if set (``0,2``, ``cpu``, ``cpu,cpu``; GPU UUIDs work too);
    else the GPUs this process may use: those in an inherited ``CUDA_VISIBLE_DEVICES``
    (a scheduler's or container's allotment; empty means none), or every GPU
    ``nvidia-smi -L`` lists; else one ``cpu`` worker. GPU indices count in
    ``nvidia-smi`` (PCI bus) order. Raises :class:`LaunchError` for an entry that is
    neither ``cpu`` nor a GPU id, or for a GPU listed twice.
    """
    if settings.devices.strip():
        devices = [d.strip() for d in settings.devices.split(",") if d.strip()]
        bad = [d for d in devices if d != "cpu" and not _GPU_ID.fullmatch(d)]
        if bad:
            raise LaunchError(
                f"SIGHTLINE_DEVICES={settings.devices!r}: {', '.join(map(repr, bad))} is "
                "neither 'cpu' nor a GPU index/UUID (expected e.g. '0,1', 'cpu', 'cpu,cpu')"
            )
    else:
        devices = _visible_gpus() or ["cpu"]
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise LaunchError(f"devices {','.join(devices)!r} list a GPU twice; one worker per GPU")
    return devices


def _visible_gpus() -> list[str]:
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if inherited is not None:
        # CUDA ignores everything from the first invalid entry on ("-1" hides all cards).
        usable: list[str] = []
        for entry in (e.strip() for e in inherited.split(",")):
            if not _GPU_ID.fullmatch(entry):
                break
            usable.append(entry)
        return usable
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


def check_model(model_path: str) -> None:
    """Refuse, before any child starts, a checkpoint that cannot possibly load.

    A local path must be a directory holding a ``config.json`` that parses as a JSON
    object (the rules of :class:`~worker.model.hf.TransformersBackend`); a hub id is left
    to the children. Whether the checkpoint really is an image-text-to-text model is only
    known once transformers reads it, in a child: one that fails there dies at start-up
    and the launcher gives up. Raises :class:`LaunchError`; imports no torch.
    """
    # hf imports torch only inside load(); its path rules are the ones children apply.
    from worker.model.hf import ModelLoadError, _resolve_source

    hint = (
        "set SIGHTLINE_MODEL_PATH to a checkpoint directory "
        "(`sightline model build-tiny PATH` builds a small one)"
    )
    try:
        source, local = _resolve_source(model_path)
    except ModelLoadError as exc:
        raise LaunchError(f"{exc}; {hint}") from exc
    if not local:
        return
    config = Path(source) / "config.json"
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LaunchError(f"{config} is not a readable JSON checkpoint config: {exc}") from exc
    if not isinstance(parsed, dict):
        raise LaunchError(f"{config} is not a checkpoint config (expected a JSON object)")


@dataclass
class _Child:
    device: str
    node: str
    process: subprocess.Popen[bytes] | None = None
    ready_pipe: int | None = None
    ready: bool = False
    startup_failures: int = 0
    restart_at: float | None = None
    restarts: int = 0
    freeing: threading.Thread | None = None  # on_child_lost for its dead predecessor


class Launcher:
    """Starts, watches, restarts and stops one worker child per device."""

    def __init__(
        self,
        devices: list[str],
        metrics_port: int = 0,
        metrics_host: str = "127.0.0.1",
        on_child_lost: Callable[[str], object] = lambda node: None,
    ) -> None:
        """``on_child_lost(node)`` runs, in a thread of its own, when a child that had got
        ready dies; the child's successor starts only once it has returned, so nothing
        claimed under ``node`` is then the successor's."""
        self._children = [
            _Child(device=d, node=n)
            for d, n in zip(devices, node_names(devices, socket.gethostname()), strict=True)
        ]
        self._stopping = threading.Event()
        self._metrics_port = metrics_port
        self._metrics_host = metrics_host
        self._on_child_lost = on_child_lost
        self._metrics_dir = Path()  # made by run(): one per run, removed when it ends

    def run(self) -> int:
        """Run until SIGTERM/SIGINT, then stop the children and return 0 if each exited
        cleanly (status 0, or killed by that SIGTERM before Celery was listening), else 1.
        Returns 1 at once, after stopping the others, when a child has failed at start-up
        ``MAX_STARTUP_FAILURES`` times in a row."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # Fresh for every launcher: files left by an earlier run would be summed in.
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="sightline-worker-metrics-"))
        stop_serving = self._serve_metrics()
        try:
            for child in self._children:
                self._start(child)
            while not self._stopping.is_set():
                if not self._watch():
                    self._stop_all()
                    return EXIT_GAVE_UP
                self._stopping.wait(POLL_S)
            return self._stop_all()
        finally:
            stop_serving()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _serve_metrics(self) -> Callable[[], None]:
        """Start the metrics endpoint; returns its stop function. A port that cannot be
        bound is logged and skipped: metrics must never keep the workers from running."""
        if not self._metrics_port:
            return lambda: None
        from worker.metrics import serve

        try:
            stop = serve(
                self._metrics_host, self._metrics_port, self._metrics_dir, _LauncherCollector(self)
            )
        except OSError as exc:
            log.error(
                "worker metrics not served on %s:%d: %s",
                self._metrics_host,
                self._metrics_port,
                exc,
            )
            return lambda: None
        log.info("serving worker metrics on %s:%d/metrics", self._metrics_host, self._metrics_port)
        return stop

    def children(self) -> list[tuple[str, str, bool, int]]:
        """``(node, device, running and ready, restarts)`` per child, for the metrics."""
        return [
            (
                c.node,
                c.device,
                c.ready and c.process is not None and c.process.poll() is None,
                c.restarts,
            )
            for c in self._children
        ]

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
        # CUDA numbers cards fastest-first by default, nvidia-smi (and operators) by PCI
        # bus; without this "gpu1" could be a different card than nvidia-smi's GPU 1.
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self._metrics_dir)
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        command = [
            sys.executable,
            "-m",
            "worker.child",
            "--device",
            child.device,
            "--node",
            child.node,
            "--ready-fd",
            str(write_end),
        ]
        child.process = subprocess.Popen(
            command,
            env=env,
            pass_fds=(write_end,),
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        os.close(write_end)
        self._close_pipe(child)
        if child.restart_at is not None:
            child.restarts += 1
        child.ready_pipe = read_end
        child.ready = False
        child.restart_at = None
        log.info(
            "started worker %s (pid %d) owning device %s (CUDA_VISIBLE_DEVICES=%r)",
            child.node,
            child.process.pid,
            child.device,
            env["CUDA_VISIBLE_DEVICES"],
        )

    def _watch(self) -> bool:
        """Schedule or perform restarts; False when a child failed at start-up too often.

        Backoff: 1 s after a child that had got ready, else 2, 4, … s per consecutive
        start-up failure (at most ``MAX_BACKOFF_S``).
        """
        now = time.monotonic()
        for child in self._children:
            if child.restart_at is not None:
                freeing = child.freeing is not None and child.freeing.is_alive()
                if now >= child.restart_at and not freeing:
                    child.freeing = None
                    self._start(child)
                continue
            assert child.process is not None
            self._note_ready(child)
            code = child.process.poll()
            if code is None:
                continue
            self._note_ready(child)  # it may have got ready just before dying
            # Its live gauges (GPU memory, load time) must not outlive it in the sums.
            mark_process_dead(child.process.pid, str(self._metrics_dir))
            if child.ready:
                child.startup_failures = 0
                # It may have died holding claims: free them now, not when its successor
                # has started (seconds of imports) or loaded its model.
                child.freeing = threading.Thread(
                    target=self._on_child_lost, args=(child.node,), daemon=True
                )
                child.freeing.start()
            else:
                child.startup_failures += 1
            if child.startup_failures >= MAX_STARTUP_FAILURES:
                log.error(
                    "worker %s on device %s died %d times at start-up (last exit status %s); "
                    "giving up, see its output above",
                    child.node,
                    child.device,
                    child.startup_failures,
                    code,
                )
                return False
            backoff = min(MAX_BACKOFF_S, 2.0**child.startup_failures)
            log.warning(
                "worker %s (pid %d) exited with status %s; restarting in %.0f s",
                child.node,
                child.process.pid,
                code,
                backoff,
            )
            child.restart_at = now + backoff
        return True

    def _note_ready(self, child: _Child) -> None:
        if child.ready or child.ready_pipe is None:
            return
        try:
            signalled = os.read(child.ready_pipe, 1)
        except BlockingIOError:
            return
        if signalled:
            child.ready = True
            child.startup_failures = 0
            log.info("worker %s on device %s is ready", child.node, child.device)

    @staticmethod
    def _close_pipe(child: _Child) -> None:
        if child.ready_pipe is not None:
            os.close(child.ready_pipe)
            child.ready_pipe = None

    def _stop_all(self) -> int:
        """SIGTERM every running child and wait for it; children already dead (waiting
        for a restart) were reported when they died and do not count here."""
        running = [c for c in self._children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            log.info("stopping worker %s (pid %d)", child.node, child.process.pid)
            child.process.send_signal(signal.SIGTERM)
        clean = True
        for child in running:
            assert child.process is not None
            code = child.process.wait()
            # -SIGTERM: the child was still loading the model, before Celery installed its
            # handler; stopping it was the point.
            if code not in (0, -signal.SIGTERM):
                log.error("worker %s exited with status %s while stopping", child.node, code)
                clean = False
        for child in self._children:
            self._close_pipe(child)
        return 0 if clean else 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. A launcher killed outright (OOM killer,
    # SIGKILL) must not leave workers behind holding GPU memory that a restarted
    # launcher's workers would then need: the kernel sends them SIGTERM instead.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def main(settings: Settings) -> int:
    """Entry point of ``sightline worker``: 0 after a requested stop, 1 when a child kept
    failing at start-up, 2 when the configuration was refused before starting."""
    configure_logging(settings.log_level, "launcher")
    try:
        devices = plan_devices(settings)
        check_model(settings.model_path)
    except LaunchError as exc:
        log.error("refusing to start workers: %s", exc)
        return EXIT_REFUSED
    log.info(
        "launching %d worker(s) on device(s) %s with model %s",
        len(devices),
        ", ".join(devices),
        settings.model_path,
    )
    from worker.predecessor import free_predecessor_jobs

    return Launcher(
        devices,
        settings.worker_metrics_port,
        settings.worker_metrics_host,
        on_child_lost=lambda node: free_predecessor_jobs(settings, node),
    ).run()


class _LauncherCollector:
    """The launcher's own series, computed from its children at scrape time."""

    def __init__(self, launcher: Launcher) -> None:
        self._launcher = launcher

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "sightline_worker_up",
            "1 while the worker child runs and has reported ready (model loaded, consuming).",
            labels=["worker", "device"],
        )
        restarts = CounterMetricFamily(
            "sightline_worker_restarts",
            "Times the launcher restarted a worker child after it died.",
            labels=["worker", "device"],
        )
        for node, device, ready, count in self._launcher.children():
            up.add_metric([node, device], 1.0 if ready else 0.0)
            restarts.add_metric([node, device], count)
        yield up
        yield restarts
