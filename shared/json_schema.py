"""The JSON Schema subset sightline can enforce token by token, and its token budget.

Pure Python, shared by the API (which refuses an unsupported schema or a too small
``max_new_tokens`` with 422 at submission) and the worker's constrained decoder
(``worker/model/structured.py``, whose docstring explains the closing reserve), so both
apply exactly the same rules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

# Keywords accepted per type; anything else is refused rather than silently ignored.
_ANNOTATIONS = frozenset({"title", "description", "$schema"})
_KEYWORDS: dict[str, frozenset[str]] = {
    "object": frozenset({"type", "properties", "required", "additionalProperties"}),
    "string": frozenset({"type", "maxLength", "enum"}),
    "number": frozenset({"type", "minimum", "maximum", "enum"}),
    "integer": frozenset({"type", "minimum", "maximum", "enum"}),
    "boolean": frozenset({"type", "enum"}),
    "array": frozenset({"type", "items", "maxItems"}),
}
# The largest maxLength / maxItems: far past any answer max_new_tokens allows, far below
# the repetition counts that make grammar compilation and masking slow.
MAX_COUNT = 4096
# The largest magnitude of minimum / maximum: integers stay exact in a double, and xgrammar
# refuses integer bounds past int64 (a RuntimeError in the worker, not a 422 at the door).
MAX_BOUND = 10**15
# xgrammar writes a range-bounded number with at most this many fraction digits.
_FRACTION_DIGITS = 6
# A string in closing mode: both quotes plus the rest of an escape (``uXXXX``) or of a
# multi-byte UTF-8 character that was in progress.
_STRING_COST = 2 + 5
# Sign and decimal point of a number, and an exponent in progress ("e", sign, one digit)
# where the schema leaves the number unbounded.
_NUMBER_OVERHEAD = 2 + 3
# Thinking adds two forced tokens: ``<think>`` and ``</think>``.
THINKING_TOKENS = 2


class SchemaError(ValueError):
    """A JSON schema outside the supported subset, or a token budget too small for it.

    It stands apart from :class:`shared.errors.SightlineError` on purpose: the same check
    runs in three places that each decide what it means, so it carries no HTTP status or
    code of its own. The API turns it into
    :class:`~shared.errors.ValidationFailed` (``unsupported_schema``); the presets loader
    reports it as an invalid preset (:class:`shared.presets.PresetError`); the model
    backend raises it as the ``ValueError`` its contract names for a bad request
    (:class:`worker.model.base.ModelBackend`), and the worker fails that job.
    """


def validate_schema(schema: Any) -> None:
    """Raise :class:`SchemaError` unless ``schema`` is in the supported subset.

    The subset: ``object`` (``properties``, ``required`` naming declared properties,
    ``additionalProperties`` absent or false), ``string`` (``maxLength`` up to
    :data:`MAX_COUNT`), ``number`` and ``integer`` (``minimum``, ``maximum``, within
    ±:data:`MAX_BOUND`), ``boolean``, ``array`` (``items`` required, ``maxItems`` up to
    :data:`MAX_COUNT`), and ``enum`` (a non-empty list of JSON values, alone or beside a scalar
    ``type``). ``title``, ``description`` and ``$schema`` are allowed anywhere and ignored.
    The message names the JSON pointer of the offending part.
    """
    _validate(schema, "")


def closing_reserve(schema: Mapping[str, Any]) -> int:
    """Tokens a row must keep to finish any partial document of ``schema`` (see module doc).

    Bytes of the longest closing-mode completion from any point, plus one for the stop
    token. Raises :class:`SchemaError` for a schema outside the subset.
    """
    validate_schema(schema)
    return _cost(schema) + 1


def min_new_tokens(schema: Mapping[str, Any], thinking: bool) -> int:
    """The smallest ``max_new_tokens`` that guarantees a complete answer for ``schema``.

    :func:`closing_reserve`, plus the ``<think>`` and ``</think>`` tokens when ``thinking``.
    Raises :class:`SchemaError` for a schema outside the subset.
    """
    return closing_reserve(schema) + (THINKING_TOKENS if thinking else 0)


def _validate(schema: Any, pointer: str) -> None:
    where = pointer or "/"
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where}: a schema must be a JSON object")
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaError(f"{where}: enum must be a non-empty list")
        if schema.get("type", "string") not in ("string", "number", "integer", "boolean"):
            raise SchemaError(f"{where}: enum goes with a scalar type or none")
        if "type" not in schema:
            _check_keywords(schema, frozenset({"enum"}), where)
            return
    kind = schema.get("type")
    if not isinstance(kind, str) or kind not in _KEYWORDS:
        raise SchemaError(f"{where}: type must be one of {sorted(_KEYWORDS)}, got {kind!r}")
    _check_keywords(schema, _KEYWORDS[kind], where)
    if kind == "object":
        properties = schema.get("properties", {})
        if not isinstance(properties, Mapping):
            raise SchemaError(f"{where}: properties must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not set(required) <= set(properties):
            raise SchemaError(f"{where}: required must list declared properties only")
        if schema.get("additionalProperties", False) is not False:
            raise SchemaError(f"{where}: additionalProperties must be false or absent")
        for name, value in properties.items():
            _validate(value, f"{pointer}/properties/{name}")
    elif kind == "array":
        if "items" not in schema:
            raise SchemaError(f"{where}: array needs an items schema")
        _check_count(schema, "maxItems", where)
        _validate(schema["items"], f"{pointer}/items")
    elif kind == "string":
        _check_count(schema, "maxLength", where)
    elif kind in ("number", "integer"):
        bounds = [schema[key] for key in ("minimum", "maximum") if key in schema]
        if not all(_is_number(bound) for bound in bounds):
            raise SchemaError(f"{where}: minimum and maximum must be finite numbers")
        if any(abs(bound) > MAX_BOUND for bound in bounds):
            raise SchemaError(f"{where}: minimum and maximum must be within ±{MAX_BOUND:.0e}")
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            raise SchemaError(f"{where}: minimum exceeds maximum")


def _check_keywords(schema: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = set(schema) - allowed - _ANNOTATIONS
    if unknown:
        raise SchemaError(f"{where}: unsupported keyword(s) {sorted(unknown)}")


def _check_count(schema: Mapping[str, Any], key: str, where: str) -> None:
    if key in schema:
        value = schema[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise SchemaError(f"{where}: {key} must be a non-negative integer")
        if value > MAX_COUNT:
            raise SchemaError(f"{where}: {key} must be at most {MAX_COUNT}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _literal_bytes(value: Any) -> int:
    # Either escaping choice the grammar could have made for non-ASCII text.
    return max(
        len(json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":")).encode())
        for ascii_only in (True, False)
    )


def _cost(schema: Mapping[str, Any]) -> int:
    """Bytes of the longest closing-mode completion of a value of ``schema``."""
    if "enum" in schema:
        return max(_literal_bytes(value) for value in schema["enum"])
    kind = schema["type"]
    if kind == "object":
        properties = schema.get("properties", {})
        # Braces, then per property: key, colon, value and a comma.
        return 2 + sum(
            _literal_bytes(name) + 2 + _cost(value) for name, value in properties.items()
        )
    if kind == "array":
        return 2 + 1 + _cost(schema["items"])
    if kind == "string":
        return _STRING_COST
    if kind == "boolean":
        return len("false")
    # A number is finished as soon as it is complete; a bound can make the grammar ask for
    # as many integer digits as the bound has before that, plus the fraction digits.
    magnitude = max(
        (abs(schema[key]) for key in ("minimum", "maximum") if key in schema), default=0
    )
    return _NUMBER_OVERHEAD + len(str(math.floor(magnitude))) + _FRACTION_DIGITS
