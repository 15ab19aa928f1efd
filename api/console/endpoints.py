"""JSON endpoints behind the Ask page's script: submit a job, follow it by long-polling.

Errors fall through to the app's handlers, so they are ``application/problem+json``
exactly like ``/v1``. Authentication is the console session (plus the CSRF header on
POST), not a Bearer key.
"""

from __future__ import annotations

import time

from flask import Blueprint, request, url_for

from api.console.queries import find_job
from api.console.signin import current_key, signed_in_key
from api.context import services
from api.job_input import read_job_input
from api.limits import enforce_rate
from api.submission import submit_job
from shared.errors import Unauthorized
from shared.models import Job
from shared.schemas import JobOut

endpoints = Blueprint("api", __name__, url_prefix="/api")

# A long-poll holds one gunicorn worker while it waits, so it is kept short; the script
# simply asks again. The database is read every POLL_S while waiting.
LONG_POLL_S = 5.0
POLL_S = 0.2

Body = dict[str, object]


@endpoints.before_request
def require_session() -> None:
    """401 problem+json unless the console session is signed in with an active key; then
    the key's request rate is counted exactly as on ``/v1`` (429 past it), so the console
    is no way around the limit."""
    key = signed_in_key()
    if key is None:
        raise Unauthorized("sign in to the console first")
    svc = services()
    enforce_rate(svc, svc.counters, key)


@endpoints.post("/jobs")
def submit() -> tuple[Body, int]:
    """Accept the Ask form (multipart: ``image``, ``prompt``, optional ``max_new_tokens``)
    for the signed-in key, with the same validation and errors as ``POST /v1/jobs``;
    202 with the job and the console links to follow it."""
    job, _ = submit_job(services(), current_key(), read_job_input(request), None)
    return _render(job), 202


@endpoints.get("/jobs/<job_id>")
def watch(job_id: str) -> Body:
    """The job, as soon as its status differs from ``?seen=<status>`` or it is final, or
    after :data:`LONG_POLL_S` seconds at most (then unchanged; ask again). Without
    ``seen`` it answers at once. Another tenant's job is 404, as in the API."""
    seen = request.args.get("seen")
    deadline = time.monotonic() + LONG_POLL_S
    svc = services()
    while True:
        with svc.sessions() as db:
            job = find_job(db, current_key(), job_id)
        if seen != job.status.value or job.status.is_final or time.monotonic() >= deadline:
            return _render(job)
        time.sleep(POLL_S)


def _render(job: Job) -> Body:
    body: Body = JobOut.from_job(job).model_dump(mode="json")
    body["final"] = job.status.is_final
    body["links"] = {
        "detail": url_for("console.pages.job_detail", job_id=job.id),
        "image": url_for("console.pages.job_image", job_id=job.id),
        "watch": url_for("console.api.watch", job_id=job.id),
    }
    return body
