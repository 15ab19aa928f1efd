"""Small JSON request bodies (a retry's filter, a redelivery's time range), read strictly.

The body is bounded (:data:`MAX_BODY_BYTES`, 413 past it), shape-checked and parsed as
``POST /v1/jobs`` bodies are (:mod:`api.job_input`), then validated against its model:
400 ``invalid_json`` when it is not JSON, 422 ``invalid_fields`` naming what is wrong.
An empty body is the model with its defaults, when every field has one.
"""

from __future__ import annotations

from typing import TypeVar

from flask import Request
from pydantic import BaseModel, ValidationError

from api.job_input import check_json_shape, loads_strict
from shared.error_codes import ErrorCode
from shared.errors import ValidationFailed

MAX_BODY_BYTES = 16_384
Model = TypeVar("Model", bound=BaseModel)


def read_small_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as ``model`` (see the module docstring)."""
    request.max_content_length = MAX_BODY_BYTES
    raw = request.get_data(cache=False)
    parsed = {}
    if raw.strip():
        check_json_shape(raw)
        parsed = loads_strict(raw, what="the body")
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ValidationFailed(detail, code=ErrorCode.INVALID_FIELDS) from exc
