"""Read ``POST /v1/jobs`` bodies (multipart or JSON) into a request and image bytes.

Only parsing, text and shape checks happen here; image content is validated by
``shared.images`` and field values by ``shared.schemas``. The body size is already
capped by the app's ``MAX_CONTENT_LENGTH`` (413 ``body_too_large``) before anything here
reads it.

Rules, each refused with a precise ``detail``:

- content type ``multipart/form-data`` (with a boundary) or ``application/json``
  (UTF-8; another ``charset`` is 415), nothing else (415 ``unsupported_content_type``);
- JSON: strict UTF-8 (400 ``invalid_json``), an object at the top, no duplicate keys, no
  ``NaN``/``Infinity`` (400 ``invalid_json``), nesting at most :data:`MAX_JSON_DEPTH`
  (400 ``json_too_deep``) and at most :data:`MAX_JSON_VALUES` values (400
  ``json_too_complex``), both counted before parsing so that hostile bodies cost one scan;
- multipart: well formed (400 ``invalid_multipart``), at most :data:`MAX_FORM_PARTS`
  parts, each field once, only ``image`` may be a file, text parts at most
  :data:`MAX_TEXT_PART_BYTES` bytes of strict UTF-8;
- every text field: valid Unicode without NUL (U+0000) or unpaired surrogates (422
  ``invalid_text``): PostgreSQL cannot store NUL in text, and a surrogate cannot be
  encoded as UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Event,
    Field,
    File,
    MultipartDecoder,
    NeedData,
)

from shared.error_codes import ErrorCode
from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from shared.schemas import JobRequest

MAX_JSON_DEPTH = 64
MAX_JSON_VALUES = 10_000
MAX_FORM_PARTS = 32
MAX_TEXT_PART_BYTES = 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024
# A JSON string literal, unrolled so that long strings (base64 images) match in C.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_UNPAIRED_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class JobInput:
    """A parsed submission: validated fields and the raw (not yet decoded) image bytes."""

    fields: JobRequest
    image: bytes


def read_job_input(request: Request) -> JobInput:
    """Parse the body by content type: ``multipart/form-data`` or ``application/json``.

    Raises 415 for any other content type, 400 for a body that cannot be parsed (see the
    module docstring), 422 for text that is not storable and for fields that fail
    validation, 413 for a multipart text part over its limit.
    """
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        fields, image = _read_multipart(request)
        return JobInput(fields=_validate(fields), image=image)
    if mimetype == "application/json":
        return _from_json(request)
    raise UnsupportedMediaType(
        f"content type {mimetype or '(none)'!r} is not accepted; "
        "send multipart/form-data (an 'image' file part) or application/json",
        code=ErrorCode.UNSUPPORTED_CONTENT_TYPE,
    )


def _from_json(request: Request) -> JobInput:
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(
            f"JSON must be UTF-8; charset {charset!r} is not accepted",
            code=ErrorCode.UNSUPPORTED_CONTENT_TYPE,
        )
    body = _parse_json_object(request.get_data(cache=False))
    encoded = body.pop("image", None)
    if not isinstance(encoded, str) or not encoded:
        raise BadRequest("'image' must be a base64 string", code=ErrorCode.IMAGE_MISSING)
    return JobInput(fields=_validate(body), image=_decode_base64(encoded))


def _parse_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, under the rules in the module docstring (400 if not)."""
    if not raw.strip():
        raise BadRequest("the body is empty; send a JSON object", code=ErrorCode.INVALID_JSON)
    check_json_shape(raw)
    body = loads_strict(raw, what="the body")
    if not isinstance(body, dict):
        raise BadRequest(
            f"the body is a JSON {type(body).__name__}; send a JSON object",
            code=ErrorCode.INVALID_JSON,
        )
    return body


