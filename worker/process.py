"""Assemble and run one worker process: one device, one model, one Celery solo worker."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from celery.signals import worker_ready
from PIL import Image

from shared.blobs import BlobStore
from shared.celery_app import create_celery
from shared.db import create_engine_for, session_factory
from shared.enqueue import enqueue_events
from shared.logs import configure_logging
from shared.models import Job
from shared.settings import Settings
from shared.tasks import GPU_QUEUES
from worker.batching import BatchService
from worker.faults import FaultInjectingBackend, crash_after_commit
from worker.metrics import InstrumentedBackend, WorkerMetrics
from worker.model.base import GenerationOptions, GenerationRequest, ModelBackend
from worker.tasks import register_tasks

log = logging.getLogger(__name__)


def torch_device(device: str) -> str:
    """The torch device for a launcher device: ``cpu`` stays, a GPU index becomes
    ``cuda`` (the launcher pins the card with ``CUDA_VISIBLE_DEVICES``)."""
    return "cpu" if device == "cpu" else "cuda"


def load_backend(settings: Settings, device: str) -> ModelBackend:
    """Load the model on ``device`` and warm it up before any real work: one pass of a
    single request, then one of a full batch (``max_batch_size``), each a few tokens. The
    first pass at a new batch shape pays for kernel selection and memory allocation (on
    CPU it ran about twice as long as the next); better here than in a caller's job."""
    from worker.model.hf import TransformersBackend

    started = time.monotonic()
    backend: ModelBackend = TransformersBackend(settings.model_path, dtype=settings.dtype)
    if settings.fault_injection:
        log.warning("fault injection is ON: [[oom]], [[crash]] and [[slow]] prompts misbehave")
        backend = FaultInjectingBackend(backend)
    backend.load(torch_device(device))
    warm = GenerationRequest(
        image=Image.new("RGB", (224, 224), (127, 127, 127)),
        prompt="warm-up",
        options=GenerationOptions(max_new_tokens=2),
    )
    backend.generate([warm])
    backend.generate([warm] * settings.max_batch_size)
    elapsed = time.monotonic() - started
    log.info(
        "model %s loaded on %s in %.1f s",
        settings.model_path,
        device,
        elapsed,
        extra={"model_path": settings.model_path, "load_s": round(elapsed, 3)},
    )
    return backend


def run_worker(
    settings: Settings, device: str, node_name: str, *, ready_fd: int | None = None
) -> int:
    """Load the model, then consume ``interactive`` before ``bulk`` until shut down.

    Uses Celery's solo pool with concurrency 1: CUDA cannot be re-initialised in a forked
    child, and one model per card is the point. Once Celery consumes, one byte is written
    to ``ready_fd`` (the launcher's readiness pipe) if given. Returns the exit code.
    """
    configure_logging(settings.log_level, "worker", worker=node_name, device=device)
    # transformers draws progress bars straight onto stderr, between the JSON lines.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    metrics = WorkerMetrics(node_name, device)
    started = time.monotonic()
    loaded = load_backend(settings, device)
    metrics.observe_load(time.monotonic() - started)
    metrics.sample_gpu_memory()
    # Wrapped after the warm-up pass, which is not work and must not count as such.
    backend = InstrumentedBackend(loaded, metrics)
    engine = create_engine_for(settings)
    app = create_celery(settings)

    def wake_sender(_jobs: Sequence[Job], events: list[str]) -> None:
        enqueue_events(app, events)

    sessions = session_factory(engine)
    service = BatchService(
        settings=settings,
        sessions=sessions,
        blobs=BlobStore(settings.blob_url),
        backend=backend,
        worker_name=node_name,
        after_commit=crash_after_commit(wake_sender) if settings.fault_injection else wake_sender,
    )
    register_tasks(app, service, metrics, sessions, settings.worker_drain_s)
    if ready_fd is not None:

        def report_ready(**_: object) -> None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

        worker_ready.connect(report_ready, weak=False)
    worker = app.Worker(
        hostname=node_name,
        pool="solo",
        concurrency=1,
        queues=list(GPU_QUEUES),
        loglevel=settings.log_level,
        without_mingle=True,
        without_gossip=True,
        # No banner on stdout: every line a worker writes is a JSON log line.
        quiet=True,
    )
    worker.start()
    engine.dispose()
    return int(worker.exitcode or 0)
