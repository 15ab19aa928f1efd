"""``/v1/batches``: bulk submission, progress, streamed results, cancellation.

Partial acceptance: every item is validated like a single job; valid items become jobs
(``bulk`` priority), invalid ones are reported with their index and a problem (``code``,
``detail``) and create nothing. The answer lists both, so a pipeline knows exactly which
items were taken. Only when no item is valid is the request refused (422). Items with an
``idempotency_key`` already used by this API key are reported as accepted with the
existing job's id (``"existing": true``), so a pipeline can resubmit after a failure.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from flask import (
    Blueprint,
    Response,
    after_this_request,
    request,
    stream_with_context,
    url_for,
)
from pydantic import ValidationError
from sqlalchemy import select, update

from api.access import load_owned
from api.auth import authenticate, current_key
from api.context import Services, services
from api.gc_paused import gc_paused
from api.job_insert import insert_jobs
from api.limits import enforce_queue_cap
from api.submission import JobRow, build_job_row
from shared.batches import batch_summary
from shared.enqueue import enqueue_events, enqueue_wakeups
from shared.errors import (
    BadRequest,
    SightlineError,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.fetch import fetch_image
from shared.models import ApiKey, Batch, Job, JobStatus, Priority, utcnow
from shared.schemas import BatchItem, BatchRequest
from shared.webhooks import record_events

log = logging.getLogger(__name__)

batches = Blueprint("batches", __name__, url_prefix="/v1/batches")
batches.before_request(authenticate)

# Idempotency keys looked up per query.
LOOKUP_CHUNK = 2000
Body = dict[str, Any]


@batches.post("")
def create_batch() -> tuple[Body, int, dict[str, str]]:
    """Accept a batch: JSON ``{"items": [...], "callback_url"}`` or NDJSON (one item per
    line; ``?callback_url=``). 202 with accepted and rejected items by index."""
    svc = services()
    request.max_content_length = svc.settings.max_batch_body_bytes
    raw_items, callback_url = _read_items(svc)
    if callback_url is not None:
        svc.outbound.check(callback_url, field="callback_url")
    key = current_key()
    with gc_paused():
        parsed = [_parse(svc, raw) for raw in raw_items]
        images = _fetch_images(svc, parsed)
        built = [
            _build(svc, key, index, item, images.get(index)) for index, item in enumerate(parsed)
        ]
    rejected = [
        {"index": i, "code": outcome.code, "detail": outcome.detail}
        for i, outcome in enumerate(built)
        if isinstance(outcome, SightlineError)
    ]
    jobs = [(i, row) for i, row in enumerate(built) if not isinstance(row, SightlineError)]
    existing = _existing(svc, key, jobs)
    new_jobs = [row for _, row in jobs if row["idempotency_key"] not in existing]
    if not jobs:
        raise ValidationFailed(
            f"none of the {len(raw_items)} items is valid",
            code="no_valid_items",
            rejected=rejected[:100],
        )
    batch = Batch(
        id=uuid.uuid4(),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        created_at=utcnow(),
        items_submitted=len(raw_items),
        items_accepted=len(jobs),
        callback_url=callback_url,
    )
    for row in new_jobs:
        row["batch_id"] = batch.id
    enforce_queue_cap(svc, key, adding=len(new_jobs))
    svc.blobs.sync()
    with svc.sessions() as session, session.begin():
        session.add(batch)
        session.flush()
        insert_jobs(session, new_jobs)
    wake = [row["id"] for row in new_jobs]
    after_this_request(lambda response: _wake_after(response, svc, batch.id, wake))
    accepted = [
        {"index": i, "id": str(existing.get(row["idempotency_key"], row["id"]))}
        | ({"existing": True} if row["idempotency_key"] in existing else {})
        for i, row in jobs
    ]
    body = {
        "id": str(batch.id),
        "items_submitted": len(raw_items),
        "items_accepted": len(jobs),
        "items_rejected": len(rejected),
        "accepted": accepted,
        "rejected": rejected,
    }
    return body, 202, {"Location": url_for("batches.get_batch", batch_id=batch.id)}


@batches.get("/<batch_id>")
def get_batch(batch_id: str) -> Body:
    """Counts by status and progress (finished / accepted)."""
    batch = _load(batch_id)
    with services().sessions() as session:
        return batch_summary(session, batch)


@batches.get("/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    """The batch's finished items as NDJSON (see :func:`export_results`)."""
    return export_results(_load(batch_id))


