"""The web console in real headless Chromium against the real API (gunicorn, PostgreSQL,
Redis, a Celery worker where a job must run), as a person uses it."""

from __future__ import annotations

import json
import re
import uuid

import psutil
import pytest
import requests

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from playwright.sync_api import FilePayload, Locator, Page, expect

from cli.redis_server import free_port
from shared.models import JobStatus
from tests.e2e.browser import PHONE, screenshot, sign_in
from tests.receiver import Receiver
from tests.stack import Stack, make_image
from tests.waiting import wait_until

NOT_CREATED_BY_THE_PAGE = "window.__sightlineMarker === 1"
# Every text the Ask page's answer shows, in order (window.__answers).
RECORD_ANSWERS = """
window.__answers = [];
const answer = document.getElementById("result-answer");
new MutationObserver(() => window.__answers.push(answer.textContent)).observe(answer, {
  childList: true, characterData: true, subtree: true,
});
"""
# Workers run with fault injection, so that ``[[slow]]`` prompts take 0.5 s per decoding
# step (other prompts run as usual): one parked worker then serves every test here.
FAULTS = {"fault_injection": "1"}
# One webhook attempt, no automatic retry within the test: only Redeliver sends again.
ONE_ATTEMPT = {
    "sweep_interval_s": "0.5",
    "webhook_retry_schedule_s": "0,3600",
    "webhook_jitter": "0",
}


def test_ask_shows_the_answer_live_then_jobs_detail_and_status(page: Page, pg_stack: Stack) -> None:
    """Sign in, upload from the file input, watch the job wait in the queue until a worker
    starts, then see the answer appear without a reload; then the job in the table, its
    detail page, the Status and Batches pages, and the phone layout."""
    page.goto("/console/jobs")
    expect(page).to_have_url(re.compile(r"/console/sign-in\?next=/console/jobs"))
    expect(page.get_by_label("API key")).to_be_focused()
    screenshot(page, "sign-in")
    sign_in(page, pg_stack.key)
    expect(page).to_have_url(re.compile(r"/console/jobs$"))
    expect(page.get_by_role("heading", name="No jobs yet")).to_be_visible()

    page.goto("/console/ask")
    page.keyboard.press("Tab")  # keyboard users get the skip link first
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.get_by_label("Prompt").fill("What colour is the dot?")
    not_an_image: FilePayload = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}
    page.set_input_files("#image", files=[not_an_image])
    page.get_by_role("button", name="Ask").click()
    expect(page.get_by_role("alert")).to_contain_text("not a recognised image")
    assert pg_stack.jobs() == []

    picked: FilePayload = {"name": "dot.png", "mimeType": "image/png", "buffer": make_image(3)}
    page.set_input_files("#image", files=[picked])
    expect(page.locator("#preview")).to_be_visible()
    page.get_by_label("Max new tokens").fill("8")
    page.evaluate("window.__sightlineMarker = 1")
    page.get_by_role("button", name="Ask").click()
    expect(page.locator("#result-status")).to_have_text("Queued: waiting for a worker…")
    expect(page.locator('#steps li[aria-current="step"]')).to_have_text("Queued")

    pg_stack.start_worker(**FAULTS)
    expect(page.locator("#result-status")).to_have_text("Done.", timeout=60_000)
    assert page.evaluate(NOT_CREATED_BY_THE_PAGE), "the page reloaded"
    [job] = pg_stack.jobs()
    assert job.status is JobStatus.SUCCEEDED and job.result
    expect(page.locator("#result-answer")).to_have_text(job.result)
    expect(page.locator("#result-batch")).to_have_text(str(job.batch_size))
    expect(page.locator("#result-inference")).to_contain_text(" ms")
    expect(page.locator("#result-image")).to_have_js_property("naturalWidth", 96)
    screenshot(page, "ask")

    # More jobs (one with markup in its prompt) so the table, the filter and the charts
    # have something to show; the prompt must be displayed as text, never run.
    client = pg_stack.client()
    ids = [client.submit(make_image(i), f"Describe picture {i}")["id"] for i in range(4)]
    ids.append(client.submit(make_image(9), "<script>alert(1)</script> what is this?")["id"])
    pg_stack.wait_all(ids, timeout_s=120)
    page.goto("/console/jobs")
    expect(page.locator("table.jobs tbody tr")).to_have_count(6)
    expect(page.get_by_role("link", name="<script>alert(1)</script> what is this?")).to_be_visible()
    page.get_by_label("Status").select_option("queued")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("heading", name="No queued jobs")).to_be_visible()
    page.get_by_label("Status").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.jobs tbody tr")).to_have_count(6)
    screenshot(page, "jobs")

    page.get_by_role("link", name="What colour is the dot?").click()
    expect(page).to_have_url(re.compile(f"/console/jobs/{job.id}$"))
    expect(page.locator("#job-status")).to_have_text("succeeded")
    expect(page.locator("#job-result")).to_have_text(job.result)
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.locator(".stored-image img")).to_have_js_property("naturalWidth", 96)
    screenshot(page, "job-detail")

    page.goto("/console/status")
    expect(page.get_by_role("heading", name="Workers online")).to_be_visible()
    expect(page.locator(".plain-list")).to_contain_text("cpu0@")
    # Not get_by_text: when all six finish in one minute, the chart's last bar ("6") runs
    # into its caption ("Jobs finished per minute") and matches too.
    expect(page.locator("#throughput-summary")).to_contain_text("6 jobs finished")
    expect(page.get_by_role("img", name="Jobs finished per minute")).to_be_visible()
    # The six jobs this tenant started, and no other tenant's name.
    expect(page.locator("#tenant-shares")).to_contain_text("(yours, weight 1)")
    mine = page.locator("#tenant-shares tr", has_text="(yours")
    expect(mine.locator("td").nth(2)).to_have_text("6")
    screenshot(page, "status")

    page.goto("/console/batches")
    expect(page.get_by_role("heading", name="No batches yet")).to_be_visible()
    batch = pg_stack.client().batch(
        [
            {"image": make_image(60 + i), "prompt": f"batch item {i}", "metadata": {"n": i}}
            for i in range(3)
        ]
    )
    pg_stack.client().wait_batch(batch["id"], timeout_s=120, poll_s=0.2)
    page.goto("/console/batches")
    expect(page.get_by_text("3 of 3 items finished")).to_be_visible()
    expect(page.locator("progress")).to_have_attribute("value", "3")
    download = page.request.get(f"/console/batches/{batch['id']}/results.ndjson")
    lines = [json.loads(line) for line in download.text().splitlines()]
    assert [line["metadata"] for line in lines] == [{"n": 0}, {"n": 1}, {"n": 2}]
    screenshot(page, "batches")

    page.set_viewport_size(PHONE)
    for name in ("jobs", "ask"):
        page.goto(f"/console/{name}")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(page, f"{name}-phone")


