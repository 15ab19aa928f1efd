"""The OpenAPI document and the docs page (no services: nothing here touches a database)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate
from pydantic import BaseModel
from werkzeug.routing import Map

from api import create_app
from api.errors import PROBLEM_MIMETYPE
from api.openapi import NDJSON, REF, RouteMismatch, build_document
from shared.error_codes import ERRORS, Where
from shared.schemas import BatchCanceled, BatchCreated, BatchOut, JobRequest
from shared.settings import Settings


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return create_app(Settings(data_dir=tmp_path, max_prompt_chars=1234, max_image_frames=7))


@pytest.fixture
def document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body: dict[str, Any] = response.get_json()
    return body


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_every_public_route_is_documented(app: Flask, document: dict[str, Any]) -> None:
    documented = {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/v1/", "/healthz", "/readyz", "/openapi.json"))
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_v1_needs_bearer_and_errors_are_problems(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from ``sightline keys create NAME``.",
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            if path.startswith("/v1/"):
                assert operation["security"] == [{"bearerAuth": []}], (path, method)
                assert "401" in operation["responses"], (path, method)
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    schema = response["content"][PROBLEM_MIMETYPE]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}, (path, status)
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail", "code", "instance"}


def test_both_submission_bodies_come_from_the_request_model(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    content = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    fields = set(JobRequest.model_fields)
    as_json, as_form = schemas["JobSubmission"], schemas["JobSubmissionForm"]
    assert set(as_json["properties"]) == fields | {"image"}
    assert set(as_form["properties"]) == fields | {"image"}
    assert as_json["additionalProperties"] is False and as_form["additionalProperties"] is False
    assert "image" in as_json["required"] and "image" in as_form["required"]
    # A form field is text: no nulls, lists comma-separated, objects as JSON strings.
    for name, prop in as_form["properties"].items():
        assert "anyOf" not in prop and prop["type"] != "array", name


def test_limits_come_from_the_running_settings(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["JobSubmissionForm"]["properties"]["prompt"]["maxLength"] == 1234
    assert "7 frames" in schemas["JobSubmission"]["properties"]["image"]["description"]


def test_docs_page_is_served_offline_under_a_strict_policy(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="(/docs/[^"]+)"', html)
    assert len(assets) == 4 and not re.search(r"https?://", html), "everything is local"
    for path in assets:
        assert client.get(path).status_code == 200, path
    assert client.get("/docs/assets/swagger-ui.js.map").status_code == 404
    assert client.get("/docs/assets/..%2Findex.html").status_code == 404


def test_every_code_a_client_can_meet_is_documented_under_its_status(
    document: dict[str, Any],
) -> None:
    """Each registry code that answers a request or rejects a batch item is listed in the
    contract, under its own status (no plain-string codes: ``test_error_codes.py``)."""
    listed: dict[str, set[int]] = {}
    for item in document["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            for status, response in operation["responses"].items():
                for code in re.findall(r"`([a-z0-9_]+)`", response["description"]):
                    listed.setdefault(code, set()).add(int(status))
    for code, info in ERRORS.items():
        if info.where in (Where.RESPONSE, Where.ITEM):
            assert info.status in listed.get(code, set()), code
        else:
            assert code not in listed, code


def test_the_document_built_outside_a_request_is_the_served_one(
    app: Flask, document: dict[str, Any]
) -> None:
    """The docs site and the contract test build the document with no app at hand (from the
    API's blueprints); it must be the one the app serves (from its own routes)."""
    settings = app.extensions["sightline"].settings
    assert json.loads(json.dumps(build_document(settings))) == document


def test_a_route_without_an_operation_fails_the_build(tmp_path: Path) -> None:
    """Paths come from the routes: a new route is never silently left out, whatever its
    prefix, and an operation whose route went away is not kept either."""
    settings = Settings(data_dir=tmp_path)
    for extra in ("/v1/batches/<batch_id>/pause", "/v2/jobs"):
        app = create_app(settings)
        app.add_url_rule(extra, "added", lambda: "", methods=["POST"])
        with pytest.raises(
            RouteMismatch, match=re.escape(f"served but not in the OpenAPI document: {extra}")
        ):
            build_document(settings, app.url_map)
    served = create_app(settings).url_map.iter_rules()
    without = Map([rule.empty() for rule in served if rule.endpoint != "batches.cancel_batch"])
    with pytest.raises(
        RouteMismatch, match=re.escape("described but not served: batches.cancel_batch")
    ):
        build_document(settings, without)


def test_every_success_body_is_a_model(document: dict[str, Any]) -> None:
    """No placeholder schema (``{"type": "object"}``) for a 2xx body: each names a
    component generated from the model that renders it (NDJSON: one per line; an event
    stream: its last event), and response models are closed, so a key their route adds is
    a contract violation. A DELETE answers one of two models (a cancel or a purge)."""
    schemas = document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters" or path == "/openapi.json":
                continue
            for status, response in operation["responses"].items():
                if int(status) >= 300:
                    continue
                for media_type, content in response["content"].items():
                    field = {NDJSON: "x-itemSchema", "text/event-stream": "x-finalEventSchema"}
                    schema = content[field.get(media_type, "schema")]
                    for ref in schema.get("oneOf", [schema]):
                        name = ref["$ref"].removeprefix("#/components/schemas/")
                        assert name in schemas, (path, method, status)
                        if name.startswith("Batch") or name == "Purged":
                            assert schemas[name]["additionalProperties"] is False, name


@pytest.mark.parametrize(
    ("operation", "model"),
    [
        (("/v1/batches", "post", "202"), BatchCreated),
        (("/v1/batches/{batch_id}", "get", "200"), BatchOut),
        (("/v1/batches/{batch_id}", "delete", "200"), BatchCanceled),
    ],
)
def test_batch_answers_are_documented_by_their_models(
    document: dict[str, Any], operation: tuple[str, str, str], model: type[BaseModel]
) -> None:
    path, method, status = operation
    content = document["paths"][path][method]["responses"][status]["content"]
    schema: dict[str, object] = {"$ref": REF.format(model=model.__name__)}
    if method == "delete":  # a cancel, or with ?purge=true a purge
        schema = {"oneOf": [schema, {"$ref": REF.format(model="Purged")}]}
    assert content == {"application/json": {"schema": schema}}
    component = document["components"]["schemas"][model.__name__]
    assert list(component["properties"]) == list(model.model_fields)
    results = document["paths"]["/v1/batches/{batch_id}/results"]["get"]["responses"]["200"]
    line = results["content"][NDJSON]["x-itemSchema"]["$ref"]
    assert line == REF.format(model="BatchResultLine")
