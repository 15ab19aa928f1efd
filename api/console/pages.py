"""The console's HTML pages: sign-in, Ask, Jobs, job detail, Batches, Deliveries, Status,
and the confirmation pages of a job's or a batch's purge.

Errors raised here render a friendly page with the status code (never a traceback); the
same errors as the API (``NotFound`` for another tenant's job) give the same statuses.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    after_this_request,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from api.batch_retry import retry_failed
from api.batches import export_results, wake_after
from api.console.chart import bar_chart
from api.console.queries import (
    count_by_status,
    find_batch,
    find_endpoint,
    find_job,
    list_jobs,
)
from api.console.signin import current_key, sign_in, sign_out, signed_in_key
from api.console.status import recent_throughput
from api.context import services
from api.deliveries import (
    job_events,
    nothing_redelivered,
    redeliver_events,
    redeliver_events_between,
)
from api.endpoints import render_endpoint, tenant_endpoints
from api.listing import BATCH_STATES
from api.purging import eraser
from shared import lifecycle
from shared.batches import batch_summaries
from shared.broker import queue_depths
from shared.endpoints import enable_endpoint
from shared.errors import NotFound, SightlineError
from shared.models import Batch, EventStatus, JobStatus, WebhookEvent, utcnow
from shared.purge import Purger, purge_batch, purge_job
from shared.tasks import GPU_QUEUES
from shared.tenants import SHARE_WINDOW, shares
from shared.workers import live_workers

log = logging.getLogger(__name__)

# The Batches page shows this many, newest first; the Deliveries page as many events.
BATCHES_SHOWN = 50
EVENTS_SHOWN = 50
# The Deliveries page's redelivery choices: hours back from now.
REDELIVER_HOURS = (1, 24, 168)

pages = Blueprint("pages", __name__)

# Reachable without signing in.
_PUBLIC = frozenset({"console.pages.sign_in", "console.pages.unknown"})
# Images are stored by content hash and never change; the browser may keep them a day.
_IMAGE_MAX_AGE_S = 86_400


@pages.before_request
def require_sign_in() -> BaseResponse | None:
    """Send visitors who are not signed in (or whose key was revoked) to the sign-in page,
    remembering where they were going."""
    if request.endpoint in _PUBLIC or signed_in_key() is not None:
        return None
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("console.pages.sign_in", next=target))


@pages.route("/sign-in", methods=["GET", "POST"], endpoint="sign_in")
def sign_in_page() -> str | BaseResponse | tuple[str, int]:
    """The sign-in form; a POST verifies the key and redirects to ``next`` (a console path)
    or the Ask page. A wrong key re-renders the form with 401 and says so. Someone already
    signed in goes straight on."""
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if signed_in_key() is not None:
            return redirect(target)
        return render_template("console/sign_in.html", next=target)
    if sign_in(request.form.get("api_key", "")) is None:
        error = "That API key is unknown or revoked. Check it and try again."
        return render_template("console/sign_in.html", next=target, error=error), 401
    return redirect(target)


@pages.post("/sign-out")
def sign_out_page() -> BaseResponse:
    """End the session and go back to the sign-in page."""
    sign_out()
    flash("You are signed out.")
    return redirect(url_for("console.pages.sign_in"))


@pages.get("/")
def home() -> BaseResponse:
    return redirect(url_for("console.pages.ask"))


@pages.get("/ask")
def ask() -> str:
    """Upload an image and a prompt; ``console.js`` submits it and follows the job live."""
    settings = services().settings
    return render_template(
        "console/ask.html",
        default_max_new_tokens=settings.default_max_new_tokens,
        max_new_tokens_limit=settings.max_new_tokens_limit,
        max_prompt_chars=settings.max_prompt_chars,
    )


@pages.get("/jobs")
def jobs() -> str:
    """The signed-in key's tenant's jobs, newest first, with the model revision and policy
    version of each; filtered like ``GET /v1/jobs`` (status, action, batch, model
    revision, policy version, created after) and paged by cursor."""
    args = {name: value for name, value in request.args.items() if value}
    with services().sessions() as db:
        page = list_jobs(db, current_key(), args)
        counts = count_by_status(db, current_key())
    return render_template(
        "console/jobs.html",
        page=page,
        status=JobStatus(args["status"]) if "status" in args else None,
        action=args.get("action"),
        batch_id=args.get("batch_id"),
        model_revision=args.get("model_revision"),
        policy_version=args.get("policy_version"),
        counts=counts,
        statuses=list(JobStatus),
        first_page="cursor" not in args,
    )


@pages.get("/jobs/<job_id>")
def job_detail(job_id: str) -> str:
    """Everything about one job: image, prompt, result or error, timings, webhook events
    and their attempts, with cancel/redeliver where they apply."""
    svc = services()
    with svc.sessions() as db:
        job = find_job(db, current_key(), job_id)
    return render_template("console/job.html", job=job, events=job_events(svc, job.id))


@pages.get("/jobs/<job_id>/image")
def job_image(job_id: str) -> Response:
    """The job's image as stored (normalised PNG)."""
    svc = services()
    with svc.sessions() as db:
        job = find_job(db, current_key(), job_id)
    if job.content_deleted_at is not None:
        raise NotFound(f"job {job.id} no longer has its image (retention)")
    response = Response(svc.blobs.get(job.image_key), mimetype="image/png")
    response.headers["Cache-Control"] = f"private, max-age={_IMAGE_MAX_AGE_S}, immutable"
    return response


