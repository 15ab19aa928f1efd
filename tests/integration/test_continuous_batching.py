"""Continuous batching through real processes: jobs join and leave a running batch.

Workers run with fault injection where a job must last: ``[[slow]]`` makes every step
that holds the job take 0.5 s longer (``worker/faults.py``), so a job of N new tokens
runs for about N/2 seconds and the test can act while it runs.
"""

from __future__ import annotations

import base64
import json
import signal
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from cli.redis_server import free_port
from shared.job_feed import announce_watching, job_channel, text_key, watch_key
from shared.models import JobStatus
from tests.prometheus import scrape, scrape_until, total
from tests.stack import Stack, make_image
from tests.waiting import wait_until


def _running(stack: Stack, ids: list[str]) -> bool:
    return all(row.status is JobStatus.RUNNING for row in stack.jobs(ids))


def _wait_for_one_running(stack: Stack, ids: list[str]) -> None:
    wait_until(
        lambda: any(row.status is JobStatus.RUNNING for row in stack.jobs(ids)),
        timeout_s=60,
        what="one of the jobs to run",
    )


def _batch(
    stack: Stack, images: Iterable[int], prompt: str, *, max_new_tokens: int
) -> tuple[str, list[str]]:
    """Submit one batch, an item per ``make_image`` seed in ``images``; the batch's id
    and its items' ids."""
    items = [
        {
            "image": base64.b64encode(make_image(i)).decode(),
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
        }
        for i in images
    ]
    batch = stack.call("POST", "/v1/batches", json={"items": items}).json()
    return batch["id"], [item["id"] for item in batch["accepted"]]


def test_jobs_with_different_options_run_in_the_same_steps(pg_stack: Stack) -> None:
    client = pg_stack.client()
    options = [(2, 0.0), (20, 0.0), (5, 0.7), (12, 0.0), (8, 1.2), (16, 0.0)]
    ids = [
        client.submit(make_image(i), f"mixed {i}", max_new_tokens=tokens, temperature=t)["id"]
        for i, (tokens, t) in enumerate(options)
    ]
    pg_stack.start_worker()

    done = pg_stack.wait_all(ids)

    assert [job["status"] for job in done] == ["succeeded"] * len(ids)
    for job, (tokens, _) in zip(done, options, strict=True):
        assert 1 <= job["output_tokens"] <= tokens
    # The shortest left a batch of all six, less any sampled row that drew its stop token
    # sooner (a row's output_tokens count its steps, the stop token included): no split
    # by options, no wait for the longest.
    steps = done[0]["output_tokens"]
    assert done[0]["batch_size"] == sum(job["output_tokens"] >= steps for job in done)
    assert sum(job["output_tokens"] >= steps for job in done[1::2]) == 3  # the greedy ones
    assert done[0]["finished_at"] < done[1]["finished_at"]


def test_an_interactive_job_joins_a_batch_full_of_bulk_jobs(pg_stack: Stack) -> None:
    pg_stack.start_worker(fault_injection="1", max_batch_size="2", interactive_headroom="1")
    _, bulk = _batch(pg_stack, range(3), "[[slow]] bulk", max_new_tokens=16)
    wait_until(
        lambda: sum(row.status is JobStatus.RUNNING for row in pg_stack.jobs(bulk)) == 2,
        timeout_s=60,
        what="two bulk jobs filling the batch",
    )

    client = pg_stack.client()
    urgent = client.submit(make_image(9), "urgent", max_new_tokens=2)["id"]
    job = client.wait(urgent, timeout_s=60)

    assert job["status"] == "succeeded"
    assert job["batch_size"] == 3, "it ran beside both bulk rows"
    statuses = [row.status for row in pg_stack.jobs(bulk)]
    assert statuses.count(JobStatus.RUNNING) == 2, "the bulk rows were still running"
    assert statuses.count(JobStatus.QUEUED) == 1, "bulk work stays within max_batch_size"
    assert [j["status"] for j in pg_stack.wait_all(bulk)] == ["succeeded"] * 3


def test_no_bulk_job_joins_while_a_short_interactive_answer_decodes(pg_stack: Stack) -> None:
    pg_stack.start_worker(fault_injection="1", max_batch_size="4")
    # Two-token bulk jobs: rows end every other step, so without the hold bulk jobs
    # would join (and be prefilled) during the interactive job's steps.
    _, bulk = _batch(pg_stack, range(80), "bulk", max_new_tokens=2)
    _wait_for_one_running(pg_stack, bulk)

    client = pg_stack.client()
    # [[slow]]: each of its six steps takes 0.5 s longer, ample time for bulk rows to end.
    urgent = client.submit(make_image(99), "[[slow]] urgent", max_new_tokens=6)["id"]
    job = client.wait(urgent, timeout_s=60)
    done = pg_stack.wait_all(bulk)

    assert job["status"] == "succeeded"
    # Its decoding: from its claim for its inference_ms. (Its finished_at is its commit,
    # made on the committer's thread while the next step, and its claims, ran.)
    began = _time(job, "started_at")
    ended = began + timedelta(milliseconds=job["inference_ms"])
    starts = [_time(item, "started_at") for item in done]
    # Bulk rows were running when it joined (some may have joined with it).
    assert any(_time(item, "started_at") <= began < _time(item, "finished_at") for item in done)
    assert [s for s in starts if began < s < ended] == [], "no bulk job joined meanwhile"
    assert any(s > ended for s in starts), "bulk jobs were waiting while it ran"


