"""Every error code sightline answers, in one registry that everything else reads.

:class:`ErrorCode` names the stable ``code`` of an RFC 9457 problem document; each member
has an :class:`ErrorInfo` in :data:`ERRORS` with its HTTP status, where it can appear and
one line saying when. Raise sites pass members (``code=ErrorCode.QUEUE_FULL``); a
``StrEnum`` member *is* its string, so the JSON the API writes is the plain code. The
OpenAPI builder (``api/openapi.py``) lists each status's codes from here, and the errors
table in ``docs/http-api.md`` is :func:`markdown_table` (a unit test holds them equal).

Codes the API derives from a framework error it did not raise itself (``_from_http`` in
``api/errors.py``: an unknown route's 404 is ``not_found``, a wrong method's 405
``method_not_allowed``) are named after the HTTP status and are not listed here, except
where they coincide with a member.

:class:`JobErrorCode` is a second, separate enum: the ``error.code`` of a job that ended
``failed``. Those codes are stored on the job and sent in its webhook, long after the
request that submitted it was answered ``202``; they have no HTTP status, so mixing them
into :class:`ErrorCode` would give the OpenAPI document and the errors table entries no
response can carry. ``image_undecodable`` is in both on purpose: the API refuses an image
it cannot read (422) and a worker fails a job whose stored image it cannot read, with the
same meaning.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Where(enum.Enum):
    """Where a code can reach a client."""

    RESPONSE = "response"
    """Answers an HTTP request with its status (and may also reject one batch item)."""
    ITEM = "item"
    """Only ever rejects one item of a batch (``rejected[].code`` of ``POST /v1/batches``)."""
    CONSOLE = "console"
    """Only in the operator console, which renders errors as HTML pages."""
    FALLBACK = "fallback"
    """An exception class's default, for a raise site that names no code: none does, so
    no client sees it (a unit test checks every raise site names a specific code)."""


@dataclass(frozen=True)
class ErrorInfo:
    status: int
    when: str
    where: Where = Where.RESPONSE


class ErrorCode(enum.StrEnum):
    """A problem document's ``code``; :data:`ERRORS` holds its status and meaning."""

    INVALID_JSON = "invalid_json"
    INVALID_BASE64 = "invalid_base64"
    IMAGE_MISSING = "image_missing"
    JSON_TOO_DEEP = "json_too_deep"
    JSON_TOO_COMPLEX = "json_too_complex"
    INVALID_MULTIPART = "invalid_multipart"
    INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"
    UNAUTHORIZED = "unauthorized"
    CSRF_FAILED = "csrf_failed"
    NOT_FOUND = "not_found"
    JOB_FINISHED = "job_finished"
    NO_WEBHOOK_EVENT = "no_webhook_event"
    ENDPOINT_DISABLED = "endpoint_disabled"
    NOTHING_TO_RETRY = "nothing_to_retry"
    CONFLICT = "conflict"
    BODY_TOO_LARGE = "body_too_large"
    IMAGE_TOO_LARGE = "image_too_large"
    BATCH_DOWNLOAD_BUDGET = "batch_download_budget"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
    INVALID_FIELDS = "invalid_fields"
    INVALID_TEXT = "invalid_text"
    PROMPT_TOO_LONG = "prompt_too_long"
    MAX_NEW_TOKENS_TOO_LARGE = "max_new_tokens_too_large"
    MAX_NEW_TOKENS_TOO_SMALL = "max_new_tokens_too_small"
    TIMEOUT_TOO_LARGE = "timeout_too_large"
    UNKNOWN_PRESET = "unknown_preset"
    SCHEMA_TOO_LARGE = "schema_too_large"
    UNSUPPORTED_SCHEMA = "unsupported_schema"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    FORBIDDEN_DESTINATION = "forbidden_destination"
    IMAGE_EMPTY = "image_empty"
    IMAGE_UNDECODABLE = "image_undecodable"
    IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"
    IMAGE_TOO_MANY_FRAMES = "image_too_many_frames"
    IMAGE_ASPECT_RATIO = "image_aspect_ratio"
    INVALID_QUERY = "invalid_query"
    INVALID_TIME_RANGE = "invalid_time_range"
    EMPTY_BATCH = "empty_batch"
    TOO_MANY_ITEMS = "too_many_items"
    NO_VALID_ITEMS = "no_valid_items"
    METADATA_TOO_LARGE = "metadata_too_large"
    IMAGE_FETCH_FAILED = "image_fetch_failed"
    INTAKE_DEADLINE = "intake_deadline"
    DUPLICATE_IDEMPOTENCY_KEY = "duplicate_idempotency_key"
    RATE_LIMITED = "rate_limited"
    ITEM_RATE_LIMITED = "item_rate_limited"
    QUEUE_FULL = "queue_full"
    TOO_MANY_STREAMS = "too_many_streams"
    INTERNAL_ERROR = "internal_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_FAILED = "validation_failed"

    @property
    def status(self) -> int:
        return ERRORS[self].status

    @property
    def when(self) -> str:
        return ERRORS[self].when

    @property
    def where(self) -> Where:
        return ERRORS[self].where