@pages.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> BaseResponse:
    """Cancel a queued or running job, then show it again with what happened."""
    svc = services()
    with svc.sessions() as db:
        job = find_job(db, current_key(), job_id)
    with lifecycle.unit_of_work(svc.sessions, svc.celery, svc.feed) as changes:
        canceled = lifecycle.cancel(changes, job.id)
    if canceled:
        flash("Job canceled.")
    else:
        flash("This job had already finished; nothing was canceled.", "warning")
    return redirect(url_for("console.pages.job_detail", job_id=job.id))


@pages.post("/jobs/<job_id>/redeliver")
def redeliver(job_id: str) -> BaseResponse:
    """Send the job's webhook events again now (same ``webhook-id``)."""
    svc = services()
    with svc.sessions() as db:
        job = find_job(db, current_key(), job_id)
    if redeliver_events(svc, job.id):
        flash("Webhook redelivery started; attempts appear below as they are made.")
    else:
        flash(nothing_redelivered(svc, job.id).detail, "warning")
    return redirect(url_for("console.pages.job_detail", job_id=job.id))


@pages.route("/jobs/<job_id>/purge", methods=["GET", "POST"])
def purge_job_page(job_id: str) -> str | BaseResponse:
    """GET asks for confirmation; the confirming POST erases the job (canceling it first
    if it is not final) and returns to the jobs list. See :mod:`shared.purge`."""
    svc = services()
    with svc.sessions() as db:
        job = find_job(db, current_key(), job_id)
    if request.method == "GET":
        return render_template("console/purge.html", noun="job", target=job.id, jobs=1)
    purge_job(eraser(svc), job.tenant_id, job.id, Purger(api_key_id=current_key().id))
    flash(f"Job {job.id} purged: nothing of it can be read any more.")
    return redirect(url_for("console.pages.jobs"))


@pages.route("/batches/<batch_id>/purge", methods=["GET", "POST"])
def purge_batch_page(batch_id: str) -> str | BaseResponse:
    """GET asks for confirmation; the confirming POST erases the batch and all its
    items and returns to the batches list."""
    svc = services()
    with svc.sessions() as db:
        batch = find_batch(db, current_key(), batch_id)
    if request.method == "GET":
        return render_template(
            "console/purge.html", noun="batch", target=batch.id, jobs=batch.items_accepted
        )
    erased = purge_batch(
        eraser(svc), batch.tenant_id, batch.id, Purger(api_key_id=current_key().id)
    )
    flash(f"Batch {batch.id} purged with its {erased or 0} jobs.")
    return redirect(url_for("console.pages.batches"))


