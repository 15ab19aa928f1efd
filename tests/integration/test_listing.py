"""``GET /v1/jobs``: keyset pagination that stays exact while jobs keep arriving."""

from __future__ import annotations

from typing import Any

import requests

from tests.stack import Stack, make_image


def _list(stack: Stack, **params: Any) -> requests.Response:
    return requests.get(
        f"{stack.url}/v1/jobs",
        params=params,
        headers={"Authorization": f"Bearer {stack.key}"},
        timeout=10,
    )


def test_pages_cover_every_job_once_while_new_ones_arrive(pg_stack: Stack) -> None:
    client = pg_stack.client()
    original = [client.submit(make_image(i), f"job {i}")["id"] for i in range(30)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7} | ({"cursor": cursor} if cursor else {})
        page = _list(pg_stack, **params).json()
        seen += [job["id"] for job in page["jobs"]]
        client.submit(make_image(99), "arrived while paging")  # newer than every page
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == list(reversed(original)), "newest first, each exactly once"


def test_filters_and_bad_queries(pg_stack: Stack) -> None:
    client = pg_stack.client()
    kept = client.submit(make_image(1), "keep")["id"]
    gone = client.submit(make_image(2), "cancel")["id"]
    requests.delete(
        f"{pg_stack.url}/v1/jobs/{gone}",
        headers={"Authorization": f"Bearer {pg_stack.key}"},
        timeout=10,
    )
    assert [j["id"] for j in _list(pg_stack, status="canceled").json()["jobs"]] == [gone]
    assert [j["id"] for j in _list(pg_stack, status="queued").json()["jobs"]] == [kept]
    created = client.get(kept)["created_at"]
    assert [j["id"] for j in _list(pg_stack, created_after=created).json()["jobs"]] == [gone]
    for bad in (
        {"status": "done"},
        {"limit": "0"},
        {"limit": "9999"},
        {"cursor": "nonsense"},
        {"created_after": "yesterday"},
        {"sort": "asc"},
        {"action": "maybe"},
    ):
        response = _list(pg_stack, **bad)
        assert response.status_code == 422, bad
        assert response.json()["code"] == "invalid_query"
