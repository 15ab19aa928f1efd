"""Assemble and run one worker process: one device, one model, one Celery solo worker."""

from __future__ import annotations

import gc
import logging
import os
import time
import uuid
from collections.abc import Sequence

import redis
from celery.signals import worker_ready
from PIL import Image

from shared.blobs import BlobStore
from shared.celery_app import create_celery
from shared.db import session_factory, worker_engine
from shared.enqueue import enqueue_events, enqueue_job
from shared.job_feed import JobFeed
from shared.logs import configure_logging
from shared.models import Job
from shared.settings import Settings
from shared.tasks import GPU_QUEUES
from worker.batching import BatchService
from worker.faults import FaultInjectingEngine, crash_after_commit
from worker.job_notices import JobNotices
from worker.metrics import WorkerMetrics
from worker.model.base import GenerationOptions, GenerationRequest, ModelBackend
from worker.model.engine import Engine, EngineLimits
from worker.queue_hint import QueueHint
from worker.step_events import StepPublisher
from worker.tasks import register_tasks, shutting_down

log = logging.getLogger(__name__)


def torch_device(device: str) -> str:
    """The torch device for a launcher device: ``cpu`` stays, a GPU index becomes
    ``cuda`` (the launcher pins the card with ``CUDA_VISIBLE_DEVICES``)."""
    return "cpu" if device == "cpu" else "cuda"


def engine_limits(settings: Settings) -> EngineLimits:
    """The engine's limits: every row a batch may hold (``max_batch_size`` plus the
    interactive headroom) within ``max_batch_tokens``, and a ``prefill_group`` of bulk
    jobs (never more than ``max_batch_size``) prefilled ahead of the rows they will
    take."""
    return EngineLimits(
        max_rows=settings.max_batch_size + settings.interactive_headroom,
        max_tokens=settings.max_batch_tokens,
        ahead_rows=settings.prefill_rows,
        ahead_seats=settings.max_batch_size,
    )


def load_backend(settings: Settings, device: str) -> tuple[ModelBackend, Engine]:
    """Load the model on ``device``, start its engine and warm it up before any real work:
    one request alone, then the rest of a full batch (``max_batch_size``) joining it, a few tokens
    each. The first passes at new shapes pay for kernel selection and memory allocation
    (on CPU about twice as long as the next); better here than in a caller's job."""
    from worker.model.hf import TransformersBackend

    started = time.monotonic()
    backend = TransformersBackend(settings.model_path, dtype=settings.dtype)
    backend.load(torch_device(device))
    engine: Engine = backend.start_engine(engine_limits(settings))
    warm = GenerationRequest(
        image=Image.new("RGB", (224, 224), (127, 127, 127)),
        prompt="warm-up",
        options=GenerationOptions(max_new_tokens=3),
    )
    engine.add(uuid.uuid4(), warm)
    engine.step()
    for _ in range(settings.max_batch_size - 1):
        engine.add(uuid.uuid4(), warm)
    while engine.running:
        engine.step()
    if settings.fault_injection:
        log.warning("fault injection is ON: [[oom]], [[crash]] and [[slow]] prompts misbehave")
        engine = FaultInjectingEngine(engine)
    elapsed = time.monotonic() - started
    log.info(
        "model %s loaded on %s in %.1f s",
        settings.model_path,
        device,
        elapsed,
        extra={"model_path": settings.model_path, "load_s": round(elapsed, 3)},
    )
    return backend, engine


def freeze_heap() -> int:
    """Put every object alive now (the model, the libraries, Celery, SQLAlchemy: about
    half a million on the CPU checkpoints) out of the garbage collector's reach; returns
    how many. Without it each full collection walks all of them, a pause of about a
    quarter of a second on the stepping thread on the 2-core CPU machine, during which
    every running row (an interactive answer too) waits; after it, a full collection
    walks only what was made since."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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
    backend, model_engine = load_backend(settings, device)
    metrics.observe_load(time.monotonic() - started)
    metrics.sample_gpu_memory()
    database = worker_engine(settings)
    app = create_celery(settings)

    def wake_sender(_jobs: Sequence[Job], events: list[str]) -> None:
        enqueue_events(app, events)

    def requeue(jobs: Sequence[Job]) -> None:
        # The jobs are queued again already: a lost wake-up only waits for the sweeper.
        for job in jobs:
            try:
                enqueue_job(app, job.id, job.priority)
            except Exception:
                log.exception("job %s handed back but no wake-up left; the sweeper will", job.id)
                return

    broker = redis.Redis.from_url(settings.broker_url, socket_timeout=2)

    sessions = session_factory(database)
    service = BatchService(
        settings=settings,
        sessions=sessions,
        blobs=BlobStore(settings.blob_url),
        engine=model_engine,
        model_revision=backend.model_revision,
        worker_name=node_name,
        metrics=metrics,
        publisher=StepPublisher(
            broker,
            interval_s=settings.stream_interval_s,
            messages_per_s=settings.stream_messages_per_s,
        ),
        feed=JobFeed(broker),
        notices=JobNotices(broker),
        after_commit=crash_after_commit(wake_sender) if settings.fault_injection else wake_sender,
        requeue=requeue,
        stopping=shutting_down,
        queued=QueueHint(broker),
    )
    register_tasks(app, service, sessions)
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
    metrics.observe_heap_frozen(freeze_heap())
    worker.start()
    database.dispose()
    return int(worker.exitcode or 0)