def test_ask_streams_the_answer_while_the_job_runs(page: Page, pg_stack: Stack) -> None:
    """With the worker slowed to 0.5 s per decoding step (``[[slow]]``, fault injection),
    the answer grows on the Ask page while the API still says the job is running. Then the
    API's workers die: the page says the connection is lost, resumes the stream once
    gunicorn has replaced them, and shows exactly the job's result at the end; every text
    it showed on the way is a beginning of that result (a resume that repeated text would
    show one that is not)."""
    pg_stack.start_worker(**FAULTS)
    page.goto("/console/sign-in")
    sign_in(page, pg_stack.key)
    page.goto("/console/ask")
    picked: FilePayload = {"name": "dot.png", "mimeType": "image/png", "buffer": make_image(7)}
    page.set_input_files("#image", files=[picked])
    page.get_by_label("Prompt").fill("[[slow]] What is in the picture?")
    page.get_by_label("Max new tokens").fill("16")
    page.evaluate(RECORD_ANSWERS)
    page.get_by_role("button", name="Ask").click()

    answer = page.locator("#result-answer")
    expect(answer).to_have_text(re.compile(r"\S"), timeout=60_000)
    partial = answer.text_content()
    [job] = pg_stack.jobs()
    client = pg_stack.client()
    assert client.get(str(job.id))["status"] == "running", "text showed before the job ended"
    expect(answer).to_be_visible()
    expect(answer).to_have_attribute("aria-busy", "true")
    expect(page.locator("#result-status")).to_have_text(re.compile(r"^Running on cpu0@"))
    expect(page.locator("#result-reasoning-block")).to_be_hidden()
    screenshot(page, "ask-streaming")

    _kill_api_workers(pg_stack)  # the stream breaks; EventSource retries on its own
    expect(page.locator("#result-status")).to_have_text("Connection lost; retrying…")
    # It reconnects with Last-Event-ID once gunicorn has new workers, and resumes.
    expect(page.locator("#result-status")).to_have_text("Done.", timeout=60_000)
    final = client.get(str(job.id))
    print(f"\n{partial!r} while running, {final['result']!r} at the end")
    assert final["status"] == "succeeded" and partial and final["result"].startswith(partial)
    assert answer.text_content() == final["result"]
    shown = [text for text in page.evaluate("window.__answers") if text]
    assert all(final["result"].startswith(text) for text in shown), shown
    assert len(set(shown)) > 2, f"the answer grew in steps: {shown}"
    expect(answer).to_have_attribute("aria-busy", "false")
    expect(page.locator("#result-batch")).to_have_text(str(final["batch_size"]))


