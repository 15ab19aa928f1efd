"""Tenant isolation on every route: a tenant's keys share its jobs, batches, deliveries,
idempotency keys, queue and webhook secret; another tenant's ids answer 404, never 403,
and no listing shows them."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.stack import Stack, make_image


@dataclass(frozen=True)
class Caller:
    """One API key, as ``sightline keys create --json`` printed it."""

    stack: Stack
    created: dict[str, Any]

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.stack.call(method, path, key=self.created["key"], timeout=10, **kwargs)


@dataclass(frozen=True)
class Tenants:
    """``owner`` and ``colleague``: two keys of one tenant; ``rival``: another tenant's."""

    owner: Caller
    colleague: Caller
    rival: Caller


def _create(stack: Stack, name: str, *options: str) -> Caller:
    return Caller(stack, json.loads(stack.cli("keys", "create", name, "--json", *options)))


@pytest.fixture
def tenants(pg_stack: Stack) -> Tenants:
    suffix = uuid.uuid4().hex[:6]
    owner = _create(pg_stack, f"acme-{suffix}")
    colleague = _create(pg_stack, f"acme-ci-{suffix}", "--tenant", f"acme-{suffix}")
    return Tenants(owner, colleague, _create(pg_stack, f"rival-{suffix}"))


def _submit(caller: Caller, prompt: str, **headers: str) -> requests.Response:
    return caller.call(
        "POST",
        "/v1/jobs",
        files={"image": ("a.png", make_image(len(prompt)))},
        data={"prompt": prompt, "callback_url": "http://127.0.0.1:9/hook"},
        headers=headers,
    )


def _batch(caller: Caller) -> dict[str, Any]:
    image = base64.b64encode(make_image(3)).decode()
    answer = caller.call(
        "POST", "/v1/batches", json={"items": [{"image": image, "prompt": "p"}] * 2}
    )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def _assert_not_found(answer: requests.Response) -> None:
    assert answer.status_code == 404, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["code"] == "not_found"


def test_keys_of_one_tenant_share_it_and_its_webhook_secret(tenants: Tenants) -> None:
    owner, colleague, rival = (c.created for c in (tenants.owner, tenants.colleague, tenants.rival))
    assert owner["tenant_id"] == colleague["tenant_id"] != rival["tenant_id"]
    assert owner["webhook_secret"] == colleague["webhook_secret"] != rival["webhook_secret"]
    keys = json.loads(tenants.owner.stack.cli("keys", "list", "--json"))
    listed = {row["name"]: row["tenant"] for row in keys}
    assert listed[colleague["name"]] == owner["name"]


def test_another_tenants_job_is_not_found_on_any_job_route(tenants: Tenants) -> None:
    job_id = _submit(tenants.owner, "private").json()["id"]

    _assert_not_found(tenants.rival.call("GET", f"/v1/jobs/{job_id}"))
    _assert_not_found(tenants.rival.call("GET", f"/v1/jobs/{job_id}?wait=1"))
    _assert_not_found(tenants.rival.call("GET", f"/v1/jobs/{job_id}/deliveries"))
    _assert_not_found(tenants.rival.call("POST", f"/v1/jobs/{job_id}/deliveries/redeliver"))
    _assert_not_found(tenants.rival.call("DELETE", f"/v1/jobs/{job_id}"))
    assert tenants.rival.call("GET", "/v1/jobs").json()["jobs"] == []

    assert tenants.colleague.call("GET", f"/v1/jobs/{job_id}").json()["status"] == "queued"
    assert tenants.colleague.call("GET", f"/v1/jobs/{job_id}/deliveries").status_code == 200
    listed = tenants.colleague.call("GET", "/v1/jobs").json()["jobs"]
    assert [job["id"] for job in listed] == [job_id]
    assert tenants.colleague.call("DELETE", f"/v1/jobs/{job_id}").json()["status"] == "canceled"


def test_another_tenants_batch_is_not_found_on_any_batch_route(tenants: Tenants) -> None:
    batch = _batch(tenants.owner)
    path = f"/v1/batches/{batch['id']}"

    _assert_not_found(tenants.rival.call("GET", path))
    _assert_not_found(tenants.rival.call("GET", f"{path}/results"))
    _assert_not_found(tenants.rival.call("DELETE", path))
    assert tenants.rival.call("GET", f"/v1/jobs?batch_id={batch['id']}").json()["jobs"] == []

    assert tenants.colleague.call("GET", path).json()["counts"]["queued"] == 2
    by_batch = tenants.colleague.call("GET", f"/v1/jobs?batch_id={batch['id']}").json()["jobs"]
    assert len(by_batch) == 2
    assert tenants.colleague.call("DELETE", path).status_code == 200
    assert tenants.owner.call("GET", path).json()["counts"]["canceled"] == 2


def test_idempotency_keys_are_shared_within_a_tenant_only(tenants: Tenants) -> None:
    first = _submit(tenants.owner, "once", **{"Idempotency-Key": "order-7"})
    again = _submit(tenants.colleague, "once", **{"Idempotency-Key": "order-7"})
    elsewhere = _submit(tenants.rival, "once", **{"Idempotency-Key": "order-7"})

    assert (first.status_code, again.status_code, elsewhere.status_code) == (202, 200, 202)
    assert again.json()["id"] == first.json()["id"] != elsewhere.json()["id"]


def test_queue_cap_counts_the_whole_tenants_queue(tenants: Tenants, pg_stack: Stack) -> None:
    for prompt in ("one", "two"):
        assert _submit(tenants.owner, prompt).status_code == 202
    tenant = tenants.owner.created["name"]
    capped = _create(pg_stack, f"{tenant}-capped", "--tenant", tenant, "--max-queued", "2")

    refused = _submit(capped, "three")

    assert refused.status_code == 429 and refused.json()["code"] == "queue_full"
    assert _submit(tenants.rival, "elsewhere").status_code == 202, "other tenants unaffected"


def test_a_key_cannot_join_a_tenant_by_accident(pg_stack: Stack, tenants: Tenants) -> None:
    taken = tenants.owner.created["name"]
    for options in ([taken], ["new-key", "--tenant", "no-such-tenant"]):
        done = pg_stack.cli_result("keys", "create", *options)
        assert done.returncode == 2
        assert "tenant" in done.stderr
