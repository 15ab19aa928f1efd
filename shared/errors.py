"""The one exception hierarchy of sightline.

Each error carries the HTTP status and a stable machine-readable ``code``; the API turns
any :class:`SightlineError` into an RFC 9457 ``application/problem+json`` document in one
place (``api/errors.py``). Workers use the same codes for a job's ``error.code``.

Four errors stand apart, each saying why in its docstring: errors that stop a process
at start-up and never reach a client (:class:`shared.presets.PresetError`,
:class:`worker.model.hf.ModelLoadError`, :class:`worker.launcher.LaunchError`), and
:class:`shared.json_schema.SchemaError`, whose meaning each caller decides.
"""

from __future__ import annotations

from typing import Any

from shared.error_codes import ErrorCode


class SightlineError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` a stable snake_case identifier,
    ``title`` a short human summary that does not vary, and the message the precise detail.
    ``extra`` holds further members of the problem document (e.g. the rejected items).
    """

    status: int = 500
    code: str = ErrorCode.INTERNAL_ERROR
    title: str = "Internal error"

    def __init__(self, detail: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra
        if code is not None:
            self.code = code


class BadRequest(SightlineError):
    """The request is malformed (bad JSON, bad base64, missing multipart part)."""

    status = 400
    code = ErrorCode.BAD_REQUEST
    title = "Bad request"


class Unauthorized(SightlineError):
    """No API key, or one that is unknown or revoked."""

    status = 401
    code = ErrorCode.UNAUTHORIZED
    title = "Unauthorized"


class NotFound(SightlineError):
    """The resource does not exist (or belongs to someone else)."""

    status = 404
    code = ErrorCode.NOT_FOUND
    title = "Not found"


class Conflict(SightlineError):
    """The resource is in a state that forbids the request (e.g. cancel a finished job)."""

    status = 409
    code = ErrorCode.CONFLICT
    title = "Conflict"


class PayloadTooLarge(SightlineError):
    """The body or the image exceeds its configured limit."""

    status = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE
    title = "Payload too large"


class UnsupportedMediaType(SightlineError):
    """The request body or the image is of a type sightline does not accept."""

    status = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    title = "Unsupported media type"


class ValidationFailed(SightlineError):
    """Well-formed but invalid input: a field out of range, an image that cannot be used."""

    status = 422
    code = ErrorCode.VALIDATION_FAILED
    title = "Validation failed"


class TooManyRequests(SightlineError):
    """A rate limit or queue cap is reached; ``retry_after`` is seconds to wait."""

    status = 429
    code = ErrorCode.RATE_LIMITED
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(detail, code=code, retry_after=retry_after)
        self.retry_after = retry_after


class ServiceUnavailable(SightlineError):
    """A dependency (database, broker) cannot be reached right now; retry later."""

    status = 503
    code = ErrorCode.SERVICE_UNAVAILABLE
    title = "Service unavailable"
