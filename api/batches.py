"""``/v1/batches``: bulk submission, listing, progress, streamed results, cancellation,
retry of the failed items (:mod:`api.batch_retry`), purge.

Partial acceptance: every item is validated like a single job; valid items become jobs
(``bulk`` priority), invalid ones are reported with their index and a problem (``code``,
``detail``) and create nothing. The answer lists both, so a pipeline knows exactly which
items were taken. Only when no item is valid is the request refused (422). Items with an
``idempotency_key`` already used by this API key are reported as accepted with the
existing job's id (``"existing": true``), so a pipeline can resubmit after a failure.

Every answer is rendered through its model in :mod:`shared.schemas` (``BatchCreated``,
``BatchOut``, ``BatchCanceled``, ``BatchResultLine``, ``Purged``), the models the OpenAPI
document's schemas are generated from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Response,
    after_this_request,
    request,
    stream_with_context,
    url_for,
)
from pydantic import ValidationError
from sqlalchemy import select

from api.access import load_owned
from api.auth import authenticate, current_key
from api.batch_intake import IntakeDeadline, fetch_images, vet_callbacks
from api.batch_retry import read_retry_request, retry_failed
from api.context import Services, services
from api.gc_paused import gc_paused
from api.job_input import check_json_shape, check_texts, loads_strict
from api.job_insert import insert_jobs
from api.limits import enforce_item_rate, enforce_queue_cap
from api.listing import BatchFilter, encode_cursor
from api.purging import by_caller, eraser, purge_requested
from api.submission import JobDraft, JobRow, draft_job, finish_job_row, normalise_upload
from shared import lifecycle
from shared.batches import batch_summaries, batch_summary, complete_batches
from shared.enqueue import enqueue_events, enqueue_wakeups
from shared.error_codes import ErrorCode
from shared.errors import (
    BadRequest,
    NotFound,
    SightlineError,
    UnsupportedMediaType,
    ValidationFailed,
)
from shared.images import NormalisedImage
from shared.models import ApiKey, Batch, Job, JobStatus, Priority, utcnow
from shared.purge import purge_batch
from shared.schemas import (
    BatchAccepted,
    BatchCanceled,
    BatchCreated,
    BatchExisting,
    BatchItem,
    BatchList,
    BatchOut,
    BatchRejected,
    BatchRequest,
    BatchResultLine,
    Purged,
)
from shared.ssrf import OutboundPolicy

log = logging.getLogger(__name__)

batches = Blueprint("batches", __name__, url_prefix="/v1/batches")
batches.before_request(authenticate)

# Idempotency keys looked up per query.
LOOKUP_CHUNK = 2000
# JSON values a batch body may hold per allowed item, on average (fields and metadata of
# a real item take a few dozen); past it the body is refused before it is parsed.
JSON_VALUES_PER_ITEM = 100
Body = dict[str, Any]


@batches.post("")
def create_batch() -> tuple[Body, int, dict[str, str]]:
    """Accept a batch: JSON ``{"items": [...], "callback_url"}`` or NDJSON (one item per
    line; ``?callback_url=``). 202 with accepted and rejected items by index.

    Order matters: everything that can refuse an item or the whole batch (item rate,
    fields, callback URLs, idempotency keys, queue cap) is decided before any image is
    downloaded, decoded or stored, so a refused or repeated batch stores nothing."""
    svc = services()
    request.max_content_length = svc.settings.max_batch_body_bytes
    key = current_key()
    raw_items, callback_url, item_events = _read_items(svc)
    enforce_item_rate(svc, svc.counters, key, len(raw_items))
    outbound = svc.outbound.for_owner(str(key.tenant_id))
    if callback_url is not None:
        outbound.check(callback_url, field="callback_url")
    deadline = IntakeDeadline(svc.settings.batch_intake_deadline_s)
    # Not a ``with``: leaving it would wait for downloads still running past the deadline.
    pool = ThreadPoolExecutor(max_workers=svc.settings.image_fetch_concurrency)
    try:
        with gc_paused():
            item_callback = callback_url if item_events else None
            outcomes = _draft_items(svc, outbound, pool, key, raw_items, deadline, item_callback)
            existing = _existing(svc, key, outcomes)
            fresh = {
                i: item
                for i, item in enumerate(outcomes)
                if isinstance(item, Drafted) and item.draft.row["idempotency_key"] not in existing
            }
            enforce_queue_cap(svc, key, adding=len(fresh))
            rows = _build_rows(svc, outbound, pool, fresh, deadline)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for index, row in rows.items():
        outcomes[index] = row
    rejected = [
        BatchRejected(index=i, code=outcome.code, detail=outcome.detail)
        for i, outcome in enumerate(outcomes)
        if isinstance(outcome, SightlineError)
    ]
    accepted = [
        (i, outcome)
        for i, outcome in enumerate(outcomes)
        if not isinstance(outcome, SightlineError)
    ]
    if not accepted:
        raise ValidationFailed(
            f"none of the {len(raw_items)} items is valid",
            code=ErrorCode.NO_VALID_ITEMS,
            rejected=[item.model_dump(mode="json") for item in rejected[:100]],
        )
    new_jobs = [row for _, row in accepted if isinstance(row, dict)]
    batch = Batch(
        id=uuid.uuid4(),
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        created_at=utcnow(),
        items_submitted=len(raw_items),
        items_accepted=len(accepted),
        callback_url=callback_url,
        item_events=item_events,
    )
    for row in new_jobs:
        row["batch_id"] = batch.id
    svc.blobs.sync()
    with svc.sessions() as session, session.begin():
        session.add(batch)
        session.flush()
        insert_jobs(session, new_jobs)
        # Every item an earlier job (repeated idempotency keys): nothing will run, so
        # the batch is complete now, not at the sweeper's next pass.
        completed = [] if new_jobs else complete_batches(session, [batch.id])
    enqueue_events(svc.celery, completed)
    wake = [row["id"] for row in new_jobs]
    after_this_request(lambda response: wake_after(response, svc, batch.id, wake))
    created = BatchCreated(
        id=batch.id,
        items_submitted=len(raw_items),
        items_accepted=len(accepted),
        items_rejected=len(rejected),
        accepted=[
            BatchAccepted(index=i, id=row["id"])
            if isinstance(row, dict)
            else BatchExisting(
                index=i, id=existing[row.draft.row["idempotency_key"]], existing=True
            )
            for i, row in accepted
        ],
        rejected=rejected,
    )
    location = url_for("batches.get_batch", batch_id=batch.id)
    return created.model_dump(mode="json"), 202, {"Location": location}


@batches.get("")
def list_batches() -> Body:
    """The batches of the caller's tenant, newest first: ``?status=open|completed&limit=
    &cursor=``. ``next_cursor`` is null on the last page."""
    wanted = BatchFilter.parse(request.args.to_dict())
    with services().sessions() as session:
        rows = list(session.scalars(wanted.query(current_key().tenant_id)))
        page, more = rows[: wanted.limit], len(rows) > wanted.limit
        summaries = batch_summaries(session, page)
    listed = BatchList(
        batches=[BatchOut.model_validate(summary) for summary in summaries],
        next_cursor=encode_cursor(page[-1]) if more else None,
    )
    return listed.model_dump(mode="json")


@batches.post("/<batch_id>/retry")
def retry(batch_id: str) -> tuple[Body, int, dict[str, str]]:
    """Run the batch's failed items again (optionally only those that failed with one of
    ``error_codes``) as a new batch with ``retry_of`` set; 202 like ``POST /v1/batches``,
    409 ``nothing_to_retry`` when no item qualifies."""
    original = _load(batch_id)
    svc = services()
    retried = retry_failed(svc, current_key(), original, read_retry_request(request))
    after_this_request(
        lambda response: wake_after(response, svc, retried.id, [a.id for a in retried.accepted])
    )
    location = url_for("batches.get_batch", batch_id=retried.id)
    return retried.model_dump(mode="json"), 202, {"Location": location}


@batches.get("/<batch_id>")
def get_batch(batch_id: str) -> Body:
    """Counts by status and progress (finished / accepted)."""
    batch = _load(batch_id)
    with services().sessions() as session:
        return BatchOut.model_validate(batch_summary(session, batch)).model_dump(mode="json")


@batches.get("/<batch_id>/results")
def batch_results(batch_id: str) -> Response:
    """The batch's finished items as NDJSON (see :func:`export_results`)."""
    return export_results(_load(batch_id))