def _time(job: dict[str, Any], key: str) -> datetime:
    return datetime.fromisoformat(job[key])


def test_a_batch_with_free_rows_and_an_empty_queue_does_not_keep_claiming(
    pg_stack: Stack, medium_checkpoint: Path
) -> None:
    """Between steps the worker claims only when a job was announced that its last claim did
    not see, and tries an empty queue once a second (``worker/queue_hint.py``); it used to
    run an empty claim every 50 ms. Counted by the worker's own claims counter (the
    database's transaction count, used before, also counts the API's and the sweeper's
    work)."""
    port = free_port()
    # The medium checkpoint: steps of some 10 ms, so a long answer lasts seconds.
    pg_stack.start_worker(model_path=str(medium_checkpoint), worker_metrics_port=str(port))
    metrics = f"http://127.0.0.1:{port}/metrics"
    client = pg_stack.client()
    long = client.submit(make_image(31), "alone in its batch", max_new_tokens=1024)["id"]
    wait_until(lambda: _running(pg_stack, [long]), timeout_s=60, what="the long job to run")
    time.sleep(1.0)  # past its first claims
    before = total(scrape(metrics), "sightline_worker_claims_total", found="no")
    time.sleep(3)
    empty = total(scrape(metrics), "sightline_worker_claims_total", found="no") - before
    found = total(scrape(metrics), "sightline_worker_claims_total", found="yes")

    assert _running(pg_stack, [long]), "the window must fall inside the job's run"
    assert pg_stack.call("DELETE", f"/v1/jobs/{long}").status_code == 200
    assert found >= 1, "the claim that took the long job counts"
    # A bulk and an interactive claim a second, and one more of each at a window's
    # edge. Every 50 ms would be some 120.
    assert empty <= 8, f"{empty:g} claims in 3 s found nothing"


def test_canceling_a_running_job_frees_its_row_for_the_next_job(pg_stack: Stack) -> None:
    pg_stack.start_worker(fault_injection="1", max_batch_size="1", interactive_headroom="0")
    client = pg_stack.client()
    # 400 slow steps: over three minutes, far past this test's waits, if it kept its row.
    long = client.submit(make_image(1), "[[slow]] long", max_new_tokens=400)["id"]
    wait_until(lambda: _running(pg_stack, [long]), timeout_s=60, what="the long job to run")
    following = client.submit(make_image(2), "next in line", max_new_tokens=2)["id"]

    assert pg_stack.call("DELETE", f"/v1/jobs/{long}").status_code == 200

    assert client.wait(following, timeout_s=30)["status"] == "succeeded"
    canceled = client.get(long)
    assert canceled["status"] == "canceled" and canceled["result"] is None


def test_canceling_a_batch_stops_its_running_item_and_frees_the_row(pg_stack: Stack) -> None:
    pg_stack.start_worker(fault_injection="1", max_batch_size="1", interactive_headroom="0")
    batch_id, ids = _batch(pg_stack, (11, 12), "[[slow]] long", max_new_tokens=400)
    _wait_for_one_running(pg_stack, ids)
    client = pg_stack.client()
    following = client.submit(make_image(13), "next in line", max_new_tokens=2)["id"]

    canceled = pg_stack.call("DELETE", f"/v1/batches/{batch_id}").json()

    assert canceled["canceled"] == 2 and canceled["counts"]["canceled"] == 2
    # One row: the next job runs only once the worker has aborted the running item.
    assert client.wait(following, timeout_s=30)["status"] == "succeeded"
    for job in pg_stack.wait_all(ids):
        assert job["status"] == "canceled" and job["result"] is None


def test_purging_a_running_job_frees_its_row_and_nothing_of_it_comes_back(
    pg_stack: Stack,
) -> None:
    pg_stack.start_worker(fault_injection="1", max_batch_size="1", interactive_headroom="0")
    client = pg_stack.client()
    long = client.submit(make_image(5), "[[slow]] long and private", max_new_tokens=400)["id"]
    wait_until(lambda: _running(pg_stack, [long]), timeout_s=60, what="the long job to run")
    following = client.submit(make_image(6), "next in line", max_new_tokens=2)["id"]

    assert pg_stack.call("DELETE", f"/v1/jobs/{long}?purge=true").status_code == 200

    # One row: the next job runs only once the worker has aborted the purged job's row.
    assert client.wait(following, timeout_s=30)["status"] == "succeeded"
    assert pg_stack.jobs([long]) == []
    assert pg_stack.call("GET", f"/v1/jobs/{long}").status_code == 404


