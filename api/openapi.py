"""The OpenAPI 3.1 document (served at ``GET /openapi.json``), generated, never by hand.

Paths and methods come from the app's routes (its ``url_map``): each API route's view has
one operation here (summary, success and error statuses, by the view's Flask endpoint),
and a route without one, or one without a route, fails the build (:class:`RouteMismatch`)
rather than leaving a gap; path parameters come from the rule's arguments.

Request and response bodies come from the pydantic models that validate and render them
(``shared.schemas``), through ``model_json_schema``; the limits enforced outside the
models (prompt length, ``max_new_tokens`` and ``timeout_s`` ceilings, image bytes) come
from the running process's :class:`Settings`, so the document describes this server, not
a default one. The multipart form is derived from the JSON body's model: a form field
is text, so arrays become comma-separated strings and objects JSON strings (both are
parsed back by the model's own validators).

Every error is documented as ``application/problem+json`` with the :class:`Problem`
schema and, per status, the stable ``code`` values of that status in the registry
(:mod:`shared.error_codes`).
"""

from __future__ import annotations

import copy
import re
import tempfile
import uuid
from typing import Any

from flask import Flask, current_app, has_app_context
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Map, Rule

from api.errors import PROBLEM_MIMETYPE
from api.listing import BATCH_STATES, MAX_PAGE
from shared.error_codes import api_codes
from shared.images import ACCEPTED_FORMATS
from shared.models import EventStatus, JobStatus
from shared.schemas import (
    BatchCanceled,
    BatchCreated,
    BatchItem,
    BatchList,
    BatchOut,
    BatchRequest,
    BatchResultLine,
    BatchRetried,
    BatchRetryRequest,
    DeliveryList,
    EndpointList,
    EndpointOut,
    EventOut,
    JobOut,
    JobRequest,
    Purged,
    RedeliverRequest,
    RedeliveryQueued,
)
from shared.settings import Settings

REF = "#/components/schemas/{model}"
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
# An 8x8 PNG, so that the examples in the document (and in the docs page) are accepted.
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGOsWHCCARtgwio6aCUAegcB8I7IDX"
    "wAAAAASUVORK5CYII="
)
_IMAGE_TYPES = ", ".join(f"image/{fmt.lower()}" for fmt in ACCEPTED_FORMATS)


class Problem(BaseModel):
    """An RFC 9457 problem document: every error sightline answers."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="``urn:sightline:problem:<code>``.")
    title: str = Field(description="Short summary; the same for every occurrence of a status.")
    status: int = Field(description="The HTTP status, repeated.")
    detail: str = Field(description="What exactly is wrong, for a human.")
    code: str = Field(description="Stable snake_case identifier, for programs.")
    instance: str = Field(description="The request path.")


class JobSubmission(JobRequest):
    """``POST /v1/jobs`` as JSON: the job's fields and the image as base64."""

    image: str = Field(
        min_length=1,
        description=(
            f"The image ({', '.join(ACCEPTED_FORMATS)}), base64-encoded, or a "
            "``data:image/...;base64,`` URL."
        ),
        json_schema_extra={"contentEncoding": "base64"},
        examples=[EXAMPLE_PNG_BASE64],
    )


# Bodies the routes build as dicts; documented here until shared.schemas has them.
class JobList(BaseModel):
    """One page of the caller's tenant's jobs, newest first."""

    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ``cursor`` for the next page.")


class Deliveries(BaseModel):
    """A job's webhook events, each with every delivery attempt."""

    job_id: uuid.UUID
    events: list[EventOut]


class Redelivery(BaseModel):
    """The events sent again (ids are the ``webhook-id`` consumers de-duplicate on)."""

    job_id: uuid.UUID
    redelivering: list[str]


class Health(BaseModel):
    """The process is up."""

    status: str


class Readiness(BaseModel):
    """Every dependency answered."""

    status: str
    checks: dict[str, str]


_MODELS: list[type[BaseModel]] = [
    Problem,
    JobSubmission,
    BatchRequest,
    BatchItem,
    JobOut,
    JobList,
    Deliveries,
    Redelivery,
    BatchCreated,
    BatchOut,
    BatchList,
    BatchRetryRequest,
    BatchRetried,
    BatchCanceled,
    BatchResultLine,
    DeliveryList,
    RedeliverRequest,
    RedeliveryQueued,
    EndpointList,
    EndpointOut,
    Purged,
    Health,
    Readiness,
]