def export_results(batch: Batch) -> Response:
    """NDJSON, one :class:`BatchResultLine` per finished item in item order. Streamed from
    the database in chunks, so 50,000 results never sit in memory at once."""
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
                yield json.dumps(BatchResultLine.from_job(job).model_dump(mode="json")) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


@batches.delete("/<batch_id>")
def cancel_batch(batch_id: str) -> Body:
    """Cancel every item not final yet (running ones stop at their worker's next step);
    200 with the batch. With
    ``?purge=true``, erase the batch and every item, canceling those not final (200 with
    :class:`Purged`; the batch and its jobs answer 404 from then on)."""
    purge = purge_requested()
    batch = _load(batch_id)
    svc = services()
    if purge:
        erased = purge_batch(eraser(svc), batch.tenant_id, batch.id, by_caller())
        if erased is None:
            raise NotFound(f"no batch {batch_id}")  # a concurrent purge came first
        return Purged(id=batch.id, object="batch", jobs=erased).model_dump(mode="json")
    with lifecycle.unit_of_work(svc.sessions, svc.celery, svc.feed) as changes:
        canceled = lifecycle.cancel_batch(changes, batch.id)
    with svc.sessions() as session:
        summary = batch_summary(session, session.get(Batch, batch.id) or batch)
    return BatchCanceled.model_validate(summary | {"canceled": canceled}).model_dump(mode="json")


