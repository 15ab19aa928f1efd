"""Celery tasks: thin wrappers that hand a message to the batch service.

A message wakes a run of the batch service, which settles its own job and whatever else it
claims while its batch keeps going (``worker/batching.py``); the other jobs' messages are
processed later (and then find nothing to do) or never. A run lasts while work keeps
coming, so the task sends the worker's heartbeats itself meanwhile (Celery's own event
loop sends none while a solo worker runs a task): monitors keep the worker online. A
run stopped by a shutdown leaves a wake-up for the job a worker would take next, so what
is left does not wait for the sweeper. So that monitors following task events
(Flower) show every job with its real final state as it finishes, the task sends
``task-succeeded`` / ``task-failed`` for each other job right after its commit (the task
id is the job id), and every task reports its own job's final state as its outcome,
wherever that job ran:

* succeeded → the task returns (SUCCESS);
* failed → the task raises :class:`JobFailed` (FAILURE, logged without a traceback);
* canceled → a ``task-revoked`` event (REVOKED), and the task is ignored;
* still running in another worker's batch → the task is ignored: no final event, the
  batch that settles the job sends it.

Raising or ignoring still acknowledges the message (``acks_late`` acks failures too), so
no outcome here ever makes the broker deliver a message again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.utils.saferepr import saferepr
from celery.utils.sysinfo import load_average
from celery.worker import state as worker_state
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared import lifecycle
from shared.enqueue import enqueue_job
from shared.lifecycle import Outcome
from shared.logs import log_context
from shared.models import Job, JobStatus
from shared.tasks import INFER_TASK
from worker.batching import BatchReport, BatchService

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job a message named ended ``failed``: its task's outcome is FAILURE."""

    def __init__(self, code: str | None, message: str | None) -> None:
        super().__init__(f"{code or 'failed'}: {message or ''}")


def register_tasks(app: Celery, service: BatchService, sessions: sessionmaker[Session]) -> None:
    """Register ``sightline.infer`` on ``app``, bound to this process's batch service and
    database."""

    @app.task(name=INFER_TASK, bind=True, throws=(JobFailed,))
    def infer(self: Task[Any, Any], job_id: str) -> dict[str, Any]:
        """Wake-up for ``job_id``: run the batch starting with it (or with whatever is
        queued if it already ran), then report the job's final state (see the module
        docstring). Returns or raises only after the results are committed; the message
        is acked only then (``acks_late``)."""
        try:
            wanted = uuid.UUID(job_id)
        except ValueError:
            log.error("dropping message with malformed job id %r", job_id)
            return {"job_id": job_id, "status": "malformed"}
        batch_id = uuid.uuid4().hex

        def settled(outcomes: Sequence[Outcome]) -> None:
            with log_context(batch_id=batch_id):
                _log_outcomes(outcomes)
                _announce(self, outcomes, skip=wanted)

        started = time.monotonic()
        with _heartbeats(self) as beat:
            report = service.run(wanted, on_settled=settled, on_step=beat)
        if report.outcomes:
            with log_context(batch_id=batch_id):
                _log_run(report, time.monotonic() - started)
        if report.cut_short:
            _wake_next(app, sessions)
        outcome = next((o for o in report.outcomes if o.job_id == wanted), None)
        if outcome is not None:
            return _settled(self, wanted, outcome.status, outcome.error_code, outcome.error_message)
        with sessions() as session:
            row = session.get(Job, wanted)
            if row is None:  # deleted, or never committed: nothing to report
                raise Ignore()
            return _settled(self, wanted, row.status, row.error_code, row.error_message)


# Seconds between heartbeats, as Celery's own worker sends them.
HEARTBEAT_S = 2.0


@contextmanager
def _heartbeats(task: Task[Any, Any]) -> Iterator[Callable[[], None]]:
    """A function to call often during a long run: at most every :data:`HEARTBEAT_S` it
    sends a ``worker-heartbeat`` event as Celery's worker does between tasks, so that
    monitors (Flower) keep a worker that is busy for minutes online. Best effort, and
    nothing at all when the app sends no events."""
    if not task.app.conf.worker_send_task_events:
        yield lambda: None
        return
    last = time.monotonic()
    with task.app.events.default_dispatcher(hostname=task.request.hostname) as events:

        def beat() -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < HEARTBEAT_S:
                return
            last = now
            try:
                events.send(
                    "worker-heartbeat",
                    freq=HEARTBEAT_S,
                    active=len(worker_state.active_requests),
                    processed=worker_state.all_total_count[0],
                    loadavg=load_average(),
                    **worker_state.SOFTWARE_INFO,
                )
            except Exception:
                log.warning("could not send a heartbeat", exc_info=True)

        yield beat


