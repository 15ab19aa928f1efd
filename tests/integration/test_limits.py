"""Per-key limits and key management: 429 with Retry-After, revocation, expiry, listing."""

from __future__ import annotations

import base64
import json
import time

import requests

from tests.stack import Stack, make_image


def _key(stack: Stack, name: str, *options: str) -> str:
    return str(json.loads(stack.cli("keys", "create", name, "--json", *options))["key"])


def _get(stack: Stack, key: str) -> requests.Response:
    return stack.call("GET", "/v1/jobs", key=key, timeout=10)


def test_rate_limit_answers_429_then_lets_requests_through_after_the_window(
    pg_stack: Stack,
) -> None:
    key = _key(pg_stack, "limited", "--rate-limit", "3/2")
    # Start at the beginning of a 2-second window so the first three land in one window.
    time.sleep(2 - time.time() % 2)
    assert [_get(pg_stack, key).status_code for _ in range(3)] == [200, 200, 200]

    refused = _get(pg_stack, key)

    assert refused.status_code == 429
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    assert _get(pg_stack, pg_stack.key).status_code == 200, "other keys are not affected"
    time.sleep(retry_after)
    assert _get(pg_stack, key).status_code == 200


def test_queue_cap_answers_429_until_a_job_leaves_the_queue(pg_stack: Stack) -> None:
    key = _key(pg_stack, "capped", "--max-queued", "2")
    client = pg_stack.client(key)
    first = client.submit(make_image(1), "one")["id"]
    client.submit(make_image(2), "two")

    refused = requests.post(
        f"{pg_stack.url}/v1/jobs",
        files={"image": ("a.png", make_image(3))},
        data={"prompt": "three"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    batch = requests.post(
        f"{pg_stack.url}/v1/batches",
        json={"items": [{"image": base64.b64encode(make_image(4)).decode(), "prompt": "x"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )

    assert refused.status_code == 429 and refused.json()["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) > 0
    assert batch.status_code == 429
    requests.delete(
        f"{pg_stack.url}/v1/jobs/{first}", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert client.submit(make_image(3), "three")["status"] == "queued"
    assert len(pg_stack.jobs()) == 3


def test_revoked_and_expired_keys_are_refused_and_listing_shows_no_secrets(pg_stack: Stack) -> None:
    revoked = _key(pg_stack, "to-revoke")
    expiring = _key(pg_stack, "short-lived", "--expires-in", "1")
    assert _get(pg_stack, revoked).status_code == 200
    pg_stack.cli("keys", "revoke", "to-revoke")
    # API processes trust a key they have seen for key_cache_s; the expiring key lives 1 s.
    time.sleep(max(pg_stack.settings.key_cache_s, 1.0) + 0.2)

    for key in (revoked, expiring):
        response = _get(pg_stack, key)
        assert response.status_code == 401
        assert key not in response.text
    listed = json.loads(pg_stack.cli("keys", "list", "--json"))
    by_name = {row["name"]: row for row in listed}
    assert by_name["to-revoke"]["revoked_at"] is not None
    assert by_name["short-lived"]["expires_at"] is not None
    assert by_name["to-revoke"]["prefix"] == revoked[:10]
    text = json.dumps(listed)
    assert revoked not in text and "whsec_" not in text and "sha256" not in text
