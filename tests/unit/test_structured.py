"""JSON-schema constrained decoding and thinking sections, on the tiny random checkpoint."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from PIL import Image

from shared.json_schema import SchemaError, closing_reserve, min_new_tokens, validate_schema
from worker.model.base import GenerationOptions, GenerationRequest, GenerationResult
from worker.model.hf import TransformersBackend
from worker.model.structured import split_reasoning

MODERATION = {
    "type": "object",
    "properties": {
        "label": {"enum": ["ok", "harassment", "violence", "nudity", "naïve-ü"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "explanation": {"type": "string", "maxLength": 60},
    },
    "required": ["label", "confidence", "explanation"],
}
COUNTS = {
    "type": "object",
    "title": "counts",
    "properties": {
        "people": {"type": "integer", "minimum": 0, "maximum": 120},
        "outdoor": {"type": "boolean"},
        "note": {"type": "string"},
        "offset": {"type": "number"},
    },
    "required": ["people"],
}
TAGS = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"enum": ["cat", "dog", "car"]}, "maxItems": 3},
        "total": {"type": "integer"},
    },
    "required": ["tags", "total"],
}
NESTED = {
    "type": "object",
    "properties": {
        "box": {
            "type": "object",
            "properties": {
                "x": {"type": "number", "minimum": 0, "maximum": 1000},
                "y": {"type": "integer", "minimum": -50, "maximum": 50},
            },
            "required": ["x", "y"],
        },
        "caption": {"type": "string", "maxLength": 10},
    },
    "required": ["box"],
}
OBJECTS = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "score": {"type": "number"}},
        "required": ["name"],
    },
    "maxItems": 4,
}
SCHEMAS: list[dict[str, Any]] = [MODERATION, COUNTS, TAGS, NESTED, OBJECTS]
# Room for every schema, thinking included, with some tokens to spare for free text.
TOKENS = max(min_new_tokens(schema, thinking=True) for schema in SCHEMAS) + 24
GREEDY = GenerationOptions(max_new_tokens=TOKENS)
PROMPTS = ["Describe this image.", "Is this safe?", "Hi", "Count the people, please."]


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Path) -> Iterator[TransformersBackend]:
    loaded = TransformersBackend(tiny_checkpoint)
    loaded.load("cpu")
    yield loaded


def _request(
    i: int,
    schema: dict[str, Any] | None = None,
    options: GenerationOptions = GREEDY,
    thinking: bool = False,
) -> GenerationRequest:
    colour = (37 * i % 256, 91 * i % 256, 53 * i % 256)
    image = Image.new("RGB", (24 + 13 * (i % 5), 40 + 7 * (i % 3)), colour)
    return GenerationRequest(image, PROMPTS[i % len(PROMPTS)], options, schema, thinking)


def _assert_valid(result: GenerationResult, schema: dict[str, Any]) -> None:
    assert json.loads(result.text) == result.json
    jsonschema.validate(result.json, schema)
    assert result.tokens <= TOKENS


def test_mixed_batch_follows_each_schema_and_leaves_text_rows_alone(
    backend: TransformersBackend,
) -> None:
    schema_rows = [_request(i, schema) for i, schema in enumerate(SCHEMAS)]
    text_rows = [_request(10 + i) for i in range(3)]
    batch = [schema_rows[0], text_rows[0], *schema_rows[1:3], text_rows[1], *schema_rows[3:]]
    batch.append(text_rows[2])

    results = backend.generate(batch)

    by_request = dict(zip(map(id, batch), results, strict=True))
    for request in schema_rows:
        assert request.json_schema is not None
        _assert_valid(by_request[id(request)], request.json_schema)
    assert [by_request[id(request)] for request in text_rows] == backend.generate(text_rows)
    assert all(by_request[id(request)].json is None for request in text_rows)


def test_forty_requests_with_random_schemas_all_validate(backend: TransformersBackend) -> None:
    rng = random.Random(8)
    requests = [
        _request(i, rng.choice([*SCHEMAS, None]), thinking=rng.random() < 0.25) for i in range(40)
    ]

    for start in range(0, len(requests), 8):
        batch = requests[start : start + 8]
        for request, result in zip(batch, backend.generate(batch), strict=True):
            if request.json_schema is None:
                assert result.json is None
            else:
                _assert_valid(result, request.json_schema)


def test_smallest_allowed_budget_still_finishes_every_schema(
    backend: TransformersBackend,
) -> None:
    # max_new_tokens equal to the reserve: closing mode from the first token on.
    for schema in SCHEMAS:
        options = GenerationOptions(max_new_tokens=min_new_tokens(schema, thinking=False))

        result = backend.generate([_request(3, schema, options)])[0]

        _assert_valid(result, schema)


def test_sampling_also_follows_the_schema(backend: TransformersBackend) -> None:
    options = GenerationOptions(max_new_tokens=TOKENS, temperature=1.5)

    results = backend.generate([_request(i, schema, options) for i, schema in enumerate(SCHEMAS)])

    for schema, result in zip(SCHEMAS, results, strict=True):
        _assert_valid(result, schema)


def test_thinking_with_a_schema_keeps_reasoning_out_of_the_answer(
    backend: TransformersBackend,
) -> None:
    thinking, plain = backend.generate(
        [_request(1, MODERATION, thinking=True), _request(2, MODERATION, thinking=False)]
    )

    assert thinking.reasoning  # the random model reasons until the budget forces </think>
    assert "<think>" not in thinking.text and "</think>" not in thinking.text
    _assert_valid(thinking, MODERATION)
    assert plain.reasoning is None
    _assert_valid(plain, MODERATION)


def test_budget_below_the_reserve_is_refused_before_generating(
    backend: TransformersBackend,
) -> None:
    needed = min_new_tokens(MODERATION, thinking=False)
    small = GenerationOptions(max_new_tokens=needed - 1)

    with pytest.raises(SchemaError, match=rf"request 1: .*max_new_tokens >= {needed}"):
        backend.generate([_request(0, options=small), _request(1, MODERATION, small)])


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "string", "minLength": 2}, "unsupported keyword"),
        ({"type": "string", "pattern": "a+"}, "unsupported keyword"),
        ({"type": "object", "additionalProperties": True}, "additionalProperties"),
        ({"type": "object", "properties": {}, "required": ["x"]}, "required"),
        ({"type": "array"}, "items"),
        ({"type": "null"}, "type must be"),
        ({"type": "number", "minimum": 2, "maximum": 1}, "minimum exceeds"),
        ({"type": "integer", "maximum": float("inf")}, "finite"),
        ({"enum": []}, "non-empty"),
        ({"type": "object", "properties": {"a": {"type": "tuple"}}}, "/properties/a"),
        # Repetition counts and bounds past the caps: xgrammar slows down on the first and
        # raises on integer bounds past int64, in the worker, if the door lets them in.
        ({"type": "string", "maxLength": 4097}, "maxLength must be at most 4096"),
        ({"type": "array", "items": {"type": "boolean"}, "maxItems": 10**9}, "at most 4096"),
        ({"type": "integer", "maximum": 2**63}, r"within ±1e\+15"),
        ({"type": "number", "minimum": -1e16}, r"within ±1e\+15"),
        ({"type": "integer", "minimum": -(10**15) - 1}, r"within ±1e\+15"),
    ],
)
def test_schemas_outside_the_subset_are_refused(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        validate_schema(schema)


def test_schemas_at_the_caps_are_accepted_and_followed(backend: TransformersBackend) -> None:
    """The largest counts and bounds the door lets in compile and decode on the worker."""
    at_caps = {
        "type": "object",
        "properties": {
            "text": {"type": "string", "maxLength": 4096},
            "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 4096},
            "count": {"type": "integer", "minimum": -(10**15), "maximum": 10**15},
            "score": {"type": "number", "minimum": -1e15, "maximum": 1e15},
        },
        "required": ["text", "flags", "count", "score"],
    }
    validate_schema(at_caps)
    options = GenerationOptions(max_new_tokens=min_new_tokens(at_caps, thinking=False) + 8)
    [result] = backend.generate([_request(0, at_caps, options)])
    assert json.loads(result.text) == result.json
    jsonschema.validate(result.json, at_caps)


def test_reserve_grows_with_the_schema() -> None:
    flag = {"type": "object", "properties": {"a": {"type": "boolean"}}}
    wider = {"type": "object", "properties": {"a": {"type": "boolean"}, "bb": {"enum": [10]}}}

    # {"a":false} and the stop token.
    assert closing_reserve(flag) == len('{"a":false,}') + 1
    assert closing_reserve(wider) > closing_reserve(flag)
    assert min_new_tokens(flag, thinking=True) == closing_reserve(flag) + 2


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("plain answer", None, "plain answer"),
        ('<think>look closer</think>\n{"a":1}', "look closer", '{"a":1}'),
        ("\n<think>\nsteps\n</think>answer", "steps", "answer"),
        ("prefilled opening</think> answer", "prefilled opening", "answer"),
        ("<think>ran out of tokens", "ran out of tokens", ""),
        ("<think></think>quick", "", "quick"),
    ],
)
def test_split_reasoning(text: str, reasoning: str | None, answer: str) -> None:
    assert split_reasoning(text) == (reasoning, answer)


def test_requests_without_the_new_fields_keep_their_defaults() -> None:
    request = _request(0)

    assert request.json_schema is None and request.thinking is False
    assert GenerationResult("x", 1) == GenerationResult("x", 1, reasoning=None, json=None)
