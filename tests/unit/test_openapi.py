"""The OpenAPI document and the docs page (no services: nothing here touches a database)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from openapi_spec_validator import validate

from api import create_app
from api.errors import PROBLEM_MIMETYPE
from shared.error_codes import ERRORS, Where
from shared.schemas import JobRequest
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