def build_document(settings: Settings, url_map: Map | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for a server running with ``settings`` and the routes of
    ``url_map``: by default those of the app serving the current request or, outside a
    request (the docs site, tests), those of the API's blueprints. Raises
    :class:`RouteMismatch` when an API route has no operation or an operation no route."""
    paths = _paths(url_map if url_map is not None else _default_url_map(settings))
    _, top = models_json_schema([(model, _mode(model)) for model in _MODELS], ref_template=REF)
    schemas: dict[str, Any] = top["$defs"]
    _apply_limits(schemas["JobSubmission"], settings)
    schemas["JobSubmissionForm"] = _form_schema(schemas["JobSubmission"], settings)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sightline",
            "version": "1",
            "summary": "Asynchronous vision-language inference jobs.",
            "description": (
                "Submit an image and a prompt; a GPU worker answers. Every error is "
                "`application/problem+json` (RFC 9457) with a stable `code`."
            ),
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key from ``sightline keys create NAME``.",
                }
            },
        },
        "paths": paths,
    }


class RouteMismatch(RuntimeError):
    """The app's routes and the operations described here disagree."""


# Routes that are not part of the HTTP API, so not in the document: the operator's console
# (HTML pages), Swagger UI's page and files, Prometheus' scrape, Flask's static files.
# Every other route needs an operation in :func:`_operations`.
NOT_API_BLUEPRINTS = frozenset({"console"})
NOT_API_ENDPOINTS = frozenset({"static", "metrics.scrape", "docs.page", "docs.start", "docs.asset"})
# Methods Flask adds on its own (OPTIONS to every route, HEAD beside GET); an operation
# describes the one method its view serves.
_IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})


def _is_api_endpoint(endpoint: str) -> bool:
    """Whether the route of Flask ``endpoint`` belongs in the document."""
    return endpoint not in NOT_API_ENDPOINTS and endpoint.split(".")[0] not in NOT_API_BLUEPRINTS


def _openapi_path(rule: Rule) -> str:
    """A Flask rule as an OpenAPI path: ``/v1/jobs/<job_id>`` is ``/v1/jobs/{job_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule)


def _default_url_map(settings: Settings) -> Map:
    """The routes of the app serving the current request; outside a request, those of an
    app of the API's blueprints (``create_app`` registers them too, beside the console and
    ``/metrics``, which are not in the document; ``tests/unit/test_openapi.py`` checks that
    both give one document). Its services are real but store nowhere: an in-memory
    database and a scratch blob directory, neither ever used, since only routes are read."""
    if has_app_context():
        return current_app.url_map
    # Imported here: api.docs, which serves the document, imports this module.
    from api.batches import batches
    from api.context import Services
    from api.deliveries import deliveries, tenant_deliveries
    from api.docs import docs
    from api.endpoints import endpoints
    from api.health import health
    from api.jobs import jobs
    from api.streams import streams

    app = Flask("sightline-openapi", static_folder=None)
    with tempfile.TemporaryDirectory(prefix="sightline-openapi-") as scratch:
        scratch_settings = settings.model_copy(
            update={"database_url": "sqlite://", "blob_url": scratch}
        )
        services = Services.build(scratch_settings)
        app.extensions["sightline"] = services  # blueprints find it when registered
        for blueprint in (
            health,
            jobs,
            streams,
            deliveries,
            tenant_deliveries,
            endpoints,
            docs,
            batches,
        ):
            app.register_blueprint(blueprint)
        services.engine.dispose()
    return app.url_map


def _paths(url_map: Map) -> dict[str, Any]:
    """The document's paths: one operation per API route of ``url_map``, in the order of
    :func:`_operations`; path parameters from the rule's arguments."""
    rules: dict[str, Rule] = {}
    for rule in url_map.iter_rules():
        if not _is_api_endpoint(rule.endpoint):
            continue
        if rule.endpoint in rules:
            raise RouteMismatch(f"{rule.endpoint} serves two paths; describe one per view")
        rules[rule.endpoint] = rule
    operations = _operations()
    undocumented = [
        f"{r.rule} ({r.endpoint})" for r in rules.values() if r.endpoint not in operations
    ]
    if undocumented:
        raise RouteMismatch(
            f"served but not in the OpenAPI document: {', '.join(undocumented)}; give each an "
            "operation in api/openapi.py, or list it there as not part of the API"
        )
    unserved = [endpoint for endpoint in operations if endpoint not in rules]
    if unserved:
        raise RouteMismatch(f"described but not served: {', '.join(unserved)}")
    paths: dict[str, Any] = {}
    for endpoint, operation in operations.items():
        rule = rules[endpoint]
        methods = sorted((rule.methods or set()) - _IMPLICIT_METHODS)
        if len(methods) != 1:
            raise RouteMismatch(f"{rule.rule} ({endpoint}) serves {methods}; describe one method")
        item = paths.setdefault(_openapi_path(rule), {})
        if rule.arguments and "parameters" not in item:
            unknown = sorted(rule.arguments - set(_PATH_PARAMETERS))
            if unknown:
                raise RouteMismatch(f"{rule.rule}: describe path parameter(s) {unknown}")
            item["parameters"] = [_PATH_PARAMETERS[name] for name in sorted(rule.arguments)]
        item[methods[0].lower()] = operation
    return paths


