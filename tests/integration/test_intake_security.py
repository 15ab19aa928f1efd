"""Intake hardening from the security review (issue 15): batch bodies, downloads and item
rate bounded; batch text checked like single jobs; constraint races answered 409; the
result cache kept inside a tenant; the console rate-limited; refused or repeated requests
storing no image.

Settings too large to hit quickly (download budget, intake deadline, item rate) are
lowered on a second API process over the same PostgreSQL stack (:func:`tight_api`).
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from cli.processes import start_api, stop, wait_http_ok
from cli.redis_server import free_port
from tests.stack import Stack, make_image

# Lowered limits of the tight API (see the module docstring).
TIGHT = {
    "SIGHTLINE_MAX_BATCH_ITEMS": "10",  # so the body's value budget is 10 x 100
    "SIGHTLINE_BATCH_ITEM_RATE_LIMIT": "5/3600",
    "SIGHTLINE_BATCH_DOWNLOAD_BUDGET_BYTES": "1024",
    "SIGHTLINE_IMAGE_FETCH_CONCURRENCY": "1",
    "SIGHTLINE_BATCH_INTAKE_DEADLINE_S": "1.5",
}
# How long the image server's /slow.png makes its caller wait.
SLOW_S = 5.0


@pytest.fixture(scope="module")
def tight_api(_stacks: dict[str, Stack]) -> Iterator[str]:
    """The URL of an API process with :data:`TIGHT` limits over the PostgreSQL stack."""
    stack = _stacks["postgresql"]
    port = free_port()
    process = start_api(
        {**stack.env, **TIGHT}, port, stack.workdir / "logs" / "tight-api.log", workers=1
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/readyz", timeout_s=60, process=process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def _noisy_png(seed: int) -> bytes:
    """A PNG that does not compress (tens of kilobytes): over the tight download budget."""
    pixels = random.Random(seed).randbytes(120 * 90 * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (120, 90), pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """``/big-N.png`` (an incompressible image) at once, ``/slow.png`` after
    :data:`SLOW_S` seconds; on 127.0.0.1."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/slow.png":
                time.sleep(SLOW_S)
                body = make_image(7)
            else:
                body = _noisy_png(int(re.sub(r"\D", "", self.path) or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _key(stack: Stack, name: str, *options: str) -> str:
    unique = f"{name}-{uuid.uuid4().hex[:6]}"
    return str(json.loads(stack.cli("keys", "create", unique, "--json", *options))["key"])


def _b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


def _post_batch(url: str, key: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
    return requests.post(f"{url}/v1/batches", headers=headers, timeout=60, **kwargs)


def _rejected(response: requests.Response) -> dict[int, str]:
    assert response.status_code == 202, response.text
    return {r["index"]: r["code"] for r in response.json()["rejected"]}


def _blob_count(stack: Stack) -> int:
    root = stack.env["SIGHTLINE_BLOB_URL"]
    if "://" in root:
        pytest.skip("counts files of a local blob directory")
    return sum(1 for path in Path(root).rglob("*") if path.is_file())


# --- item 4: batch intake bounds ---------------------------------------------------------


def test_batch_bodies_get_the_json_shape_prescan(pg_stack: Stack, tight_api: str) -> None:
    """Deep nests and bodies of many tiny values are refused before they are parsed,
    in JSON and NDJSON alike (these came through before: a 2,000-value metadata fits
    its 4 KiB limit)."""
    key = _key(pg_stack, "prescan")
    item: dict[str, Any] = {"image": _b64(make_image(1)), "prompt": "x"}
    deep = _post_batch(
        tight_api, key, json={"items": [item | {"metadata": json.loads("[" * 80 + "]" * 80)}]}
    )
    wide = item | {"metadata": [0] * 2000}
    wide_json = _post_batch(tight_api, key, json={"items": [wide]})
    wide_ndjson = _post_batch(
        tight_api,
        key,
        data=json.dumps(wide) + "\n",
        headers={"Content-Type": "application/x-ndjson"},
    )

    assert deep.status_code == 400 and deep.json()["code"] == "json_too_deep", deep.text
    assert deep.headers["Content-Type"] == "application/problem+json"
    for response in (wide_json, wide_ndjson):
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "json_too_complex"
    assert pg_stack.jobs() == []


def test_batch_items_count_against_a_per_key_item_rate(pg_stack: Stack, tight_api: str) -> None:
    """5 items per window (tight API): 3 pass, 3 more are refused whole with 429 and
    Retry-After (and not counted), 2 more pass; another key has its own window."""
    key = _key(pg_stack, "items")

    def batch(size: int, for_key: str = key) -> requests.Response:
        items = [{"image": _b64(make_image(i)), "prompt": f"item {i}"} for i in range(size)]
        return _post_batch(tight_api, for_key, json={"items": items})

    assert batch(3).status_code == 202
    refused = batch(3)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert refused.json()["code"] == "item_rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert batch(2).status_code == 202, "a refused batch does not use up the window"
    assert batch(3, _key(pg_stack, "items-other")).status_code == 202
    assert len(pg_stack.jobs()) == 8


def test_batch_downloads_stop_at_the_byte_budget(
    pg_stack: Stack, tight_api: str, image_server: str
) -> None:
    """With a 1 KiB budget and one download at a time, the first two downloads (started
    before the first finished) are taken and the rest refused, each by index."""
    key = _key(pg_stack, "budget")
    items = [{"image_url": f"{image_server}/big-{i}.png", "prompt": f"b{i}"} for i in range(4)]
    answer = _post_batch(tight_api, key, json={"items": items})

    assert _rejected(answer) == {2: "batch_download_budget", 3: "batch_download_budget"}
    assert [a["index"] for a in answer.json()["accepted"]] == [0, 1]
    detail = answer.json()["rejected"][0]["detail"]
    assert "1024 bytes" in detail and "another batch" in detail


def test_batch_downloads_share_one_intake_deadline(
    pg_stack: Stack, tight_api: str, image_server: str
) -> None:
    """A server slower than the intake deadline (1.5 s here) costs its item, not the
    batch, and the request does not wait for it."""
    key = _key(pg_stack, "deadline")
    items = [
        {"image_url": f"{image_server}/slow.png", "prompt": "slow"},
        {"image": _b64(make_image(2)), "prompt": "inline"},
    ]
    started = time.monotonic()
    answer = _post_batch(tight_api, key, json={"items": items})
    took_s = time.monotonic() - started

    print(f"batch with a {SLOW_S:g} s image server answered in {took_s:.2f} s")
    assert _rejected(answer) == {0: "intake_deadline"}
    assert "1.5 s" in answer.json()["rejected"][0]["detail"]


# --- item 6: the result cache --------------------------------------------------------------


def test_result_cache_stays_inside_a_tenant_and_skips_sampled_answers(pg_stack: Stack) -> None:
    owner = pg_stack.client()
    rival = pg_stack.client(_key(pg_stack, "rival-tenant"))
    pg_stack.start_worker()
    image, prompt = make_image(11), "cache within tenant"
    first = owner.wait(owner.submit(image, prompt, max_new_tokens=4)["id"])
    rivals = rival.wait(rival.submit(image, prompt, max_new_tokens=4)["id"])
    again = owner.wait(owner.submit(image, prompt, max_new_tokens=4)["id"])
    sampled = [
        owner.wait(owner.submit(image, prompt, max_new_tokens=4, temperature="0.7")["id"])
        for _ in range(2)
    ]

    assert first["cached"] is False
    assert rivals["cached"] is False and rivals["batch_size"] == 1, "another tenant's answer"
    assert again["cached"] is True, "the cache still works inside the tenant"
    assert [job["cached"] for job in sampled] == [False, False], "a sample is never reused"


# --- item 9: the console -------------------------------------------------------------------


def test_console_submissions_count_against_the_key_rate_limit(pg_stack: Stack) -> None:
    key = _key(pg_stack, "console-limited", "--rate-limit", "2/3600")
    browser = requests.Session()
    page = browser.get(f"{pg_stack.url}/console/sign-in", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    signed_in = browser.post(
        f"{pg_stack.url}/console/sign-in",
        data={"api_key": key, "csrf_token": token[1]},
        allow_redirects=False,
        timeout=10,
    )
    assert signed_in.status_code == 302
    ask = browser.get(f"{pg_stack.url}/console/ask", timeout=10)
    token = re.search(r'name="csrf-token" content="([^"]+)"', ask.text)
    assert token is not None, "the signed-in page carries the session's CSRF token"

    answers = [
        browser.post(
            f"{pg_stack.url}/console/api/jobs",
            files={"image": ("a.png", make_image(i))},
            data={"prompt": f"console {i}"},
            headers={"X-CSRF-Token": token[1]},
            timeout=10,
        )
        for i in range(3)
    ]

    assert [a.status_code for a in answers] == [202, 202, 429], answers[-1].text
    assert answers[-1].json()["code"] == "rate_limited"
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert len(pg_stack.jobs()) == 2


# --- item 10: constraint violations are conflicts, not outages -------------------------------


def test_repeated_idempotency_keys_in_one_batch_reject_the_later_item(pg_stack: Stack) -> None:
    items = [
        {"image": _b64(make_image(i)), "prompt": f"dup {i}", "idempotency_key": "same"}
        for i in range(2)
    ]
    answer = pg_stack.call("POST", "/v1/batches", json={"items": items})

    assert _rejected(answer) == {1: "duplicate_idempotency_key"}
    assert len(pg_stack.jobs()) == 1


def test_identical_batches_at_once_answer_202_or_409_never_503(pg_stack: Stack) -> None:
    items = [
        {"image": _b64(make_image(i)), "prompt": f"race {i}", "idempotency_key": f"race-{i}"}
        for i in range(40)
    ]
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: pg_stack.call("POST", "/v1/batches", json={"items": items}), range(4)
            )
        )

    statuses = sorted(a.status_code for a in answers)
    print(f"four identical batches at once answered {statuses}")
    assert set(statuses) <= {202, 409}, [a.text for a in answers if a.status_code not in (202, 409)]
    for conflict in (a for a in answers if a.status_code == 409):
        assert conflict.headers["Content-Type"] == "application/problem+json"
        assert conflict.json()["code"] == "conflict" and "retry" in conflict.json()["detail"]
    assert len(pg_stack.jobs()) == len(items)
    again = pg_stack.call("POST", "/v1/batches", json={"items": items}).json()
    assert all(a.get("existing") for a in again["accepted"]), "a retry finds the winner's jobs"


# --- item 11: batch text ---------------------------------------------------------------------


def test_batch_items_with_unstorable_text_are_rejected_one_by_one(pg_stack: Stack) -> None:
    good = {"image": _b64(make_image(1)), "prompt": "fine"}
    body = json.dumps(
        {
            "items": [
                good | {"prompt": "nul \u0000 here"},
                good | {"metadata": {"note": "nul \u0000"}},
                good | {"prompt": "lone \ud800 surrogate"},
                good,
            ]
        }
    )
    answer = pg_stack.call(
        "POST", "/v1/batches", data=body, headers={"Content-Type": "application/json"}
    )

    assert _rejected(answer) == {0: "invalid_text", 1: "invalid_text", 2: "invalid_text"}
    assert "U+0000" in answer.json()["rejected"][0]["detail"]
    assert len(pg_stack.jobs()) == 1


# --- item 12: nothing stored for refused or repeated requests --------------------------------


def test_refused_and_repeated_requests_store_no_image(pg_stack: Stack) -> None:
    run = random.randrange(1 << 30)

    def image(index: int) -> bytes:  # never stored by an earlier test
        return _noisy_png(run + index)

    capped = _key(pg_stack, "capped", "--max-queued", "1")
    client = pg_stack.client(capped)
    client.submit(image(21), "fills the queue")
    before = _blob_count(pg_stack)

    over_cap = pg_stack.call(
        "POST",
        "/v1/jobs",
        key=capped,
        files={"image": ("a.png", image(22))},
        data={"prompt": "over the cap"},
    )
    batch_over_cap = _post_batch(
        pg_stack.url, capped, json={"items": [{"image": _b64(image(23)), "prompt": "x"}]}
    )
    assert over_cap.status_code == 429 and batch_over_cap.status_code == 429
    assert _blob_count(pg_stack) == before, "a refused request stored its image"

    first = pg_stack.client().submit(image(24), "keyed", idempotency_key="once")
    before = _blob_count(pg_stack)
    reused = pg_stack.call(
        "POST",
        "/v1/jobs",
        files={"image": ("a.png", image(25))},
        data={"prompt": "keyed"},
        headers={"Idempotency-Key": "once"},
    )
    repeated = pg_stack.client().submit(image(24), "keyed", idempotency_key="once")
    batch_item = {"image": _b64(image(26)), "prompt": "b", "idempotency_key": "item-once"}
    assert _post_batch(pg_stack.url, pg_stack.key, json={"items": [batch_item]}).status_code == 202
    before_batch_repeat = _blob_count(pg_stack)
    resubmitted = _post_batch(
        pg_stack.url,
        pg_stack.key,
        json={"items": [batch_item | {"image": _b64(image(27))}]},
    )

    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    assert repeated["id"] == first["id"]
    assert _blob_count(pg_stack) == before + 1, "only the keyed batch item's image was stored"
    assert resubmitted.json()["accepted"][0].get("existing") is True
    assert _blob_count(pg_stack) == before_batch_repeat, "a repeated item stored its image"
