"""Contract testing: schemathesis generates requests from ``/openapi.json`` and checks
every answer against the same document.

Bounded and deterministic: ``MAX_EXAMPLES`` generated cases per operation with a fixed
derandomised seed, plus the document's own examples; no example database is written.
Checks: never a 5xx; every status, content type, header and body as documented;
requests that break the schema are refused (4xx); a ``/v1`` request without the key is
refused (401).

Schemathesis rarely gets past validation to a 2xx, so the batch routes' real answers
are also checked against the document by a test that drives a batch through its life.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import NDJSON, REF, build_document
from shared.settings import Settings
from tests.stack import Stack, make_image

MAX_EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    ignored_auth,
]


def _cases() -> list[tuple[str, GenerationMode]]:
    """(operation label, mode) pairs; negative data only where there is input to break.
    Labels come from the document this code generates; the test reads the served one."""
    cases = []
    for path, item in build_document(Settings())["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            label = f"{method.upper()} {path}"
            cases.append((label, GenerationMode.POSITIVE))
            if "parameters" in item or "parameters" in operation or "requestBody" in operation:
                cases.append((label, GenerationMode.NEGATIVE))
    return cases


@pytest.mark.parametrize(("label", "mode"), _cases(), ids=lambda v: str(getattr(v, "value", v)))
def test_every_answer_matches_the_contract(pg_stack: Stack, label: str, mode: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{pg_stack.url}/openapi.json")
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the served document"
    auth = {"Authorization": f"Bearer {pg_stack.key}"}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_documented(case: Any) -> None:
        case.call_and_validate(headers=auth, checks=CHECKS)

    answers_as_documented()


def _violations(document: dict[str, Any], schema: dict[str, Any], body: Any) -> list[str]:
    """Where ``body`` breaks ``schema`` (a schema of ``document``, ``$ref``s into its
    components resolved)."""
    validator = Draft202012Validator(
        {**schema, "components": document["components"]},
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message}"
        for error in validator.iter_errors(body)
    ]


def _answered_as_documented(
    document: dict[str, Any], path: str, response: requests.Response
) -> list[Any]:
    """Check ``response`` against what ``document`` says of its operation and status: the
    media type, and the body (NDJSON: each line); returns the body's objects."""
    method = response.request.method or ""
    documented = document["paths"][path][method.lower()]["responses"]
    assert str(response.status_code) in documented, (method, path, response.text)
    content = documented[str(response.status_code)]["content"]
    media_type = response.headers["Content-Type"].partition(";")[0]
    assert media_type in content, (method, path, media_type)
    if media_type == NDJSON:
        schema = content[media_type]["x-itemSchema"]
        bodies = [json.loads(line) for line in response.text.splitlines()]
    else:
        schema = content[media_type]["schema"]
        bodies = [response.json()]
    for body in bodies:
        assert _violations(document, schema, body) == [], (method, path, body)
    return bodies


def test_batch_answers_match_their_documented_models(pg_stack: Stack) -> None:
    """Every batch answer, successes included, against the served document (schemathesis
    reaches few of them: its generated batches are refused and its ids unknown). The
    schemas come from the models that render the answers and are closed, so a key a
    route adds, drops or retypes without its model fails here."""
    document = requests.get(f"{pg_stack.url}/openapi.json", timeout=30).json()
    image = base64.b64encode(make_image(1)).decode()
    items = [
        {"image": image, "prompt": "kept", "idempotency_key": "row-0", "metadata": {"row": 0}},
        {"image": "not base64!", "prompt": "rejected"},
        {"image": image, "prompt": "expires", "timeout_s": 1, "metadata": ["any", "json"]},
    ]
    post = pg_stack.call("POST", "/v1/batches", json={"items": items})
    created = _answered_as_documented(document, "/v1/batches", post)[0]
    assert post.headers["Location"] == f"/v1/batches/{created['id']}"
    assert [r["index"] for r in created["rejected"]] == [1]
    again = pg_stack.call("POST", "/v1/batches", json={"items": items[:1] + items[2:]})
    resubmitted = _answered_as_documented(document, "/v1/batches", again)[0]
    assert resubmitted["accepted"][0] == {**created["accepted"][0], "existing": True}
    # The check bites: a key a route added without its model is a violation.
    schema = {"$ref": REF.format(model="BatchCreated")}
    assert _violations(document, schema, {**created, "note": "unmodelled"}) != []

    one = "/v1/batches/{batch_id}"
    canceled = _answered_as_documented(
        document, one, pg_stack.call("DELETE", f"/v1/batches/{resubmitted['id']}")
    )[0]
    assert canceled["canceled"] == 1 and canceled["completed_at"] is not None
    time.sleep(1.5)  # past the deadline of the item with timeout_s=1: it expires unrun
    pg_stack.start_worker()
    pg_stack.wait_all([item["id"] for item in created["accepted"]])
    batch = _answered_as_documented(
        document, one, pg_stack.call("GET", f"/v1/batches/{created['id']}")
    )[0]
    assert batch["progress"] == 1.0 and batch["counts"]["succeeded"] >= 1
    lines = _answered_as_documented(
        document,
        one + "/results",
        pg_stack.call("GET", f"/v1/batches/{created['id']}/results"),
    )
    assert [(line["index"], line["status"]) for line in lines] == [(0, "succeeded"), (2, "failed")]
    assert lines[1]["error"]["code"] == "expired"
    lines = _answered_as_documented(
        document,
        one + "/results",
        pg_stack.call("GET", f"/v1/batches/{resubmitted['id']}/results"),
    )
    assert [(line["index"], line["status"], line["error"]) for line in lines] == [
        (1, "canceled", None)
    ]
