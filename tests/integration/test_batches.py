"""Bulk batches: partial acceptance, URL items, results export, cancel, priority, cache,
long-poll, and the ``sightline submit`` command."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cli.processes import sightline_command
from cli.redis_server import free_port
from shared.broker import queue_depths
from shared.tasks import QUEUE_BULK
from tests.integration.test_bad_input import SVG
from tests.receiver import Receiver
from tests.stack import Stack, make_image
from tests.waiting import wait_until


@pytest.fixture
def image_server() -> Iterator[str]:
    """Serves ``/ok.png`` (an image) on 127.0.0.1; everything else is 404."""
    body = make_image(42)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/ok.png" else 404
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _b64(index: int) -> str:
    return base64.b64encode(make_image(index)).decode()


def test_partial_acceptance_reports_each_rejected_item_by_index(
    pg_stack: Stack, image_server: str
) -> None:
    items = [
        {"image": _b64(1), "prompt": "first", "metadata": {"row": 1}},
        {"image": "not base64!", "prompt": "bad base64"},
        {"image": base64.b64encode(SVG).decode(), "prompt": "svg"},
        {"image_url": f"{image_server}/ok.png", "prompt": "fetched", "metadata": {"row": 4}},
        {"image_url": "http://10.0.0.1/x.png", "prompt": "private"},
        {"image_url": f"{image_server}/missing.png", "prompt": "404"},
        {"image": _b64(2), "prompt": "last", "metadata": ["any", "json"], "max_new_tokens": 4},
        {"prompt": "no image"},
    ]
    response = pg_stack.call("POST", "/v1/batches", json={"items": items})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert [a["index"] for a in answer["accepted"]] == [0, 3, 6]
    assert {r["index"]: r["code"] for r in answer["rejected"]} == {
        1: "invalid_base64",
        2: "unsupported_image_format",
        4: "forbidden_destination",
        5: "image_fetch_failed",
        7: "invalid_fields",
    }
    assert all(r["detail"] for r in answer["rejected"])
    assert (answer["items_submitted"], answer["items_accepted"], answer["items_rejected"]) == (
        8,
        3,
        5,
    )
    assert len(pg_stack.jobs()) == 3, "rejected items created nothing"

    pg_stack.start_worker()
    pg_stack.wait_all([a["id"] for a in answer["accepted"]])

    status = pg_stack.call("GET", f"/v1/batches/{answer['id']}").json()
    assert status["counts"]["succeeded"] == 3 and status["progress"] == 1.0
    assert status["completed_at"] is not None
    results = pg_stack.call("GET", f"/v1/batches/{answer['id']}/results")
    assert results.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in results.text.splitlines()]
    assert [(line["index"], line["metadata"], line["status"]) for line in lines] == [
        (0, {"row": 1}, "succeeded"),
        (3, {"row": 4}, "succeeded"),
        (6, ["any", "json"], "succeeded"),
    ]
    listed = pg_stack.call("GET", "/v1/jobs", params={"batch_id": answer["id"]}).json()["jobs"]
    assert sorted(job["item_index"] for job in listed) == [0, 3, 6]
    assert all(job["priority"] == "bulk" for job in listed)


def test_a_batch_sends_one_wake_up_per_batch_of_items_after_answering(pg_stack: Stack) -> None:
    items = [{"image": _b64(i), "prompt": f"item {i}"} for i in range(20)]
    response = pg_stack.call("POST", "/v1/batches", json={"items": items})
    assert response.status_code == 202, response.text
    per_message = pg_stack.settings.max_batch_size
    expected = -(-len(items) // per_message)

    wait_until(lambda: _bulk_depth(pg_stack) >= expected, timeout_s=10, what="the batch's wake-ups")

    assert _bulk_depth(pg_stack) == expected


def test_one_wake_up_drains_a_queue_of_full_batches(pg_stack: Stack) -> None:
    """A worker keeps claiming into its running batch while work is queued, so work whose
    wake-ups were lost does not wait for the sweeper (none runs here)."""
    items = [{"image": _b64(i), "prompt": f"item {i}"} for i in range(24)]
    answer = pg_stack.call("POST", "/v1/batches", json={"items": items}).json()
    wait_until(lambda: _bulk_depth(pg_stack) >= 3, timeout_s=10, what="three wake-ups")
    pg_stack.redis.ltrim(QUEUE_BULK, 0, 0)  # lose two of the three wake-ups
    assert _bulk_depth(pg_stack) == 1

    pg_stack.start_worker()
    done = pg_stack.wait_all([item["id"] for item in answer["accepted"]], timeout_s=120)

    assert {job["status"] for job in done} == {"succeeded"}
    assert {job["batch_size"] for job in done} == {8}


def _bulk_depth(stack: Stack) -> int:
    depths = queue_depths(stack.celery, [QUEUE_BULK])
    assert depths is not None
    return depths[QUEUE_BULK]


def test_ndjson_body_and_resubmission_with_item_keys(pg_stack: Stack) -> None:
    lines = [
        json.dumps({"image": _b64(i), "prompt": f"n{i}", "idempotency_key": f"row-{i}"})
        for i in range(5)
    ]
    first = pg_stack.call(
        "POST",
        "/v1/batches",
        data="\n".join(lines) + "\n",
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert first.status_code == 202, first.text
    again = pg_stack.call(
        "POST",
        "/v1/batches",
        data="\n".join(lines),
        headers={"Content-Type": "application/x-ndjson"},
    ).json()

    assert [a["id"] for a in again["accepted"]] == [a["id"] for a in first.json()["accepted"]]
    assert all(a["existing"] for a in again["accepted"])
    assert len(pg_stack.jobs()) == 5
    # Nothing of the repeat will run (no worker, no sweeper here): it is complete at once.
    repeat = pg_stack.call("GET", f"/v1/batches/{again['id']}").json()
    assert repeat["completed_at"] is not None and repeat["progress"] == 1.0
    assert pg_stack.call("GET", f"/v1/batches/{first.json()['id']}").json()["completed_at"] is None


def test_whole_batch_refused_only_when_nothing_is_valid(pg_stack: Stack) -> None:
    response = pg_stack.call(
        "POST", "/v1/batches", json={"items": [{"prompt": "x"}, {"image": "%%"}]}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "no_valid_items"
    assert [r["index"] for r in response.json()["rejected"]] == [0, 1]
    too_many = pg_stack.call("POST", "/v1/batches", json={"items": [{}] * 10_001})
    assert too_many.json()["code"] == "too_many_items"


def test_cancel_a_batch_then_batch_completed_webhook(pg_stack: Stack) -> None:
    receiver = Receiver(free_port()).start()
    try:
        items = [{"image": _b64(i), "prompt": f"c{i}"} for i in range(6)]
        batch = pg_stack.call(
            "POST", "/v1/batches", json={"items": items, "callback_url": receiver.url}
        ).json()
        canceled = pg_stack.call("DELETE", f"/v1/batches/{batch['id']}").json()
        assert canceled["canceled"] == 6 and canceled["counts"]["canceled"] == 6
        assert canceled["completed_at"] is not None
        pg_stack.start_ops(sweep_interval_s="0.5")

        event = json.loads(receiver.wait_for(1)[0].body)
    finally:
        receiver.stop()
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch["id"] and event["data"]["counts"]["canceled"] == 6


def test_interactive_jobs_overtake_a_bulk_backlog(pg_stack: Stack) -> None:
    items = [{"image": _b64(i), "prompt": f"bulk {i}", "max_new_tokens": 4} for i in range(40)]
    bulk = [
        a["id"]
        for a in pg_stack.call("POST", "/v1/batches", json={"items": items}).json()["accepted"]
    ]
    urgent = pg_stack.client().submit(make_image(99), "urgent", max_new_tokens=4)["id"]
    pg_stack.start_worker()

    done = {job["id"]: job for job in pg_stack.wait_all([urgent, *bulk])}

    first_start = min(job["started_at"] for job in done.values())
    assert done[urgent]["started_at"] == first_start, "the interactive job ran in the first batch"


def test_identical_requests_are_answered_from_the_cache(pg_stack: Stack) -> None:
    client = pg_stack.client()
    pg_stack.start_worker()
    original = client.wait(client.submit(make_image(5), "cache me", max_new_tokens=6)["id"])
    again = client.wait(client.submit(make_image(5), "cache me", max_new_tokens=6)["id"])
    fresh = client.wait(
        client.submit(make_image(5), "cache me", max_new_tokens=6, cache="false")["id"]
    )
    other = client.wait(client.submit(make_image(5), "cache me too", max_new_tokens=6)["id"])

    assert original["cached"] is False and original["batch_size"] == 1
    assert again["cached"] is True and again["result"] == original["result"]
    assert again["batch_size"] is None and again["inference_ms"] is None, "no forward pass"
    assert fresh["cached"] is False and fresh["batch_size"] == 1
    assert other["cached"] is False, "a different prompt is a miss"


def test_long_poll_answers_when_the_job_ends(pg_stack: Stack) -> None:
    client = pg_stack.client()
    job_id = client.submit(make_image(8), "wait for me", max_new_tokens=4)["id"]
    assert client.get(job_id, wait_s=0.5)["status"] == "queued", "answers at the deadline"
    starter = threading.Thread(target=pg_stack.start_worker)
    starter.start()

    assert client.get(job_id, wait_s=60)["status"] == "succeeded"
    starter.join()
    too_long = pg_stack.call("GET", f"/v1/jobs/{job_id}", params={"wait": "61"})
    assert too_long.status_code == 422 and too_long.json()["code"] == "invalid_query"


def test_submit_command_on_a_directory_is_resumable(pg_stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    for i in range(200):
        (folder / ("nested" if i % 2 else "") / f"img{i:03}.png").write_bytes(
            make_image(i, size=(48, 36))
        )
    (folder / "notes.txt").write_text("not an image")
    pg_stack.start_worker()
    out = tmp_path / "results.ndjson"
    command = sightline_command(
        "submit",
        str(folder),
        "--prompt",
        "describe",
        "--max-new-tokens",
        "4",
        "--url",
        pg_stack.url,
        "--key",
        pg_stack.key,
        "--out",
        str(out),
    )

    first = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    second = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    assert first.returncode == 0, first.stderr[-2000:]
    assert "upload" in first.stderr and "done" in first.stderr, "progress bars were shown"
    assert "submitted 200 new job(s)" in first.stderr
    assert second.returncode == 0 and "submitted 0 new job(s)" in second.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 200 and all(line["status"] == "succeeded" for line in lines)
    assert len(pg_stack.jobs()) == 200