def test_the_feed_carries_a_watched_jobs_text_and_only_moves_of_others(pg_stack: Stack) -> None:
    pg_stack.start_worker(fault_injection="1")
    client = pg_stack.client()
    # redis leaves pubsub() unannotated.
    listener: redis.client.PubSub = pg_stack.redis.pubsub()  # type: ignore[no-untyped-call]
    # Every job's channel, from before the jobs exist: their claim may come at once.
    listener.psubscribe(job_channel("*"))
    watched = client.submit(make_image(3), "[[slow]] stream me", max_new_tokens=8)["id"]
    quiet = client.submit(make_image(4), "[[slow]] nobody listens", max_new_tokens=8)["id"]
    pg_stack.redis.set(watch_key(watched), uuid.uuid4().hex, ex=60)
    announce_watching(pg_stack.redis, uuid.UUID(watched))  # as a reader does

    messages: list[tuple[str, dict[str, Any]]] = []
    ours = {job_channel(watched), job_channel(quiet)}
    job = client.wait(watched)
    assert client.wait(quiet)["status"] == "succeeded"
    wait_until(
        lambda: (
            _collect(listener, messages)
            and sum(1 for name, m in messages if m["kind"] == "changed" and name in ours) >= 4
        ),
        timeout_s=10,
        what="the claim and end of both jobs on the feed",
    )
    listener.close()

    texts = [m for name, m in messages if m["kind"] == "text" and name in ours]
    assert {name for name, m in messages if m["kind"] == "text" and name in ours} == {
        job_channel(watched)
    }
    answer = ""
    for message in texts:
        offset, delta = message["answer"]
        assert offset <= len(answer)
        answer = answer[:offset] + delta
    assert len(texts) > 1, "the text arrived step by step"
    assert answer and job["result"].startswith(answer)
    stored = pg_stack.redis.hgetall(text_key(watched))
    stored_answer, stored_claim = stored[b"answer"], stored[b"claim"]
    # Without decode_responses the client returns bytes.
    assert isinstance(stored_answer, bytes) and isinstance(stored_claim, bytes)
    assert stored_answer.decode() == answer
    assert stored_claim.decode() == texts[-1]["claim"]


def _collect(listener: redis.client.PubSub, messages: list[tuple[str, dict[str, Any]]]) -> bool:
    while (message := listener.get_message(timeout=0.2)) is not None:
        if message["type"] == "pmessage":
            messages.append((message["channel"].decode(), json.loads(message["data"])))
    return bool(messages)


def test_sigterm_hands_back_what_cannot_finish_within_drain_s(pg_stack: Stack) -> None:
    launcher = pg_stack.start_worker(fault_injection="1", drain_s="1")
    client = pg_stack.client()
    job_id = client.submit(make_image(5), "[[slow]] too long to drain", max_new_tokens=24)["id"]
    wait_until(lambda: _running(pg_stack, [job_id]), timeout_s=60, what="the job to run")

    launcher.send_signal(signal.SIGTERM)

    assert launcher.wait(timeout=60) == 0
    [row] = pg_stack.jobs([job_id])
    assert (row.status, row.attempts, row.claim_token) == (JobStatus.QUEUED, 0, None)
    pg_stack.start_worker(fault_injection="1")
    job = client.wait(job_id, timeout_s=90)
    assert (job["status"], job["attempts"]) == ("succeeded", 1)


def test_bulk_jobs_join_a_group_at_a_time_and_rows_added_ahead_need_no_pass(
    pg_stack: Stack,
) -> None:
    port = free_port()
    pg_stack.start_worker(max_batch_size="2", prefill_group="2", worker_metrics_port=str(port))
    # Lengths that end one at a time: each freed row would otherwise cost a pass.
    tokens = [3, 11, 6, 17, 9, 4, 14, 7, 12, 5]
    items = [
        {"image": base64.b64encode(make_image(i)).decode(), "prompt": "go", "max_new_tokens": n}
        for i, n in enumerate(tokens)
    ]
    batch = pg_stack.call("POST", "/v1/batches", json={"items": items}).json()
    ids = [item["id"] for item in batch["accepted"]]

    done = pg_stack.wait_all(ids, timeout_s=120)

    assert [job["status"] for job in done] == ["succeeded"] * len(ids)
    assert max(job["batch_size"] for job in done) <= 2, "rows added ahead wait for a row"
    worker = scrape_until(
        f"http://127.0.0.1:{port}/metrics",
        lambda found: total(found, "sightline_worker_prefill_rows_sum") == len(ids),
        timeout_s=30,
        what="every job's prefill to be counted",
    )
    # Ten jobs in passes of two: five passes. Joining as each row frees takes one each.
    assert total(worker, "sightline_worker_prefill_rows_count") <= len(ids) // 2 + 1