def wake_after(
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


def _read_items(svc: Services) -> tuple[list[Any], str | None, bool]:
    """The body's items, batch callback URL and ``item_events`` (NDJSON: query
    parameters ``callback_url`` and ``item_events=true``); 422 for ``item_events`` without
    a callback URL. JSON bodies and NDJSON lines are parsed
    strictly (as ``POST /v1/jobs`` bodies are) after the same shape pre-scan, with one
    budget of :data:`JSON_VALUES_PER_ITEM` values per allowed item for the whole body, so
    a body of many tiny values is refused (400 ``json_too_complex``) before it is built."""
    limit = svc.settings.max_batch_items
    max_values = limit * JSON_VALUES_PER_ITEM
    if request.mimetype == "application/json":
        raw = request.get_data(cache=False)
        check_json_shape(raw, max_values)
        try:
            parsed = BatchRequest.model_validate(loads_strict(raw, what="the body"))
        except (ValueError, RecursionError) as exc:
            raise BadRequest(
                f"the body is not a valid batch: {exc}", code=ErrorCode.INVALID_JSON
            ) from exc
        items, callback, item_events = parsed.items, parsed.callback_url, parsed.item_events
    elif request.mimetype in ("application/x-ndjson", "application/jsonl"):
        items = []
        used = 0
        for number, line in enumerate(request.stream, start=1):
            if not line.strip():
                continue
            used += check_json_shape(line, max_values - used)
            items.append(loads_strict(line, what=f"NDJSON line {number}"))
            if len(items) > limit:
                break
        callback = request.args.get("callback_url")
        item_events = request.args.get("item_events", "false") == "true"
    else:
        raise UnsupportedMediaType(
            f"content type {request.mimetype or '(none)'!r} is not accepted; send "
            "application/json or application/x-ndjson",
            code=ErrorCode.UNSUPPORTED_CONTENT_TYPE,
        )
    if not items:
        raise ValidationFailed("the batch has no items", code=ErrorCode.EMPTY_BATCH)
    if len(items) > limit:
        raise ValidationFailed(
            f"a batch holds at most {limit} items", code=ErrorCode.TOO_MANY_ITEMS
        )
    if item_events and callback is None:
        raise ValidationFailed(
            "item_events sends items' events to the batch's callback_url; give one",
            code=ErrorCode.INVALID_FIELDS,
        )
    return items, callback, item_events


@dataclass(frozen=True)
class Drafted:
    """An item whose fields passed every check: its job draft and its image source."""

    draft: JobDraft
    item: BatchItem


Outcome = Drafted | JobRow | SightlineError


def _draft_items(
    svc: Services,
    outbound: OutboundPolicy,
    pool: ThreadPoolExecutor,
    key: ApiKey,
    raw_items: list[Any],
    deadline: IntakeDeadline,
    item_callback: str | None,
) -> list[Outcome]:
    """Each item's draft (fields valid, callback URL allowed, idempotency key not
    repeated earlier in the batch), or its problem. No image work yet. An item without a
    callback URL of its own gets ``item_callback`` (the batch's, with ``item_events``)."""
    outcomes: list[Outcome] = []
    for raw in raw_items:
        try:
            item = _parse(svc, raw)
            if item_callback is not None and item.callback_url is None:
                item = item.model_copy(update={"callback_url": item_callback})
            outcomes.append(
                Drafted(draft_job(svc, key, item, Priority.BULK, check_callback=False), item)
            )
        except SightlineError as exc:
            outcomes.append(exc)
    callbacks = {o.draft.callback_url for o in outcomes if isinstance(o, Drafted)}
    verdicts = vet_callbacks(
        outbound, pool, [url for url in callbacks if url is not None], deadline
    )
    seen_keys: set[str] = set()
    for index, outcome in enumerate(outcomes):
        if not isinstance(outcome, Drafted):
            continue
        problem = verdicts.get(outcome.draft.callback_url or "")
        idempotency_key = outcome.item.idempotency_key
        if problem is None and idempotency_key is not None:
            if idempotency_key in seen_keys:
                problem = ValidationFailed(
                    f"idempotency_key {idempotency_key!r} is used by an earlier item of this "
                    "batch; each item needs its own",
                    code=ErrorCode.DUPLICATE_IDEMPOTENCY_KEY,
                )
            seen_keys.add(idempotency_key)
        if problem is not None:
            outcomes[index] = problem
        else:
            outcome.draft.row.update(
                item_index=index,
                item_metadata=outcome.item.metadata,
                idempotency_key=idempotency_key,
            )
    return outcomes


def _parse(svc: Services, raw: Any) -> BatchItem:
    """One item's fields validated (not yet its image); raises its problem. Text is
    checked as ``POST /v1/jobs`` checks it (no NUL, no unpaired surrogate)."""
    if not isinstance(raw, dict):
        raise ValidationFailed("an item must be a JSON object", code=ErrorCode.INVALID_FIELDS)
    check_texts(raw)
    try:
        item = BatchItem.model_validate(raw)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ValidationFailed(detail, code=ErrorCode.INVALID_FIELDS) from exc
    if (item.image is None) == (item.image_url is None):
        raise ValidationFailed(
            "give exactly one of image and image_url", code=ErrorCode.INVALID_FIELDS
        )
    metadata_bytes = len(json.dumps(item.metadata))
    if metadata_bytes > svc.settings.max_metadata_bytes:
        limit = svc.settings.max_metadata_bytes
        raise ValidationFailed(
            f"metadata is {metadata_bytes} bytes; the limit is {limit}",
            code=ErrorCode.METADATA_TOO_LARGE,
        )
    return item


def _build_rows(
    svc: Services,
    outbound: OutboundPolicy,
    pool: ThreadPoolExecutor,
    fresh: dict[int, Drafted],
    deadline: IntakeDeadline,
) -> dict[int, JobRow | SightlineError]:
    """Each fresh item's stored image and complete row, or its image's problem: inline
    images decoded here, ``image_url`` ones downloaded under the intake's bounds."""
    rows: dict[int, JobRow | SightlineError] = {}

    def finish(index: int, image: NormalisedImage, source_sha256: str) -> None:
        draft = fresh[index].draft
        fingerprint = draft.fingerprint(source_sha256)
        rows[index] = finish_job_row(svc, draft, image, fingerprint, durable=False)

    for index, drafted in fresh.items():
        if drafted.item.image is None:
            continue
        try:
            image_bytes = _decode_base64(drafted.item.image)
            image = normalise_upload(svc, image_bytes)
        except SightlineError as exc:
            rows[index] = exc
            continue
        finish(index, image, hashlib.sha256(image_bytes).hexdigest())
    urls = {i: d.item.image_url for i, d in fresh.items() if d.item.image_url is not None}
    for index, fetched in fetch_images(svc, outbound, pool, urls, deadline):
        if isinstance(fetched, SightlineError):
            rows[index] = fetched
        else:
            finish(index, fetched.image, fetched.source_sha256)
    return rows


def _decode_base64(encoded: str) -> bytes:
    if encoded.startswith("data:"):
        encoded = encoded.partition(",")[2]
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            f"'image' is not valid base64: {exc}", code=ErrorCode.INVALID_BASE64
        ) from exc


def _existing(svc: Services, key: ApiKey, outcomes: list[Outcome]) -> dict[str | None, uuid.UUID]:
    """Jobs the key's tenant already has under the items' idempotency keys."""
    wanted = [
        o.item.idempotency_key
        for o in outcomes
        if isinstance(o, Drafted) and o.item.idempotency_key is not None
    ]
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