@pages.get("/batches")
def batches() -> str:
    """The tenant's newest batches (``?status=open|completed``) with a progress bar, counts
    by status, the batch they retry, and a retry button where items failed."""
    status = request.args.get("status") or None
    if status not in (None, *BATCH_STATES):
        raise NotFound(f"no batch status {status!r}")
    query = select(Batch).where(Batch.tenant_id == current_key().tenant_id)
    if status is not None:
        query = query.where(Batch.completed_at.is_(None) == (status == "open"))
    with services().sessions() as db:
        rows = list(db.scalars(query.order_by(Batch.created_at.desc()).limit(BATCHES_SHOWN)))
        summaries = batch_summaries(db, rows)
    return render_template(
        "console/batches.html",
        batches=summaries,
        shown=BATCHES_SHOWN,
        status=status,
        states=BATCH_STATES,
    )


@pages.post("/batches/<batch_id>/retry")
def retry_batch(batch_id: str) -> BaseResponse:
    """Run the batch's failed items again as a new batch (as ``POST
    /v1/batches/{id}/retry``); a refusal (nothing failed, queue full) is shown, not raised."""
    svc = services()
    with svc.sessions() as db:
        batch = find_batch(db, current_key(), batch_id)
    try:
        retried = retry_failed(svc, current_key(), batch, None)
    except SightlineError as exc:
        flash(f"Nothing was retried: {exc.detail}", "warning")
        return redirect(url_for("console.pages.batches"))
    wake = [item.id for item in retried.accepted]
    after_this_request(lambda response: wake_after(response, svc, retried.id, wake))
    flash(f"Retrying {retried.items_accepted} failed items as batch {str(retried.id)[:8]}.")
    return redirect(url_for("console.pages.batches"))


@pages.get("/deliveries")
def deliveries() -> str:
    """The tenant's webhook endpoints (disabled and failing first, with an enable button),
    its newest failed and kept events, and a redelivery of the last hours."""
    tenant_id = current_key().tenant_id
    with services().sessions() as db:
        endpoints = tenant_endpoints(db, tenant_id)
        events = list(
            db.scalars(
                select(WebhookEvent)
                .where(
                    WebhookEvent.tenant_id == tenant_id,
                    WebhookEvent.status.in_([EventStatus.FAILED, EventStatus.KEPT]),
                )
                .order_by(WebhookEvent.created_at.desc(), WebhookEvent.id.desc())
                .limit(EVENTS_SHOWN)
            )
        )
    return render_template(
        "console/deliveries.html",
        endpoints=endpoints,
        events=events,
        shown=EVENTS_SHOWN,
        hours=REDELIVER_HOURS,
        disable_after=_duration(services().settings.endpoint_disable_after_s),
    )


def _duration(seconds: float) -> str:
    """``5 days``, ``6 hours`` or ``90 seconds``: the largest unit it is a whole number of."""
    for unit, size in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g} {unit}"
    return f"{seconds:g} seconds"


@pages.post("/deliveries/redeliver")
def redeliver_recent() -> BaseResponse:
    """Send the failed and kept events of the last ``hours`` again (as ``POST
    /v1/deliveries/redeliver``)."""
    hours = request.form.get("hours", "")
    if not hours.isdigit() or int(hours) not in REDELIVER_HOURS:
        raise NotFound(f"no redelivery window of {hours!r} hours")
    now = utcnow()
    since = now - timedelta(hours=int(hours))
    ids, more = redeliver_events_between(services(), current_key().tenant_id, since, now)
    if ids:
        rest = " More are left: redeliver again." if more else ""
        flash(f"Redelivering {len(ids)} webhook events.{rest}")
    else:
        flash("No failed or kept event to redeliver in that time (disabled endpoints' wait).")
    return redirect(url_for("console.pages.deliveries"))