def _path_parameter(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "format": "uuid"},
    }


_PATH_PARAMETERS = {
    "job_id": _path_parameter(
        "job_id", "A job id as returned by ``POST /v1/jobs``; any other value is 404."
    ),
    "batch_id": _path_parameter(
        "batch_id", "A batch id as returned by ``POST /v1/batches``; any other value is 404."
    ),
    "endpoint_id": _path_parameter(
        "endpoint_id",
        "A webhook endpoint id as listed by ``GET /v1/endpoints``; any other value is 404.",
    ),
}


_PURGE = {
    "name": "purge",
    "in": "query",
    "description": (
        "``true``: erase instead of cancel, canceling first what is not final; the id "
        "answers 404 from then on. Any value but ``true`` or ``false`` is 422."
    ),
    "schema": {"type": "boolean", "default": False},
}


def _operations() -> dict[str, dict[str, Any]]:
    """Each API route's operation, by the Flask endpoint of its view; the document lists
    them in this order (Swagger UI's order)."""
    jobs_v1 = "Jobs"
    return {
        "jobs.create_job": _operation(
            "createJob",
            jobs_v1,
            "Submit a job",
            ok={
                202: ("Accepted: the job is queued.", "JobOut", _location("job")),
                200: ("The original job of a repeated Idempotency-Key.", "JobOut", None),
            },
            errors=[400, 401, 413, 415, 422, 503],
            parameters=[_IDEMPOTENCY_KEY],
            body=_submission_body(),
        ),
        "jobs.list_jobs": _operation(
            "listJobs",
            jobs_v1,
            "List the jobs of the caller's tenant, newest first",
            ok={200: ("One page of jobs.", "JobList", None)},
            errors=[401, 422, 503],
            parameters=_list_parameters(),
        ),
        "jobs.get_job": _operation(
            "getJob",
            jobs_v1,
            "Read a job; ?wait=N (≤ 60 s) long-polls, answered at once over the wait cap",
            ok={200: ("The job.", "JobOut", None)},
            errors=[401, 404, 503],
        ),
        "jobs.delete_job": _operation(
            "cancelJob",
            jobs_v1,
            "Cancel a queued or running job; ?purge=true erases it, whatever its state",
            ok={
                200: (
                    "The job, now canceled; with ?purge=true, what was erased.",
                    "JobOut | Purged",
                    None,
                )
            },
            errors=[401, 404, 409, 422, 503],
            parameters=[_PURGE],
        ),
        "deliveries.list_deliveries": _operation(
            "listDeliveries",
            "Webhooks",
            "A job's webhook events and delivery attempts",
            ok={200: ("Events, oldest first.", "Deliveries", None)},
            errors=[401, 404, 503],
        ),
        "deliveries.redeliver": _operation(
            "redeliver",
            "Webhooks",
            "Send a job's webhook events again, with the same webhook-id",
            ok={202: ("Redelivery queued.", "Redelivery", None)},
            errors=[401, 404, 409, 503],
        ),
        "tenant_deliveries.list_tenant_deliveries": _operation(
            "listTenantDeliveries",
            "Webhooks",
            "The tenant's webhook events, newest first (?status=failed: those to look at)",
            ok={200: ("One page of events.", "DeliveryList", None)},
            errors=[401, 422, 503],
            parameters=_page_parameters(
                "Only events in this status.", [s.value for s in EventStatus]
            ),
        ),
        "tenant_deliveries.redeliver_range": _operation(
            "redeliverRange",
            "Webhooks",
            "Send the failed and kept events created in [since, until) again; idempotent",
            ok={202: ("Redelivery queued.", "RedeliveryQueued", None)},
            errors=[400, 401, 413, 422, 503],
            body=_json_body("RedeliverRequest"),
        ),
        "endpoints.list_endpoints": _operation(
            "listEndpoints",
            "Webhooks",
            "The tenant's webhook endpoints and their health (disabled ones first)",
            ok={200: ("Every endpoint.", "EndpointList", None)},
            errors=[401, 503],
        ),
        "endpoints.enable": _operation(
            "enableEndpoint",
            "Webhooks",
            "Enable a disabled endpoint again (then redeliver its kept events)",
            ok={200: ("The endpoint.", "EndpointOut", None)},
            errors=[401, 404, 503],
        ),
        "batches.create_batch": _operation(
            "createBatch",
            "Batches",
            "Submit many jobs at once (bulk priority); invalid items are reported",
            ok={
                202: ("Accepted and rejected items, by index.", "BatchCreated", _location("batch"))
            },
            errors=[400, 401, 413, 415, 422, 503],
            body=_batch_body(),
        ),
        "batches.list_batches": _operation(
            "listBatches",
            "Batches",
            "List the batches of the caller's tenant, newest first",
            ok={200: ("One page of batches.", "BatchList", None)},
            errors=[401, 422, 503],
            parameters=_page_parameters(
                "open: an item is queued or running; completed: every item ended.",
                list(BATCH_STATES),
            ),
        ),
        "batches.retry": _operation(
            "retryBatch",
            "Batches",
            "Run the failed items again as a new batch (retry_of the original)",
            ok={
                202: ("The new batch's items, by index.", "BatchRetried", _location("batch")),
            },
            errors=[400, 401, 404, 409, 413, 422, 503],
            body=_json_body("BatchRetryRequest", required=False),
        ),
        "batches.get_batch": _operation(
            "getBatch",
            "Batches",
            "A batch's progress and counts by status",
            ok={200: ("The batch.", "BatchOut", None)},
            errors=[401, 404, 503],
        ),
        "batches.cancel_batch": _operation(
            "cancelBatch",
            "Batches",
            "Cancel the unfinished jobs of a batch, running ones too; ?purge=true erases it",
            ok={
                200: (
                    "The batch, with what was canceled; with ?purge=true, what was erased.",
                    "BatchCanceled | Purged",
                    None,
                )
            },
            errors=[401, 404, 422, 503],
            parameters=[_PURGE],
        ),
        "batches.batch_results": _operation(
            "batchResults",
            "Batches",
            "Finished items as NDJSON, one line per item in item order",
            ok={200: ("Streamed results.", "BatchResultLine", None)},
            errors=[401, 404, 503],
            media_type=NDJSON,
        ),
        "streams.job_events": _operation(
            "streamJob",
            jobs_v1,
            "Server-sent events: status, text deltas as they are written, then the job",
            ok={200: (_JOB_EVENTS, "JobOut", None)},
            errors=[401, 404, 503],
            parameters=[_LAST_EVENT_ID],
            media_type=EVENT_STREAM,
        ),
        "streams.batch_events": _operation(
            "streamBatch",
            "Batches",
            "Server-sent events: progress and each item's end, then the batch",
            ok={200: (_BATCH_EVENTS, "BatchOut", None)},
            errors=[401, 404, 503],
            parameters=[_LAST_EVENT_ID],
            media_type=EVENT_STREAM,
        ),
        "health.healthz": _operation(
            "healthz",
            "Health",
            "Liveness",
            ok={200: ("The process is up.", "Health", None)},
            errors=[],
            public=True,
        ),
        "health.readyz": _operation(
            "readyz",
            "Health",
            "Readiness: the database and the broker answer",
            ok={200: ("Ready.", "Readiness", None)},
            errors=[503],
            public=True,
        ),
        "docs.openapi_json": {
            "operationId": "openapi",
            "tags": ["Meta"],
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        },
    }