E = ErrorCode
ERRORS: dict[ErrorCode, ErrorInfo] = {
    E.INVALID_JSON: ErrorInfo(
        400,
        "the body cannot be parsed as JSON (also: not UTF-8, a duplicate key, NaN/Infinity, top "
        "level not an object)",
    ),
    E.INVALID_BASE64: ErrorInfo(400, "`image` is not valid base64"),
    E.IMAGE_MISSING: ErrorInfo(
        400, "no image: `image` absent or not a string, or no multipart `image` file part"
    ),
    E.JSON_TOO_DEEP: ErrorInfo(400, "JSON nested deeper than 64 levels (checked before parsing)"),
    E.JSON_TOO_COMPLEX: ErrorInfo(
        400, "JSON with more than 10,000 values (checked before parsing)"
    ),
    E.INVALID_MULTIPART: ErrorInfo(
        400,
        "no boundary, malformed, more than 32 parts, a field repeated, a file part other than "
        "`image`",
    ),
    E.INVALID_IDEMPOTENCY_KEY: ErrorInfo(
        400, "`Idempotency-Key` empty, longer than 255 or unprintable"
    ),
    E.UNAUTHORIZED: ErrorInfo(401, "missing, unknown or revoked key"),
    E.CSRF_FAILED: ErrorInfo(
        403, "a console form sent without the session's CSRF token", Where.CONSOLE
    ),
    E.NOT_FOUND: ErrorInfo(
        404, "unknown job, batch or webhook endpoint (or another caller's), or route"
    ),
    E.JOB_FINISHED: ErrorInfo(409, "cancel of a job that already finished"),
    E.NO_WEBHOOK_EVENT: ErrorInfo(
        409, "redelivery asked for a job with no webhook event (not finished, or no `callback_url`)"
    ),
    E.ENDPOINT_DISABLED: ErrorInfo(
        409,
        "redelivery asked for a job whose events all go to a disabled endpoint (enable it first)",
    ),
    E.NOTHING_TO_RETRY: ErrorInfo(
        409, "retry of a batch with no failed item (with one of the given `error_codes`)"
    ),
    E.CONFLICT: ErrorInfo(
        409,
        "the request raced another for the same unique value (two identical batches at once); "
        "retry it",
    ),
    E.BODY_TOO_LARGE: ErrorInfo(
        413, "body over its limit (also: one multipart text field over 1 MiB)"
    ),
    E.IMAGE_TOO_LARGE: ErrorInfo(
        413, "image (or an `image_url` download) over `SIGHTLINE_MAX_IMAGE_BYTES`"
    ),
    E.BATCH_DOWNLOAD_BUDGET: ErrorInfo(
        413,
        "the batch's `image_url` downloads reached their byte budget before this item's started",
        Where.ITEM,
    ),
    E.UNSUPPORTED_CONTENT_TYPE: ErrorInfo(
        415, "body neither multipart nor JSON (nor NDJSON for a batch)"
    ),
    E.UNSUPPORTED_IMAGE_FORMAT: ErrorInfo(415, "image not JPEG/PNG/WebP/GIF/BMP (SVG, PDF, text…)"),
    E.INVALID_FIELDS: ErrorInfo(
        422,
        "a field fails validation (also: a batch item not an object, or with not exactly one of "
        "`image` and `image_url`)",
    ),
    E.INVALID_TEXT: ErrorInfo(
        422, "a text field holds NUL (U+0000) or an unpaired surrogate, or (multipart) is not UTF-8"
    ),
    E.PROMPT_TOO_LONG: ErrorInfo(422, "`prompt` over `SIGHTLINE_MAX_PROMPT_CHARS`"),
    E.MAX_NEW_TOKENS_TOO_LARGE: ErrorInfo(422, "`max_new_tokens` over the server's ceiling"),
    E.MAX_NEW_TOKENS_TOO_SMALL: ErrorInfo(
        422, "`max_new_tokens` below what the `response_format` schema needs for a complete answer"
    ),
    E.TIMEOUT_TOO_LARGE: ErrorInfo(422, "`timeout_s` over the server's ceiling"),
    E.UNKNOWN_PRESET: ErrorInfo(422, "`preset` names no preset this server has"),
    E.SCHEMA_TOO_LARGE: ErrorInfo(422, "`response_format` schema over its size limit"),
    E.UNSUPPORTED_SCHEMA: ErrorInfo(
        422, "`response_format` schema uses something structured output cannot enforce"
    ),
    E.IDEMPOTENCY_KEY_REUSED: ErrorInfo(
        422, "an `Idempotency-Key` sent again with a different request"
    ),
    E.FORBIDDEN_DESTINATION: ErrorInfo(
        422,
        "`callback_url` or `image_url` not http(s), unresolvable, or resolving to a non-public "
        "address",
    ),
    E.IMAGE_EMPTY: ErrorInfo(422, "image of 0 bytes or 0 pixels"),
    E.IMAGE_UNDECODABLE: ErrorInfo(
        422,
        "image truncated or corrupt (including a file that starts like JPEG/PNG/GIF/WebP/BMP but "
        "whose header is broken)",
    ),
    E.IMAGE_TOO_MANY_PIXELS: ErrorInfo(
        422,
        "declared size over `SIGHTLINE_MAX_IMAGE_PIXELS` (checked from the header, before "
        "decoding)",
    ),
    E.IMAGE_TOO_MANY_FRAMES: ErrorInfo(422, "more frames than `SIGHTLINE_MAX_IMAGE_FRAMES`"),
    E.IMAGE_ASPECT_RATIO: ErrorInfo(
        422, "image's longer side over 200 times its shorter one (the model cannot take it)"
    ),
    E.INVALID_QUERY: ErrorInfo(
        422,
        "a bad query parameter: a list's filter, limit or cursor (`GET /v1/jobs`, "
        "`/v1/batches`, `/v1/deliveries`), `wait`, or `purge`",
    ),
    E.INVALID_TIME_RANGE: ErrorInfo(
        422,
        "a redelivery's `since` or `until` not an ISO 8601 time with a time zone, or `until` "
        "not after `since`",
    ),
    E.EMPTY_BATCH: ErrorInfo(422, "a batch with no items"),
    E.TOO_MANY_ITEMS: ErrorInfo(422, "a batch over `SIGHTLINE_MAX_BATCH_ITEMS` items"),
    E.NO_VALID_ITEMS: ErrorInfo(422, "no item of a batch is valid (each is in `rejected`)"),
    E.METADATA_TOO_LARGE: ErrorInfo(
        422, "a batch item's `metadata` over `SIGHTLINE_MAX_METADATA_BYTES`", Where.ITEM
    ),
    E.IMAGE_FETCH_FAILED: ErrorInfo(
        422,
        "an item's `image_url` could not be fetched (network or TLS error, timeout, non-200 "
        "answer, redirect)",
        Where.ITEM,
    ),
    E.INTAKE_DEADLINE: ErrorInfo(
        422,
        "an item not fetched or checked within the batch's intake deadline; submit it again",
        Where.ITEM,
    ),
    E.DUPLICATE_IDEMPOTENCY_KEY: ErrorInfo(
        422, "an item repeats an earlier item's `idempotency_key`", Where.ITEM
    ),
    E.RATE_LIMITED: ErrorInfo(
        429, "the key's request rate is reached; `Retry-After` says when to retry"
    ),
    E.ITEM_RATE_LIMITED: ErrorInfo(
        429, "the key's batch item rate is reached; `Retry-After` says when to retry"
    ),
    E.QUEUE_FULL: ErrorInfo(
        429, "the key's queued-jobs cap is reached; `Retry-After` says when to retry"
    ),
    E.TOO_MANY_STREAMS: ErrorInfo(
        429, "the tenant holds `SIGHTLINE_STREAMS_PER_TENANT` event streams open already"
    ),
    E.INTERNAL_ERROR: ErrorInfo(500, "an unexpected failure (logged with its traceback)"),
    E.SERVICE_UNAVAILABLE: ErrorInfo(
        503, "the database cannot be reached (or `/readyz`: a dependency is down)"
    ),
    E.BAD_REQUEST: ErrorInfo(400, "default of `BadRequest`", Where.FALLBACK),
    E.PAYLOAD_TOO_LARGE: ErrorInfo(413, "default of `PayloadTooLarge`", Where.FALLBACK),
    E.UNSUPPORTED_MEDIA_TYPE: ErrorInfo(415, "default of `UnsupportedMediaType`", Where.FALLBACK),
    E.VALIDATION_FAILED: ErrorInfo(422, "default of `ValidationFailed`", Where.FALLBACK),
}
del E