@pages.post("/endpoints/<endpoint_id>/enable")
def enable(endpoint_id: str) -> BaseResponse:
    """Enable a disabled webhook endpoint again (as ``POST /v1/endpoints/{id}/enable``)."""
    with services().sessions() as db, db.begin():
        endpoint = find_endpoint(db, current_key(), endpoint_id)
        enable_endpoint(db, endpoint)
    with services().sessions() as db:
        kept = render_endpoint(db, endpoint).kept
    flash(f"Endpoint enabled. Redeliver to send its {kept} kept events.")
    return redirect(url_for("console.pages.deliveries"))


@pages.get("/batches/<batch_id>/results.ndjson")
def batch_results_download(batch_id: str) -> Response:
    """The batch's finished items as NDJSON (the API's export), as a file download."""
    with services().sessions() as db:
        batch = find_batch(db, current_key(), batch_id)
    response = export_results(batch)
    response.headers["Content-Disposition"] = f'attachment; filename="batch-{batch_id}.ndjson"'
    return response


@pages.get("/status")
def status() -> str:
    """Workers, queue depths, throughput and batch sizes of the last minutes."""
    svc = services()
    with svc.sessions() as db:
        throughput = recent_throughput(db, utcnow())
        workers = live_workers(svc.celery, db, utcnow())
        # Other tenants stay anonymous: their names are theirs (operators: `tenants shares`).
        tenant_shares = shares(db, utcnow() - SHARE_WINDOW)
    per_minute = bar_chart(
        [(start.strftime("%H:%M"), count) for start, count in throughput.per_minute],
        label_every=5,
    )
    # Every size from 1 to the configured maximum, so the axis reads the same each time.
    seen = dict(throughput.batch_sizes)
    largest = max([svc.settings.max_batch_size, *seen])
    sizes = bar_chart([(str(size), seen.get(size, 0)) for size in range(1, largest + 1)])
    return render_template(
        "console/status.html",
        workers=workers,
        queues=queue_depths(svc.celery, GPU_QUEUES),
        throughput=throughput,
        per_minute=per_minute,
        sizes=sizes,
        shares=tenant_shares,
        own_tenant=current_key().tenant_id,
    )


@pages.route("/<path:unknown>")
def unknown(unknown: str) -> str:
    """Any other path under ``/console`` is a friendly 404, not the API's JSON one."""
    raise NotFound(f"there is no console page at /console/{unknown}")


@pages.errorhandler(SightlineError)
def _sightline_error(exc: SightlineError) -> tuple[str, int]:
    return _error_page(exc.status, exc.title, exc.detail)


@pages.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    return _error_page(exc.code or 500, exc.name, exc.description or "")


@pages.errorhandler(DBAPIError)
def _database_error(exc: DBAPIError) -> tuple[str, int]:
    log.warning("console: database unavailable: %s", exc.__class__.__name__)
    return _error_page(503, "Service unavailable", "The database cannot be reached; retry later.")


@pages.errorhandler(Exception)
def _unexpected_error(exc: Exception) -> tuple[str, int]:
    log.exception("console: unhandled error on %s %s", request.method, request.path)
    return _error_page(500, "Something went wrong", "An internal error occurred; retry later.")


def _error_page(status: int, title: str, detail: str) -> tuple[str, int]:
    try:
        signed_in_key()  # the page header names the key; its lookup may be what failed
    except Exception:
        g.console_key = None
    return render_template("console/error.html", status=status, title=title, detail=detail), status


def _safe_next(value: str | None) -> str:
    """``value`` if it is a path inside the console (no open redirect to another site),
    else the Ask page."""
    parts = urlsplit(value or "")
    if (
        value
        and not parts.scheme
        and not parts.netloc
        and parts.path.startswith("/console/")
        and "\\" not in value
    ):
        return value
    return url_for("console.pages.ask")