def _mode(model: type[BaseModel]) -> Any:
    """Request bodies are documented as validated, responses as serialised."""
    return "validation" if model in (JobSubmission, BatchRequest, BatchItem) else "serialization"


def _apply_limits(schema: dict[str, Any], settings: Settings) -> None:
    """Write the settings-enforced ceilings into the JSON body's field schemas."""
    props = schema["properties"]
    _non_null(props["prompt"])["maxLength"] = settings.max_prompt_chars
    _non_null(props["max_new_tokens"])["maximum"] = settings.max_new_tokens_limit
    _non_null(props["timeout_s"])["maximum"] = settings.max_timeout_s
    props["image"]["description"] += _image_limits(settings)


def _image_limits(settings: Settings) -> str:
    return (
        f" At most {settings.max_image_bytes} bytes (decoded), "
        f"{settings.max_image_pixels} pixels and {settings.max_image_frames} frames; "
        "only the first frame is used."
    )


def _non_null(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an ``X | None`` field's schema (or the schema itself)."""
    branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
    return branches[0] if len(branches) == 1 else prop


def _form_schema(json_body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The multipart form equivalent of the JSON body's schema: a form has no null (a
    field is left out instead), arrays are comma-separated, objects are JSON text."""
    form = copy.deepcopy(json_body)
    form["title"] = "JobSubmissionForm"
    form["description"] = "``POST /v1/jobs`` as multipart/form-data: an image part and fields."
    properties: dict[str, Any] = {}
    for name, prop in form["properties"].items():
        if name == "image":
            properties[name] = {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "format": "binary",  # what Swagger UI turns into a file picker
                "description": (
                    f"The image file ({', '.join(ACCEPTED_FORMATS)}); its name and content "
                    "type are ignored, the bytes decide." + _image_limits(settings)
                ),
            }
            continue
        value = _non_null(prop)
        field = {key: prop[key] for key in ("title", "description") if key in prop}
        if prop.get("default") is not None:
            field["default"] = prop["default"]
        if value.get("type") == "array":  # the model's validator splits on commas
            field["type"] = "string"
        elif value.get("type") in ("string", "integer", "number", "boolean"):
            field = {**value, **field}
        else:  # an object or a union of objects
            field |= {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": value,
            }
        properties[name] = field
    form["properties"] = properties
    return form


def _submission_body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"$ref": REF.format(model="JobSubmissionForm")},
                "encoding": {"image": {"contentType": _IMAGE_TYPES}},
            },
            "application/json": {
                "schema": {"$ref": REF.format(model="JobSubmission")},
                "example": {"prompt": "What is in this picture?", "image": EXAMPLE_PNG_BASE64},
            },
        },
    }


def _ndjson(model: str, description: str) -> dict[str, Any]:
    """An NDJSON media type, one ``model`` object per line. OpenAPI 3.1 has no schema for
    a stream's items (3.2's ``itemSchema``), so the line schema is ``x-itemSchema``."""
    return {
        "schema": {"type": "string", "description": description},
        "x-itemSchema": {"$ref": REF.format(model=model)},
    }


def _event_stream(final: str) -> dict[str, Any]:
    """A ``text/event-stream`` whose ``done`` event carries ``final`` (the other events
    are described in the operation's description; ``x-finalEventSchema`` names the last)."""
    return {
        "schema": {"type": "string", "description": "Server-sent events (HTML standard)."},
        "x-finalEventSchema": {"$ref": REF.format(model=final)},
    }


_JOB_EVENTS = (
    "A stream of `status` ({status, worker, attempt}), `delta` ({part: reasoning|answer, "
    "text}), `reset` ({attempt, reason}: forget the text so far) and a last `done` (the "
    "job as getJob returns it). Event ids are `attempt-claim-reasoning_chars-answer_chars`; "
    "send the last one as Last-Event-ID to resume without loss or repetition. 429 "
    "`too_many_streams` over the tenant's stream cap."
)
_BATCH_EVENTS = (
    "A stream of `progress` (the batch as getBatch returns it), `item` (one finished item, "
    "as a line of batchResults) and a last `done` (the completed batch). An item event's id "
    "resumes after that item. 429 `too_many_streams` over the tenant's stream cap."
)
_LAST_EVENT_ID = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": "The id of the last event received: the stream resumes after it.",
    "schema": {"type": "string", "maxLength": 64},
}