def api_codes(status: int) -> list[ErrorCode]:
    """The codes a client of the HTTP API can meet with ``status``, in registry order:
    as the answer to a request or on a rejected batch item."""
    return [
        code
        for code, info in ERRORS.items()
        if info.status == status and info.where in (Where.RESPONSE, Where.ITEM)
    ]


def markdown_table() -> str:
    """The errors table of ``docs/http-api.md``: one row per code a client can meet."""
    rows = ["| status | `code` | when |", "|---|---|---|"]
    for status in sorted({info.status for info in ERRORS.values()}):
        for code in api_codes(status):
            item = "; only on a batch item, in `rejected`" if code.where is Where.ITEM else ""
            rows.append(f"| {status} | `{code}` | {code.when}{item} |")
    return "\n".join(rows) + "\n"


class JobErrorCode(enum.StrEnum):
    """The ``error.code`` of a job that ended ``failed`` (see the module docstring)."""

    IMAGE_UNDECODABLE = "image_undecodable"
    """The job's stored image is gone or does not decode. (A blob store that fails to
    give it, an outage, fails no job: the worker hands the job back to the queue.)"""
    INFERENCE_ERROR = "inference_error"
    """The model failed on this job (alone, after its batch was split to find it)."""
    RESULT_UNSTORABLE = "result_unstorable"
    """The database refused a value of the job's result (committed alone, after the
    commit it shared failed), so the worker stored this failure in its place."""
    EXPIRED = "expired"
    """The job's ``timeout_s`` passed before a worker finished it."""
    WORKER_LOST = "worker_lost"
    """Workers died holding the job ``SIGHTLINE_MAX_ATTEMPTS`` times."""
