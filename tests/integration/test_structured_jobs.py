"""Structured answers end to end: schemas per job in mixed batches, presets, actions."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
from PIL import Image

from shared.blobs import BlobStore
from shared.presets import load_presets
from tests.stack import Stack, make_image
from worker.model.base import GenerationOptions, GenerationRequest
from worker.model.hf import TransformersBackend

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "label": {"enum": ["safe", "spam", "violence"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["label", "confidence"],
    },
    {
        "type": "object",
        "properties": {"caption": {"type": "string", "maxLength": 40}},
        "required": ["caption"],
    },
    {
        "type": "object",
        "properties": {
            "objects": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "maxItems": 3,
            },
            "count": {"type": "integer", "minimum": 0, "maximum": 20},
        },
        "required": ["objects", "count"],
    },
    {
        "type": "object",
        "properties": {"nsfw": {"type": "boolean"}, "why": {"type": "string", "maxLength": 30}},
    },
    {"enum": ["yes", "no", "unsure"]},
]


def _post(stack: Stack, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        f"{stack.url}/v1/jobs",
        json=body,
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=30,
    )


def _image_b64(index: int) -> str:
    import base64

    return base64.b64encode(make_image(index)).decode()


def test_two_hundred_jobs_with_five_schemas_all_validate_and_text_is_unaffected(
    pg_stack: Stack, tiny_checkpoint: Path
) -> None:
    rng = random.Random(7)
    plan: list[dict[str, Any] | None] = [rng.choice([*SCHEMAS, None]) for _ in range(200)]
    ids = []
    for index, schema in enumerate(plan):
        body: dict[str, Any] = {"image": _image_b64(index), "prompt": f"describe {index}"}
        if schema is None:
            body["max_new_tokens"] = 8
        else:
            body["response_format"] = {"type": "json_schema", "schema": schema}
        response = _post(pg_stack, body)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    pg_stack.start_worker()

    done = pg_stack.wait_all(ids, timeout_s=300)

    assert [job["status"] for job in done] == ["succeeded"] * 200
    assert max(job["batch_size"] for job in done) > 1
    for job, schema in zip(done, plan, strict=True):
        if schema is None:
            assert job["result_json"] is None and job["response_format"] == {"type": "text"}
            continue
        assert json.loads(job["result"]) == job["result_json"]
        jsonschema.validate(job["result_json"], schema)
        assert job["thinking"] is False, "JSON answers default to no thinking"
    # Text jobs that shared passes with constrained neighbours answer as they would alone.
    backend = TransformersBackend(tiny_checkpoint)
    backend.load("cpu")
    blobs = BlobStore(pg_stack.settings.blob_url)
    mixed = [
        job
        for job, schema in zip(done, plan, strict=True)
        if schema is None and job["batch_size"] > 1
    ]
    assert mixed, "some text jobs ran beside others"
    rows = {str(row.id): row for row in pg_stack.jobs([job["id"] for job in mixed[:12]])}
    for job in mixed[:12]:
        image = Image.open(io.BytesIO(blobs.get(rows[job["id"]].image_key))).convert("RGB")
        alone = backend.generate(
            [
                GenerationRequest(
                    image=image, prompt=job["prompt"], options=GenerationOptions(8), thinking=True
                )
            ]
        )
        assert alone[0].text == job["result"]


def test_moderation_preset_sets_action_and_listing_filters_on_it(pg_stack: Stack) -> None:
    ids = []
    for index in range(24):
        response = _post(pg_stack, {"image": _image_b64(100 + index), "preset": "moderation-v1"})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    text_jobs = [
        _post(pg_stack, {"image": _image_b64(i), "prompt": "hi"}).json()["id"] for i in range(4)
    ]
    pg_stack.start_worker()
    assert all(job["action"] is None for job in pg_stack.wait_all(text_jobs))
    done = pg_stack.wait_all(ids, timeout_s=300)

    # The bundled preset's own policy: its edges are tested in tests/unit/test_presets.py.
    policy = load_presets()["moderation-v1"].policy
    assert policy is not None
    for job in done:
        assert job["status"] == "succeeded" and job["preset"] == "moderation-v1"
        answer = job["result_json"]
        assert set(answer) == {"label", "confidence", "explanation"}
        assert job["action"] == policy.decide(answer)
    params: dict[str, str | int] = {"action": "block", "limit": 500}
    listed = requests.get(
        f"{pg_stack.url}/v1/jobs",
        params=params,
        headers={"Authorization": f"Bearer {pg_stack.key}"},
        timeout=10,
    ).json()["jobs"]
    blocked = {job["id"] for job in done if job["action"] == "block"}
    assert blocked, "the tiny model's answers include blocks"
    assert {job["id"] for job in listed} == blocked, "exactly the blocked jobs, no text jobs"
    assert all(job["action"] == "block" for job in listed)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "schema": {"type": "string", "pattern": "a+"},
                }
            },
            "unsupported_schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "schema": {
                        "type": "object",
                        # Few values (under the JSON body's value cap), many bytes.
                        "properties": {
                            f"p{i}": {"type": "string", "description": "d" * 1000}
                            for i in range(20)
                        },
                    },
                }
            },
            "schema_too_large",
        ),
        (
            {"response_format": {"type": "json_schema", "schema": SCHEMAS[0]}, "max_new_tokens": 5},
            "max_new_tokens_too_small",
        ),
        ({"response_format": {"type": "xml"}}, "invalid_fields"),
        ({"preset": "moderation-v9"}, "unknown_preset"),
    ],
    ids=[
        "unsupported-keyword",
        "too-large",
        "budget-too-small",
        "unknown-format",
        "unknown-preset",
    ],
)
def test_bad_response_formats_are_422(pg_stack: Stack, extra: dict[str, Any], code: str) -> None:
    response = _post(pg_stack, {"image": _image_b64(1), "prompt": "x", **extra})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert pg_stack.jobs() == []


def test_multipart_takes_response_format_as_json_text(pg_stack: Stack) -> None:
    response = requests.post(
        f"{pg_stack.url}/v1/jobs",
        files={"image": ("a.png", make_image(3))},
        data={
            "prompt": "x",
            "response_format": json.dumps({"type": "json_schema", "schema": SCHEMAS[4]}),
        },
        headers={"Authorization": f"Bearer {pg_stack.key}"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    assert response.json()["response_format"]["schema"] == SCHEMAS[4]
    assert response.json()["thinking"] is False
