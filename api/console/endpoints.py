"""JSON endpoints behind the Ask page's script: submit a job, then follow it as a
server-sent event stream.

Errors fall through to the app's handlers, so they are ``application/problem+json``
exactly like ``/v1``. Authentication is the console session (plus the CSRF header on
POST), not a Bearer key: the page's ``EventSource`` sends the session cookie by itself,
so no key ever appears in a URL.
"""

from __future__ import annotations

from flask import Blueprint, Response, request, url_for

from api.console.queries import find_job
from api.console.signin import current_key, signed_in_key
from api.context import services
from api.job_input import read_job_input
from api.limits import enforce_rate
from api.streams import job_event_stream
from api.submission import submit_job
from shared.errors import Unauthorized
from shared.schemas import JobOut

endpoints = Blueprint("api", __name__, url_prefix="/api")

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
    202 with the job and the console links to follow it (``links.events``)."""
    job, _ = submit_job(services(), current_key(), read_job_input(request), None)
    body: Body = JobOut.from_job(job).model_dump(mode="json")
    body["links"] = {
        "detail": url_for("console.pages.job_detail", job_id=job.id),
        "image": url_for("console.pages.job_image", job_id=job.id),
        "events": url_for("console.api.events", job_id=job.id),
    }
    return body, 202


@endpoints.get("/jobs/<job_id>/events")
def events(job_id: str) -> Response:
    """The job's server-sent events, exactly those of ``GET /v1/jobs/{id}/events``
    (:mod:`api.job_stream`; ``Last-Event-ID`` resumes, the tenant's stream cap applies).
    Another tenant's job is 404, as in the API."""
    key = current_key()
    svc = services()
    with svc.sessions() as db:
        job = find_job(db, key, job_id)
    return job_event_stream(svc, job, key)