def test_cancel_a_queued_job_then_redeliver_its_webhook(page: Page, pg_stack: Stack) -> None:
    """With no worker running a job stays queued; Cancel cancels it. Its ``job.canceled``
    webhook fails once (503), the attempt is listed, and Redeliver gets it through."""
    receiver = Receiver(free_port(), script=[503]).start()
    try:
        pg_stack.start_ops(**ONE_ATTEMPT)
        client = pg_stack.client()
        job_id = client.submit(make_image(1), "never runs", callback_url=receiver.url)["id"]
        page.goto(f"/console/jobs/{job_id}")
        sign_in(page, pg_stack.key)
        expect(page).to_have_url(re.compile(f"/console/jobs/{job_id}$"))
        expect(page.locator("#job-status")).to_have_text("queued")
        expect(page.get_by_text("The webhook is sent when the job finishes.")).to_be_visible()
        page.get_by_role("button", name="Cancel job").click()
        expect(page.get_by_role("status").filter(has_text="Job canceled.")).to_be_visible()
        expect(page.locator("#job-status")).to_have_text("canceled")
        expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
        [job] = pg_stack.jobs([job_id])
        assert job.status is JobStatus.CANCELED

        receiver.wait_for(1)
        _reload_until(page, page.locator(".event tbody tr"), 1)
        expect(page.locator(".event tbody tr")).to_contain_text("503")
        page.get_by_role("button", name="Redeliver webhook").click()
        expect(page.get_by_role("status").filter(has_text="redelivery started")).to_be_visible()
        receiver.wait_for(2)
        _reload_until(page, page.locator(".event tbody tr"), 2)
        expect(page.locator(".event .badge")).to_have_text("delivered")
        screenshot(page, "job-detail-webhooks")
    finally:
        receiver.stop()
    ids = {request.headers["webhook-id"] for request in receiver.requests}
    assert len(ids) == 1, "a redelivery keeps the webhook-id"


def test_another_keys_job_is_not_found(page: Page, pg_stack: Stack) -> None:
    """Another key's job id answers 404 "not found", exactly as the API does, and its
    job is not listed."""
    other = json.loads(pg_stack.cli("keys", "create", f"other-{uuid.uuid4().hex[:6]}", "--json"))
    theirs = pg_stack.client(other["key"]).submit(make_image(2), "private to the other key")["id"]
    page.goto("/console/sign-in")
    sign_in(page, pg_stack.key)

    response = page.goto(f"/console/jobs/{theirs}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    expect(page.get_by_text(f"no job {theirs}")).to_be_visible()
    screenshot(page, "not-found")
    assert page.request.get(f"/console/jobs/{theirs}/image").status == 404
    streamed = page.request.get(f"/console/api/jobs/{theirs}/events")
    assert streamed.status == 404 and streamed.json()["code"] == "not_found"
    api = requests.get(
        f"{pg_stack.url}/v1/jobs/{theirs}",
        headers={"Authorization": f"Bearer {pg_stack.key}"},
        timeout=10,
    )
    assert api.status_code == 404
    page.goto("/console/jobs")
    expect(page.get_by_text("private to the other key")).to_have_count(0)


def _kill_api_workers(stack: Stack) -> None:
    """SIGKILL every gunicorn worker of the API (so whichever holds the page's stream):
    its connections drop as in a network failure; gunicorn's master starts new workers."""
    assert stack.api is not None
    workers = psutil.Process(stack.api.pid).children()
    assert workers, "gunicorn has workers"
    for worker in workers:
        worker.kill()
    psutil.wait_procs(workers, timeout=10)


def _reload_until(page: Page, rows: Locator, count: int, timeout_s: float = 20) -> None:
    """Reload until ``rows`` has ``count`` elements: the detail page is not live, and the
    webhook sender records attempts in the background."""

    def reloaded_with_rows() -> bool:
        if rows.count() >= count:
            return True
        page.reload()
        return False

    wait_until(reloaded_with_rows, timeout_s=timeout_s, interval_s=0.3, what=f"{count} {rows}")