def export_results(batch: Batch) -> Response:
    """NDJSON, one line per finished item in item order: ``index``, ``id``, ``metadata``,
    ``status``, ``result``, ``result_json``, ``action``, ``cached``, ``error``. Streamed
    from the database in chunks, so 50,000 results never sit in memory at once."""
    sessions = services().sessions

    def lines() -> Iterator[str]:
        with sessions() as session:
            rows = session.scalars(
                select(Job)
                .where(
                    Job.batch_id == batch.id,
                    Job.status.not_in([JobStatus.QUEUED, JobStatus.RUNNING]),
                )
                .order_by(Job.item_index)
                .execution_options(yield_per=1000)
            )
            for job in rows:
                error = (
                    {"code": job.error_code, "message": job.error_message}
                    if job.error_code
                    else None
                )
                yield (
                    json.dumps(
                        {
                            "index": job.item_index,
                            "id": str(job.id),
                            "metadata": job.item_metadata,
                            "status": job.status.value,
                            "result": job.result,
                            "result_json": job.result_json,
                            "action": job.action,
                            "cached": job.cached,
                            "error": error,
                        }
                    )
                    + "\n"
                )

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


@batches.delete("/<batch_id>")
def cancel_batch(batch_id: str) -> Body:
    """Cancel every item still queued (running ones finish); 200 with the batch."""
    batch = _load(batch_id)
    svc = services()
    with svc.sessions() as session, session.begin():
        canceled = list(
            session.scalars(
                update(Job)
                .where(Job.batch_id == batch.id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELED, finished_at=utcnow())
                .returning(Job.id),
                execution_options={"synchronize_session": False},
            )
        )
        events = record_events(session, canceled)
    enqueue_events(svc.celery, events)
    with svc.sessions() as session:
        return batch_summary(session, session.get(Batch, batch.id) or batch) | {
            "canceled": len(canceled)
        }


def _wake_after(
    response: Response, svc: Services, batch_id: uuid.UUID, job_ids: list[uuid.UUID]
) -> Response:
    """Send the batch's wake-ups once ``response`` has gone out: the jobs are committed
    already, so the caller need not wait for a thousand broker messages (and if they are
    never sent, the sweeper sends them)."""

    def wake() -> None:
        try:
            enqueue_wakeups(svc.celery, job_ids, Priority.BULK, svc.settings.max_batch_size)
        except Exception as exc:
            log.warning(
                "batch %s committed but not enqueued (%s); the sweeper will send it", batch_id, exc
            )

    response.call_on_close(wake)
    return response


def _load(raw_id: str) -> Batch:
    return load_owned(Batch, raw_id, "batch")


