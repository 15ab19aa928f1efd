"""Read ``POST /v1/jobs`` bodies (multipart or JSON) into a request and image bytes.

Only parsing and shape checks happen here; image content is validated by
``shared.images`` and field values by ``shared.schemas``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError

from shared.errors import BadRequest, UnsupportedMediaType, ValidationFailed
from shared.schemas import JobRequest


@dataclass(frozen=True)
class JobInput:
    """A parsed submission: validated fields and the raw (not yet decoded) image bytes."""

    fields: JobRequest
    image: bytes


def read_job_input(request: Request) -> JobInput:
    """Parse the body by content type: ``multipart/form-data`` or ``application/json``.

    Raises 415 for any other content type, 400 for a body that cannot be parsed (bad JSON,
    bad base64, missing image part) and 422 for fields that fail validation.
    """
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        return _from_multipart(request)
    if mimetype == "application/json":
        return _from_json(request)
    raise UnsupportedMediaType(
        f"content type {mimetype or '(none)'!r} is not accepted; "
        "send multipart/form-data (an 'image' file part) or application/json",
        code="unsupported_content_type",
    )


def _from_multipart(request: Request) -> JobInput:
    upload = request.files.get("image")
    if upload is None:
        raise BadRequest("the multipart body has no 'image' file part", code="image_missing")
    fields = {key: request.form[key] for key in request.form}
    return JobInput(fields=_validate(fields), image=upload.read())


def _from_json(request: Request) -> JobInput:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body is not a JSON object", code="invalid_json")
    encoded = body.pop("image", None)
    if not isinstance(encoded, str) or not encoded:
        raise BadRequest("'image' must be a base64 string", code="image_missing")
    return JobInput(fields=_validate(body), image=_decode_base64(encoded))


def _decode_base64(encoded: str) -> bytes:
    # Accept data URLs ("data:image/png;base64,...") as browsers produce them.
    if encoded.startswith("data:"):
        _, _, encoded = encoded.partition(",")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"'image' is not valid base64: {exc}", code="invalid_base64") from exc


def _validate(fields: dict[str, Any]) -> JobRequest:
    try:
        return JobRequest.model_validate(fields)
    except ValidationError as exc:
        raise ValidationFailed(_describe(exc), code="invalid_fields") from exc


def _describe(exc: ValidationError) -> str:
    """One line per failing field: ``prompt: Field required``."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(loc) for loc in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
