"""Every error leaves the API as RFC 9457 ``application/problem+json``.

This is the one place exceptions become HTTP responses: :class:`SightlineError`
subclasses carry their status and code; Werkzeug's HTTP errors (404 route, 405, 413 body
too large), database outages (503) and constraint violations (409: the caller's request
collided with data written meanwhile, not an outage) are mapped here too; anything else is
a 500 whose body says nothing about internals (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy.exc import DBAPIError, IntegrityError
from werkzeug.exceptions import HTTPException

from shared.error_codes import ErrorCode
from shared.errors import (
    Conflict,
    PayloadTooLarge,
    ServiceUnavailable,
    SightlineError,
    TooManyRequests,
)

log = logging.getLogger(__name__)

PROBLEM_MIMETYPE = "application/problem+json"


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> Response:
    """A problem+json response. ``code`` is sightline's stable error identifier."""
    body = {
        "type": f"urn:sightline:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.path,
        **extra,
    }
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)


def _from_sightline(exc: SightlineError) -> Response:
    response = problem(exc.status, exc.title, exc.detail, exc.code, **exc.extra)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _from_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        return _from_sightline(
            PayloadTooLarge(
                f"the request body exceeds the limit of {request.max_content_length} bytes",
                code=ErrorCode.BODY_TOO_LARGE,
            )
        )
    code = (exc.name or "error").lower().replace(" ", "_")
    response = problem(status, exc.name or "Error", exc.description or exc.name or "", code)
    # Keep what the error itself says to send, e.g. a 405's Allow header.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _from_database(exc: DBAPIError) -> Response:
    log.warning("database unavailable: %s", exc.__class__.__name__)
    return _from_sightline(ServiceUnavailable("the database cannot be reached; retry later"))


def _from_constraint(exc: IntegrityError) -> Response:
    # Two requests racing for the same idempotency key (two identical batches at once):
    # the database kept one; the other learns it collided and may retry to see the winner.
    log.info("constraint violation: %s", exc.orig.__class__.__name__ if exc.orig else "")
    return _from_sightline(
        Conflict(
            "the request collided with one committed at the same time (an idempotency key "
            "already in use); none of its jobs was created: retry it to see the existing ones",
            code=ErrorCode.CONFLICT,
        )
    )


def _from_anything(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "Internal error", "an internal error occurred", ErrorCode.INTERNAL_ERROR)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(SightlineError, _from_sightline)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(IntegrityError, _from_constraint)
    app.register_error_handler(DBAPIError, _from_database)
    app.register_error_handler(Exception, _from_anything)