def _read_items(svc: Services) -> tuple[list[Any], str | None]:
    limit = svc.settings.max_batch_items
    if request.mimetype == "application/json":
        try:
            body = json.loads(request.get_data())
            parsed = BatchRequest.model_validate(body)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"the body is not a valid batch: {exc}", code="invalid_json") from exc
        items, callback = parsed.items, parsed.callback_url
    elif request.mimetype in ("application/x-ndjson", "application/jsonl"):
        items = []
        for number, line in enumerate(request.stream, start=1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except (ValueError, RecursionError) as exc:
                raise BadRequest(
                    f"NDJSON line {number} is not valid JSON: {exc}", code="invalid_json"
                ) from exc
            if len(items) > limit:
                break
        callback = request.args.get("callback_url")
    else:
        raise UnsupportedMediaType(
            f"content type {request.mimetype or '(none)'!r} is not accepted; send "
            "application/json or application/x-ndjson",
            code="unsupported_content_type",
        )
    if not items:
        raise ValidationFailed("the batch has no items", code="empty_batch")
    if len(items) > limit:
        raise ValidationFailed(f"a batch holds at most {limit} items", code="too_many_items")
    return items, callback


def _parse(svc: Services, raw: Any) -> BatchItem | SightlineError:
    """One item's fields validated (not yet its image), or its problem."""
    try:
        if not isinstance(raw, dict):
            raise ValidationFailed("an item must be a JSON object", code="invalid_fields")
        try:
            item = BatchItem.model_validate(raw)
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise ValidationFailed(detail, code="invalid_fields") from exc
        if (item.image is None) == (item.image_url is None):
            raise ValidationFailed("give exactly one of image and image_url", code="invalid_fields")
        metadata_bytes = len(json.dumps(item.metadata))
        if metadata_bytes > svc.settings.max_metadata_bytes:
            limit = svc.settings.max_metadata_bytes
            raise ValidationFailed(
                f"metadata is {metadata_bytes} bytes; the limit is {limit}",
                code="metadata_too_large",
            )
    except SightlineError as exc:
        return exc
    return item


def _fetch_images(
    svc: Services, parsed: list[BatchItem | SightlineError]
) -> dict[int, bytes | SightlineError]:
    """The downloaded bytes (or the fetch's problem) of every valid ``image_url`` item by
    index, ``image_fetch_concurrency`` at a time: the only part of intake that waits on
    the network, and the only part worth threads (the rest holds the GIL)."""
    wanted = {
        index: item.image_url
        for index, item in enumerate(parsed)
        if isinstance(item, BatchItem) and item.image_url is not None
    }
    if not wanted:
        return {}

    def fetch(url: str) -> bytes | SightlineError:
        try:
            return fetch_image(
                url,
                svc.outbound,
                max_bytes=svc.settings.max_image_bytes,
                timeout_s=svc.settings.image_fetch_timeout_s,
                session=http,
            )
        except SightlineError as exc:
            return exc

    with (
        ThreadPoolExecutor(max_workers=svc.settings.image_fetch_concurrency) as pool,
        requests.Session() as http,
    ):
        return dict(zip(wanted, pool.map(fetch, wanted.values()), strict=True))


def _build(
    svc: Services,
    key: ApiKey,
    index: int,
    item: BatchItem | SightlineError,
    fetched: bytes | SightlineError | None,
) -> JobRow | SightlineError:
    """The job row for one parsed item (``fetched``: its downloaded image, for an
    ``image_url`` item), or its problem."""
    try:
        if isinstance(item, SightlineError):
            raise item
        if isinstance(fetched, SightlineError):
            raise fetched
        image = fetched if fetched is not None else _decode_base64(item.image or "")
        row = build_job_row(svc, key, item, image, Priority.BULK, durable=False)
    except SightlineError as exc:
        return exc
    row["item_index"] = index
    row["item_metadata"] = item.metadata
    row["idempotency_key"] = item.idempotency_key
    return row


def _decode_base64(encoded: str) -> bytes:
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"'image' is not valid base64: {exc}", code="invalid_base64") from exc


def _existing(
    svc: Services, key: ApiKey, jobs: list[tuple[int, JobRow]]
) -> dict[str | None, uuid.UUID]:
    """Jobs the key's tenant already has under the items' idempotency keys."""
    wanted = [row["idempotency_key"] for _, row in jobs if row["idempotency_key"] is not None]
    found: dict[str | None, uuid.UUID] = {}
    with svc.sessions() as session:
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            rows = session.execute(
                select(Job.idempotency_key, Job.id).where(
                    Job.tenant_id == key.tenant_id,
                    Job.idempotency_key.in_(wanted[start : start + LOOKUP_CHUNK]),
                )
            ).tuples()
            found.update({key: job_id for key, job_id in rows})
    return found