def _batch_body() -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": REF.format(model="BatchRequest")}},
            NDJSON: _ndjson(
                "BatchItem",
                "One BatchItem (a JSON object) per line; the callback URL goes in the "
                "``callback_url`` query parameter.",
            ),
        },
    }


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retried submission return the original job (200) instead of a new one; "
        "1 to 255 printable characters, scoped to the API key."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def _location(what: str) -> dict[str, Any]:
    return {
        "Location": {
            "description": f"The {what}'s URL.",
            "schema": {"type": "string", "format": "uri-reference"},
        }
    }


def _list_parameters() -> list[dict[str, Any]]:
    def query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "description": description, "schema": schema}

    return [
        query("status", "Only jobs in this status.", {"enum": [s.value for s in JobStatus]}),
        query("action", "Only jobs whose preset decided this action.", {"type": "string"}),
        query("batch_id", "Only the items of this batch.", {"type": "string", "format": "uuid"}),
        query(
            "model_revision",
            "Only jobs answered by this model revision (exact match; see the job's "
            "``model_revision``).",
            {"type": "string", "minLength": 1, "maxLength": 64},
        ),
        query(
            "policy_version",
            "Only jobs whose action this policy version decided (exact match).",
            {"type": "string", "minLength": 1, "maxLength": 64},
        ),
        query(
            "created_after",
            "Only jobs created after this ISO 8601 time (with a time zone).",
            {"type": "string", "format": "date-time"},
        ),
        query("limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}),
        query("cursor", "``next_cursor`` of the previous page.", {"type": "string"}),
    ]


def _page_parameters(status: str, statuses: list[str]) -> list[dict[str, Any]]:
    """``status``, ``limit`` and ``cursor`` of a paginated list."""
    return [
        {"name": "status", "in": "query", "description": status, "schema": {"enum": statuses}},
        *[p for p in _list_parameters() if p["name"] in ("limit", "cursor")],
    ]


def _json_body(model: str, *, required: bool = True) -> dict[str, Any]:
    return {
        "required": required,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=model)}}},
    }


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    *,
    ok: dict[int, tuple[str, str, dict[str, Any] | None]],
    errors: list[int],
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    public: bool = False,
    media_type: str = "application/json",
) -> dict[str, Any]:
    """One operation; ``ok`` maps a success status to (description, response model,
    headers); ``"A | B"`` names either of two models. An NDJSON answer is a stream of
    the model, one object per line."""
    responses: dict[str, Any] = {}
    for status, (description, model, headers) in ok.items():
        if media_type == NDJSON:
            content = _ndjson(model, f"One {model} (a JSON object) per line.")
        elif media_type == EVENT_STREAM:
            content = _event_stream(model)
        else:
            refs = [{"$ref": REF.format(model=name)} for name in model.split(" | ")]
            content = {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}
        response: dict[str, Any] = {
            "description": description,
            "content": {media_type: content},
        }
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    # Every authenticated route counts against the key's rate limit; any route can fail.
    for status in [*errors, *([] if public else [429]), 500]:
        # Per status, the codes any route may answer (shared.error_codes, the one registry).
        codes = ", ".join(f"`{code}`" for code in api_codes(status))
        responses[str(status)] = {
            "description": f"Problem; `code` is one of {codes}.",
            "content": {PROBLEM_MIMETYPE: {"schema": {"$ref": REF.format(model="Problem")}}},
        }
        if status == 429:
            responses["429"]["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [tag],
        "summary": summary,
        "security": [] if public else [{"bearerAuth": []}],
        "responses": responses,
    }
    if parameters:
        operation["parameters"] = parameters
    if body:
        operation["requestBody"] = body
    return operation