def loads_strict(raw: bytes, *, what: str) -> Any:
    """``raw`` parsed as strict JSON: UTF-8, no duplicate keys, no ``NaN``/``Infinity``;
    400 ``invalid_json`` naming ``what`` otherwise. Bound its shape first
    (:func:`check_json_shape`): this builds every value it holds."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"{what} is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}",
            code=ErrorCode.INVALID_JSON,
        ) from exc
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, duplicate keys, >4300-digit integers
        raise BadRequest(f"{what} is not valid JSON: {exc}", code=ErrorCode.INVALID_JSON) from exc


def check_json_shape(raw: bytes, max_values: int = MAX_JSON_VALUES) -> int:
    """Bound depth and size before ``json.loads`` builds anything; returns the number of
    values counted (about: commas plus containers), so callers reading many documents
    (NDJSON lines) can bound their total. 400 ``json_too_deep`` past
    :data:`MAX_JSON_DEPTH`, ``json_too_complex`` past ``max_values``.

    With strings blanked out, what is left is small for any sensible body; all of it is
    counted in C, and depth is followed over at most the first ``max_values +
    MAX_JSON_DEPTH`` brackets (enough to see a nest too deep, whatever a body too large
    holds)."""
    structure = _JSON_STRING.sub(b'""', raw)
    brackets = structure.translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets[: max_values + MAX_JSON_DEPTH]:
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise BadRequest(
                f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels",
                code=ErrorCode.JSON_TOO_DEEP,
            )
    values = structure.count(b",") + len(brackets) // 2
    if values > max_values:
        raise BadRequest(
            f"the JSON body has more than {max_values} values", code=ErrorCode.JSON_TOO_COMPLEX
        )
    return values


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated keys; which one a caller meant is unknowable.
    found = dict(pairs)
    if len(found) < len(pairs):
        keys = [key for key, _ in pairs]
        repeated = next(key for i, key in enumerate(keys) if key in keys[:i])
        raise ValueError(f"duplicate key {repeated!r} in an object")
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode_base64(encoded: str) -> bytes:
    # Accept data URLs ("data:image/png;base64,...") as browsers produce them.
    if encoded.startswith("data:"):
        _, _, encoded = encoded.partition(",")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            f"'image' is not valid base64: {exc}", code=ErrorCode.INVALID_BASE64
        ) from exc


def _read_multipart(request: Request) -> tuple[dict[str, str], bytes]:
    """Stream the multipart body into text fields and the ``image`` part's bytes.

    Werkzeug's own form parser decodes text with ``errors="replace"`` and keeps every
    repeated field; this one refuses both, so a caller learns that the prompt was not
    UTF-8 instead of having it silently altered.
    """
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary:
        raise BadRequest(
            "the multipart/form-data content type has no boundary parameter",
            code=ErrorCode.INVALID_MULTIPART,
        )
    decoder = MultipartDecoder(boundary.encode("latin-1", "replace"), max_parts=MAX_FORM_PARTS)
    parts: dict[str, bytes] = {}
    current: Field | File | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        # Past the body limit, Werkzeug's stream raises 413 (``body_too_large``) here.
        chunk = request.stream.read(_READ_CHUNK_BYTES)
        for event in _events(decoder, chunk):
            if isinstance(event, Field | File):
                current, chunks, size = _start_part(event, parts), [], 0
            elif isinstance(event, Data) and current is not None:
                size += len(event.data)
                if current.name != "image" and size > MAX_TEXT_PART_BYTES:
                    raise PayloadTooLarge(
                        f"form field {current.name!r} is larger than {MAX_TEXT_PART_BYTES} bytes",
                        code=ErrorCode.BODY_TOO_LARGE,
                    )
                chunks.append(event.data)
                if not event.more_data:
                    parts[current.name] = b"".join(chunks)
        if not chunk:
            break
    image = parts.pop("image", None)
    if image is None:
        raise BadRequest(
            "the multipart body has no 'image' file part", code=ErrorCode.IMAGE_MISSING
        )
    return {name: _utf8(name, value) for name, value in parts.items()}, image


def _events(decoder: MultipartDecoder, chunk: bytes) -> list[Event]:
    """Feed ``chunk`` (empty at the end of the body) and return the events it completes;
    a malformed body or one with too many parts is 400 ``invalid_multipart``."""
    events: list[Event] = []
    try:
        decoder.receive_data(chunk or None)
        event = decoder.next_event()
        while not isinstance(event, NeedData | Epilogue):
            events.append(event)
            event = decoder.next_event()
    except RequestEntityTooLarge as exc:  # the decoder's way of saying: too many parts
        raise BadRequest(
            f"the multipart body has more than {MAX_FORM_PARTS} parts",
            code=ErrorCode.INVALID_MULTIPART,
        ) from exc
    except ValueError as exc:
        raise BadRequest(
            f"the multipart body is malformed: {exc}", code=ErrorCode.INVALID_MULTIPART
        ) from exc
    return events


def _start_part(event: Field | File, seen: dict[str, bytes]) -> Field | File:
    if not event.name:
        raise BadRequest("a multipart part has no name", code=ErrorCode.INVALID_MULTIPART)
    if event.name in seen:
        raise BadRequest(
            f"the multipart field {event.name!r} is repeated", code=ErrorCode.INVALID_MULTIPART
        )
    if isinstance(event, File) and event.name != "image":
        raise BadRequest(
            f"the multipart part {event.name!r} is a file; only 'image' may be one",
            code=ErrorCode.INVALID_MULTIPART,
        )
    return event


def _utf8(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            f"{name} is not valid UTF-8: byte 0x{value[exc.start]:02x} at offset {exc.start}",
            code=ErrorCode.INVALID_TEXT,
        ) from exc


def _validate(fields: dict[str, Any]) -> JobRequest:
    check_texts(fields)
    try:
        return JobRequest.model_validate(fields)
    except ValidationError as exc:
        raise ValidationFailed(_describe(exc), code=ErrorCode.INVALID_FIELDS) from exc
    except RecursionError as exc:  # a field parsed from JSON text (multipart) nests too deep
        raise ValidationFailed(
            "a field holds JSON nested too deeply to read", code=ErrorCode.INVALID_FIELDS
        ) from exc


def check_texts(fields: dict[str, Any]) -> None:
    """422 ``invalid_text`` for any string in ``fields`` (values, nested
    objects and lists, and their keys) that cannot be stored: see :func:`_check_text`."""
    pending: list[tuple[str, Any]] = list(fields.items())
    while pending:
        name, value = pending.pop()
        if isinstance(value, str):
            _check_text(name, value)
        elif isinstance(value, dict):
            for key, inner in value.items():
                _check_text(f"{name} (a key)", key)
                pending.append((f"{name}.{key}", inner))
        elif isinstance(value, list):
            pending.extend((f"{name}[{i}]", inner) for i, inner in enumerate(value))


def _check_text(name: str, text: str) -> None:
    """Refuse what PostgreSQL cannot store (NUL) or UTF-8 cannot encode (surrogates)."""
    nul = text.find("\0")
    if nul >= 0:
        raise ValidationFailed(
            f"{name} contains a NUL character (U+0000) at position {nul}",
            code=ErrorCode.INVALID_TEXT,
        )
    surrogate = _UNPAIRED_SURROGATE.search(text)
    if surrogate is not None:
        raise ValidationFailed(
            f"{name} contains an unpaired surrogate (U+{ord(surrogate.group()):04X}) "
            f"at position {surrogate.start()}",
            code=ErrorCode.INVALID_TEXT,
        )


def _describe(exc: ValidationError) -> str:
    """One line per failing field: ``prompt: Field required``."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(loc) for loc in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)
