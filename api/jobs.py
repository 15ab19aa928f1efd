"""``/v1/jobs``: submit a job, read it back, cancel or purge it."""

from __future__ import annotations

import time

from flask import Blueprint, request, url_for

from api.access import load_job
from api.auth import authenticate, current_key
from api.context import services
from api.job_input import read_job_input
from api.listing import JobFilter, encode_cursor
from api.purging import by_caller, eraser, purge_requested
from api.submission import submit_job
from api.wait_limits import wait_limits
from shared import lifecycle
from shared.error_codes import ErrorCode
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.job_feed import job_channel
from shared.models import Job
from shared.purge import purge_job
from shared.schemas import JobOut, Purged

MAX_WAIT_S = 60

jobs = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
jobs.before_request(authenticate)

Body = dict[str, object]


@jobs.post("")
def create_job() -> tuple[Body, int, dict[str, str]]:
    """202 with the new job; 200 with the original one for a repeated Idempotency-Key."""
    job, created = submit_job(
        services(),
        current_key(),
        read_job_input(request),
        request.headers.get("Idempotency-Key"),
    )
    location = url_for("jobs.get_job", job_id=job.id)
    return _render(job), 202 if created else 200, {"Location": location}


@jobs.get("")
def list_jobs() -> Body:
    """The jobs of the caller's tenant, newest first: ``?status=&action=&batch_id=
    &model_revision=&policy_version=&created_after=&limit=&cursor=``. ``next_cursor`` is
    null on the last page."""
    wanted = JobFilter.parse(request.args.to_dict())
    with services().sessions() as session:
        rows = list(session.scalars(wanted.query(current_key().tenant_id)))
    page, more = rows[: wanted.limit], len(rows) > wanted.limit
    return {
        "jobs": [_render(job) for job in page],
        "next_cursor": encode_cursor(page[-1]) if more else None,
    }


@jobs.get("/<job_id>")
def get_job(job_id: str) -> Body:
    """The job as the caller may see it; 404 for an unknown id or another caller's job.

    ``?wait=N`` (seconds, at most 60) long-polls: the answer comes as soon as the job is
    final, or after N seconds with its state then. The wait sleeps until the job feed
    says the job moved (:mod:`api.feed_listener`; the database is read again then, and
    now and then in case a notice was lost), holding no thread. Waits are capped
    per process and per tenant (:mod:`api.wait_limits`): over a cap, the answer comes at
    once with the job's current state.
    """
    job = load_job(job_id)
    wait_s = _wait_seconds(request.args.get("wait"))
    if wait_s == 0 or job.status.is_final:
        return _render(job)
    svc = services()
    with wait_limits(MAX_WAIT_S).turn(current_key().tenant_id) as granted:
        if granted:
            with svc.listener.subscribe(job_channel(job.id)) as inbox:
                deadline = time.monotonic() + wait_s
                job = load_job(job_id)
                while not job.status.is_final and (left := deadline - time.monotonic()) > 0:
                    message = inbox.get(min(left, inbox.recheck_s))
                    if message is None or message.changed:  # moved, or recheck
                        job = load_job(job_id)
    return _render(job)


def _wait_seconds(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        wait_s = float(raw)
    except ValueError as exc:
        raise ValidationFailed(
            "wait must be a number of seconds", code=ErrorCode.INVALID_QUERY
        ) from exc
    if not 0 <= wait_s <= MAX_WAIT_S:
        raise ValidationFailed(
            f"wait must be from 0 to {MAX_WAIT_S} seconds", code=ErrorCode.INVALID_QUERY
        )
    return wait_s


@jobs.delete("/<job_id>")
def delete_job(job_id: str) -> Body:
    """Cancel a queued or running job (200 with the job); 409 if it already finished.
    With ``?purge=true``, erase the job whatever its state, canceling it first if it
    is not final (200 with :class:`Purged`; the id answers 404 from then on)."""
    purge = purge_requested()
    job = load_job(job_id)
    svc = services()
    if purge:
        if not purge_job(eraser(svc), job.tenant_id, job.id, by_caller()):
            raise NotFound(f"no job {job_id}")  # a concurrent purge came first
        return Purged(id=job.id, object="job", jobs=1).model_dump(mode="json")
    with lifecycle.unit_of_work(svc.sessions, svc.celery, svc.feed) as changes:
        canceled = lifecycle.cancel(changes, job.id)
    job = load_job(job_id)
    if not canceled:
        raise Conflict(
            f"job {job.id} already {job.status.value}; only queued or running jobs can be canceled",
            code=ErrorCode.JOB_FINISHED,
        )
    return _render(job)


def _render(job: Job) -> Body:
    return JobOut.from_job(job).model_dump(mode="json")