def _wake_next(app: Celery, sessions: sessionmaker[Session]) -> None:
    """Leave a wake-up for the job a worker would claim next (interactive first, oldest
    first), if any is queued: a run stopped by a shutdown may have left work whose own
    wake-ups another claim already consumed. A broker error is logged; the
    sweeper re-sends what is left then."""
    with sessions() as session:
        row = session.execute(
            select(Job.id, Job.priority)
            .where(Job.status == JobStatus.QUEUED)
            .order_by(*lifecycle.next_queued())
            .limit(1)
        ).first()
    if row is None:
        return
    try:
        enqueue_job(app, row.id, row.priority)
    except Exception:  # the sweeper covers a lost wake-up
        log.exception("could not leave a wake-up for job %s", row.id)


def shutting_down() -> bool:
    """Whether a warm or cold shutdown was asked for (SIGTERM, SIGQUIT…)."""
    return worker_state.should_stop is not None or worker_state.should_terminate is not None


def _settled(
    task: Task[Any, Any],
    job_id: uuid.UUID,
    status: JobStatus,
    code: str | None,
    message: str | None,
) -> dict[str, Any]:
    """The task outcome for a job in ``status``: return, raise or ignore (module docstring)."""
    if status is JobStatus.SUCCEEDED:
        return {"job_id": str(job_id), "status": status.value}
    if status is JobStatus.FAILED:
        raise JobFailed(code, message)
    if status is JobStatus.CANCELED and task.app.conf.worker_send_task_events:
        task.send_event("task-revoked", terminated=False, expired=False, signum=None)
    raise Ignore()


def _announce(task: Task[Any, Any], outcomes: Sequence[Outcome], *, skip: uuid.UUID) -> None:
    """Send the final task event of every settled job except ``skip`` (whose own task
    reports it). Best effort: a lost event costs a monitor's view, never a job."""
    others = [o for o in outcomes if o.job_id != skip]
    if not others or not task.app.conf.worker_send_task_events:
        return
    try:
        with (
            task.app.events.default_dispatcher(hostname=task.request.hostname) as events,
            events.producer.batch(),  # one pipelined round trip for all of them
        ):
            for outcome in others:
                # name and args too: a monitor that missed the task-sent event still
                # shows which task this is.
                fields: dict[str, Any] = {
                    "uuid": str(outcome.job_id),
                    "name": INFER_TASK,
                    "args": saferepr([str(outcome.job_id)]),
                    "kwargs": "{}",
                }
                if outcome.status is JobStatus.SUCCEEDED:
                    summary = {"job_id": str(outcome.job_id), "status": outcome.status.value}
                    events.send(
                        "task-succeeded",
                        result=saferepr(summary),
                        runtime=outcome.inference_ms / 1000,
                        **fields,
                    )
                else:
                    error = JobFailed(outcome.error_code, outcome.error_message)
                    events.send("task-failed", exception=saferepr(error), traceback="", **fields)
    except Exception:
        log.warning("could not send task events for %d batched jobs", len(others), exc_info=True)


def _log_outcomes(outcomes: Sequence[Outcome]) -> None:
    """One line per settled job."""
    for outcome in outcomes:
        log.info("job %s %s", outcome.job_id, outcome.status.value, extra=_job_fields(outcome))


def _log_run(report: BatchReport, elapsed_s: float) -> None:
    """One line for a run that settled jobs (nothing for an empty wake-up)."""
    failed = sum(1 for o in report.outcomes if o.status is not JobStatus.SUCCEEDED)
    log.info(
        "run of %d jobs settled in %.3f s (%d failed)",
        len(report.outcomes),
        elapsed_s,
        failed,
        extra={"jobs": len(report.outcomes), "failed": failed, "duration_s": round(elapsed_s, 3)},
    )


def _job_fields(outcome: Outcome) -> dict[str, Any]:
    return {
        "job_id": str(outcome.job_id),
        "status": outcome.status.value,
        "error_code": outcome.error_code,
        "batch_size": outcome.batch_size or None,
        "queue_ms": outcome.queue_ms,
        "inference_ms": outcome.inference_ms or None,
        "output_tokens": outcome.output_tokens,
    }
