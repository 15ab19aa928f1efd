"""Prometheus metrics of the GPU workers, safe across the launcher's child processes.

Each child records into its own :class:`WorkerMetrics`. Under ``sightline worker`` the
launcher gives its children a fresh ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode: every process writes its values to memory-mapped files there) and
serves the sum over all of them, including children that died and were restarted, on
``SIGHTLINE_WORKER_METRICS_HOST``:``SIGHTLINE_WORKER_METRICS_PORT`` (see :func:`serve`;
loopback unless set otherwise, since the page names the machine's workers and devices).
A child started by hand without that directory keeps its values in process memory,
unserved.

Every series carries the Celery node name as ``worker`` (``gpu0@host``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from shared.lifecycle import Outcome

log = logging.getLogger(__name__)

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerMetrics:
    """The metrics of one worker process (one device, one Celery node).

    Counters and histograms are summed over processes by the launcher; gauges use
    ``livemostrecent``, so a dead child's values vanish once the launcher marks it dead.
    """

    def __init__(self, worker: str, device: str) -> None:
        self.worker = worker
        self.device = device
        # Private registry: in multiprocess mode the values live in files the launcher
        # reads; registering them in the global registry too would only duplicate them.
        registry = CollectorRegistry()
        self.jobs_finished = Counter(
            "sightline_worker_jobs_finished",
            "Jobs a worker settled, by final status and error code ('' when succeeded).",
            ["worker", "status", "code"],
            registry=registry,
        )
        self.running_rows = Histogram(
            "sightline_worker_running_rows",
            "Rows in the batch per decoding step (count: steps run).",
            ["worker"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.prefill_rows = Histogram(
            "sightline_worker_prefill_rows",
            "Requests prefilled together in one step's prefill (count: steps that "
            "prefilled; bulk jobs join in groups of SIGHTLINE_PREFILL_GROUP).",
            ["worker"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.step = Histogram(
            "sightline_worker_step_seconds",
            "Duration of one decoding step (joining rows' prefill included); outcome is "
            "ok or error.",
            ["worker", "outcome"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "sightline_worker_queue_wait_seconds",
            "Time from a job's submission to its claim by a worker.",
            ["worker"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "sightline_worker_time_to_first_token_seconds",
            "Time from a job's claim to its first generated token.",
            ["worker"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "sightline_worker_tokens_generated",
            "New tokens the model generated (reasoning included).",
            ["worker"],
            registry=registry,
        )
        self.claims = Counter(
            "sightline_worker_claims",
            "Claims the worker ran, by whether they found jobs (found: yes or no). Claims "
            "that find nothing cost a database round trip each; a running batch makes "
            "them only when a job may be waiting (worker.queue_hint).",
            ["worker", "found"],
            registry=registry,
        )
        self.model_load = Gauge(
            "sightline_worker_model_load_seconds",
            "How long loading the model and its warm-up pass took at start-up.",
            ["worker", "device"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.heap_frozen = Gauge(
            "sightline_worker_heap_frozen_objects",
            "Objects put out of the garbage collector's reach once the worker was ready "
            "(worker.process.freeze_heap): full collections no longer walk them.",
            ["worker", "device"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.gpu_memory = Gauge(
            "sightline_worker_gpu_memory_bytes",
            "CUDA memory held by the worker after its last forward pass (kind: "
            "allocated by tensors, reserved by the caching allocator, peak allocated).",
            ["worker", "device", "kind"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )

    def observe_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record settled jobs: each one's final status and queue wait."""
        for outcome in outcomes:
            self.jobs_finished.labels(
                self.worker, outcome.status.value, outcome.error_code or ""
            ).inc()
            if outcome.queue_ms is not None:
                self.queue_wait.labels(self.worker).observe(outcome.queue_ms / 1000)

    def observe_claim(self, *, found: bool) -> None:
        """Record one claim, and whether it found jobs."""
        self.claims.labels(self.worker, "yes" if found else "no").inc()

    def observe_step(
        self, rows: int, seconds: float, tokens: int | None, prefilled: int = 0
    ) -> None:
        """Record one decoding step over ``rows`` rows that prefilled ``prefilled``
        requests; ``tokens`` generated, ``None`` if the step raised."""
        self.running_rows.labels(self.worker).observe(rows)
        if prefilled:
            self.prefill_rows.labels(self.worker).observe(prefilled)
        self.step.labels(self.worker, "error" if tokens is None else "ok").observe(seconds)
        if tokens:
            self.tokens.labels(self.worker).inc(tokens)

    def observe_first_token(self, seconds: float) -> None:
        self.first_token.labels(self.worker).observe(seconds)

    def observe_load(self, seconds: float) -> None:
        self.model_load.labels(self.worker, self.device).set(seconds)

    def observe_heap_frozen(self, objects: int) -> None:
        self.heap_frozen.labels(self.worker, self.device).set(objects)

    def sample_gpu_memory(self) -> None:
        """Read torch's CUDA memory counters for this process's card; nothing on CPU."""
        if self.device == "cpu":
            return
        import torch  # the worker has it loaded already; the launcher must never import it

        if not torch.cuda.is_available():
            return
        for kind, value in (
            ("allocated", torch.cuda.memory_allocated()),
            ("reserved", torch.cuda.memory_reserved()),
            ("peak_allocated", torch.cuda.max_memory_allocated()),
        ):
            self.gpu_memory.labels(self.worker, self.device, kind).set(value)


def serve(host: str, port: int, directory: Path, *extra: Collector) -> Callable[[], None]:
    """Serve the sum of every process's metrics in ``directory``, plus the ``extra``
    collectors (the launcher's own), on ``host:port`` at ``/metrics`` from a daemon
    thread. Returns a function that stops the server. Raises ``OSError`` if the address
    cannot be bound."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    for collector in extra:
        registry.register(collector)
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return stop
