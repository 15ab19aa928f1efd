"""Never lose a job, never answer twice: fault injection against real processes.

Workers run with ``SIGHTLINE_FAULT_INJECTION=1`` (``worker/faults.py``): ``[[slow]]`` in a
prompt makes its forward pass take 1.5 s longer, ``[[oom]]`` makes it raise like CUDA
out of memory, ``[[unstorable]]`` gives it a result PostgreSQL refuses, ``[[crash]]``
SIGKILLs the worker. Leases and the sweeper run on short
clocks so recovery takes seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import fsspec
import requests
from sqlalchemy import select

from shared import lifecycle
from shared.blobs import BlobStore
from shared.db import transaction
from shared.job_feed import JobFeed
from shared.models import Job, JobStatus
from shared.tasks import GPU_QUEUES
from tests.stack import Stack, make_image
from tests.waiting import wait_until
from worker.sweeper import sweep

FAST_RECOVERY = {
    "job_lease_s": "3",
    "requeue_after_s": "2",
    "sweep_interval_s": "1",
    "max_attempts": "3",
    "fault_injection": "1",
}


def _submit(stack: Stack, count: int, prompt: str, first: int = 0) -> list[str]:
    client = stack.client()
    return [
        client.submit(make_image(first + i), f"{prompt} #{first + i}", max_new_tokens=4)["id"]
        for i in range(count)
    ]


def _running(stack: Stack) -> list[Job]:
    return [job for job in stack.jobs() if job.status is JobStatus.RUNNING]


def test_sigkill_mid_batch_three_times_every_job_succeeds_once(pg_stack: Stack) -> None:
    pg_stack.start_ops(**FAST_RECOVERY)
    ids = _submit(pg_stack, 60, "[[slow]] describe")
    killed: list[str] = []
    for round_ in range(3):
        # Not waiting for a ping: a solo worker busy in a batch answers none, and by
        # then it could have run every job. A running job is the signal to act on.
        child = pg_stack.start_worker_child(f"victim{round_}@test", ready=False, **FAST_RECOVERY)
        wait_until(lambda: _running(pg_stack), timeout_s=120, what="a running job")
        time.sleep(0.3)  # well inside the 1.5 s forward pass
        killed.extend(str(job.id) for job in _running(pg_stack))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    pg_stack.start_worker_child("survivor@test", ready=False, **FAST_RECOVERY)

    done = pg_stack.wait_all(ids, timeout_s=150)

    assert [job["status"] for job in done] == ["succeeded"] * 60
    assert all(job["result"] is not None for job in done)
    assert killed, "batches were really interrupted"
    by_id = {job["id"]: job for job in done}
    for job_id in killed:
        assert by_id[job_id]["attempts"] >= 2, "an interrupted job ran again"
    # Exactly one result each: only the latest claim could write, and it wrote once.
    rows = pg_stack.jobs(ids)
    assert all(row.claim_token is not None and row.finished_at is not None for row in rows)
    assert all(row.lease_expires_at is None for row in rows)


def _held_by_a_dead_worker(stack: Stack, count: int) -> set[str]:
    """Claim the ``count`` oldest queued jobs as a worker that then died, freed at once
    as its launcher frees them (claimed again, they are suspects); their ids."""
    settings = stack.settings
    with lifecycle.unit_of_work(stack.sessions, lambda events: None, None) as changes:
        held = lifecycle.claim(
            changes,
            worker="dead@test",
            token=uuid.uuid4(),
            limit=count,
            lease_s=settings.job_lease_s,
            max_attempts=settings.max_attempts,
            fair_share_window_s=settings.fair_share_window_s,
        )
    with transaction(stack.sessions) as session:
        freed = lifecycle.expire_predecessor(lifecycle.JobChanges(session), worker="dead@test")
    assert len(freed) == len(held)
    return {str(job.id) for job in held}


def test_a_dead_worker_s_jobs_run_one_after_another_before_queued_work(pg_stack: Stack) -> None:
    """Three jobs a dead worker held (claimed, then freed by its launcher) and a full
    batch and more of queued work: the worker runs the first abandoned job alone once its
    first batch is done, then the other two, each alone, before the rest of the queue,
    instead of one abandoned job per batch of queued work."""
    dead = _submit(pg_stack, 3, "held by a dead worker")
    assert _held_by_a_dead_worker(pg_stack, 3) == set(dead)
    queued = _submit(pg_stack, pg_stack.settings.max_batch_size + 4, "queued", first=3)
    pg_stack.start_worker()

    done = {job["id"]: job for job in pg_stack.wait_all(dead + queued)}

    assert {job["status"] for job in done.values()} == {"succeeded"}
    assert [done[job_id]["attempts"] for job_id in dead] == [2, 2, 2]
    started: dict[str, datetime] = {}
    for row in pg_stack.jobs(dead + queued):
        assert row.started_at is not None, f"succeeded job {row.id} has no started_at"
        started[str(row.id)] = row.started_at
    assert max(started[job_id] for job_id in dead) < max(started[job_id] for job_id in queued)


def test_a_suspect_whose_deadline_passes_while_it_waits_for_the_batch_expires(
    pg_stack: Stack,
) -> None:
    # A dead worker's job, claimed again with queued work: it waits, a suspect, for
    # the batch to empty before it runs alone, and its deadline passes meanwhile.
    pg_stack.start_worker(fault_injection="1")
    replies = pg_stack.celery.control.ping(timeout=1)
    assert replies is not None  # a broadcast with reply=True, as ping is: a list
    [node] = [name for reply in replies for name in reply]
    for queue in GPU_QUEUES:  # the worker takes no wake-up until everything is in place
        pg_stack.celery.control.cancel_consumer(queue, destination=[node], reply=True)
    client = pg_stack.client()
    suspect = client.submit(make_image(930), "held by a dead worker", timeout_s=4)["id"]
    assert _held_by_a_dead_worker(pg_stack, 1) == {suspect}
    # Eight seconds of work ([[slow]]: 0.5 s a step) claimed with it.
    batch = [
        client.submit(make_image(931 + i), "[[slow]] queued", max_new_tokens=16)["id"]
        for i in range(2)
    ]
    for queue in GPU_QUEUES:
        pg_stack.celery.control.add_consumer(queue, destination=[node], reply=True)

    done = {job["id"]: job for job in pg_stack.wait_all([suspect, *batch])}

    [row] = pg_stack.jobs([suspect])
    assert row.attempts == 2, "the worker claimed it again (before its deadline)"
    assert (done[suspect]["status"], done[suspect]["error"]["code"]) == ("failed", "expired")
    assert [done[job_id]["status"] for job_id in batch] == ["succeeded"] * 2


def test_all_jobs_survive_a_broker_flush_before_the_worker_starts(pg_stack: Stack) -> None:
    ids = _submit(pg_stack, 200, "flushed")
    assert pg_stack.redis.llen("interactive") == 200
    pg_stack.redis.flushall()
    pg_stack.start_ops(**FAST_RECOVERY)
    pg_stack.start_worker(**FAST_RECOVERY)

    done = pg_stack.wait_all(ids, timeout_s=150)

    assert [job["status"] for job in done] == ["succeeded"] * 200


def test_bad_image_and_oom_fail_alone_in_a_batch_of_eight(pg_stack: Stack) -> None:
    ids = _submit(pg_stack, 7, "isolate", first=500)
    oom = pg_stack.client().submit(make_image(600), "[[oom]] isolate", max_new_tokens=4)["id"]
    ids.insert(5, oom)
    # The API only accepts images that decode, so break one in the store afterwards.
    broken = pg_stack.jobs([ids[2]])[0]
    store, root = fsspec.core.url_to_fs(pg_stack.settings.blob_url)  # a directory or S3
    store.pipe_file(f"{root}/{broken.image_key}", b"\x89PNG\r\n\x1a\n this is no longer an image")
    pg_stack.start_worker(**FAST_RECOVERY)

    done = {job["id"]: job for job in pg_stack.wait_all(ids)}

    assert done[ids[2]]["status"] == "failed"
    assert done[ids[2]]["error"]["code"] == "image_undecodable"
    assert done[oom]["status"] == "failed"
    assert done[oom]["error"]["code"] == "inference_error"
    assert "out of memory" in done[oom]["error"]["message"]
    others = [done[i] for i in ids if i not in (ids[2], oom)]
    assert [job["status"] for job in others] == ["succeeded"] * 6
    assert all(job["attempts"] == 1 for job in done.values()), "nothing was retried"


def test_errors_that_escape_the_engine_still_fail_only_their_culprits(
    pg_stack: Stack,
) -> None:
    # Not a StepFailed: the engine's own handling missed it and its rows are still in it.
    ids = _submit(pg_stack, 7, "escapes", first=520)
    client = pg_stack.client()
    culprit = client.submit(make_image(620), "[[oom-escapes]] x", max_new_tokens=4)["id"]
    # Raised while the engine prepares the request, before any step.
    unprepared = client.submit(make_image(621), "[[prepare-fails]] x", max_new_tokens=4)["id"]
    ids[4:4] = [culprit, unprepared]
    pg_stack.start_worker(**FAST_RECOVERY)

    done = {job["id"]: job for job in pg_stack.wait_all(ids)}

    for job_id, says in ((culprit, "uncaught"), (unprepared, "processor failed")):
        assert done[job_id]["status"] == "failed"
        assert done[job_id]["error"]["code"] == "inference_error"
        assert says in done[job_id]["error"]["message"]
    others = [done[i] for i in ids if i not in (culprit, unprepared)]
    assert [job["status"] for job in others] == ["succeeded"] * 7
    assert all(job["attempts"] == 1 for job in done.values()), "nothing was retried"


def test_an_image_the_store_fails_to_give_goes_back_to_the_queue_not_to_failed(
    pg_stack: Stack,
) -> None:
    client = pg_stack.client()
    job_id = client.submit(make_image(900), "outage", max_new_tokens=2)["id"]
    [row] = pg_stack.jobs([job_id])
    # A read of a directory fails with an OSError that is not "missing": the store is
    # down, not the image gone.
    path = Path(pg_stack.settings.blob_url) / row.image_key
    image = path.read_bytes()
    path.unlink()
    path.mkdir()
    pg_stack.start_worker()

    wait_until(
        lambda: f"job {job_id}: the blob store failed" in _worker_logs(pg_stack),
        timeout_s=60,
        what="the worker to meet the failing store",
    )
    wait_until(
        lambda: pg_stack.jobs([job_id])[0].status is JobStatus.QUEUED,
        timeout_s=30,
        what="the job back in the queue",
    )
    [row] = pg_stack.jobs([job_id])
    assert (row.attempts, row.claim_token, row.error_code) == (0, None, None)

    path.rmdir()
    path.write_bytes(image)
    # Any later claim takes it first (oldest first): here, another job's.
    later = client.submit(make_image(901), "after the outage", max_new_tokens=2)["id"]
    done = {job["id"]: job for job in pg_stack.wait_all([job_id, later])}
    assert (done[job_id]["status"], done[job_id]["attempts"]) == ("succeeded", 1)
    assert done[later]["status"] == "succeeded"


def test_a_failing_store_is_left_alone_for_its_backoff_by_the_wake_ups_that_follow(
    pg_stack: Stack,
) -> None:
    # Four jobs, four wake-ups, every image unreadable: each wake-up is a run of its
    # own, and each used to claim all four at once, fail to read them and hand them
    # back, spending the queue's wake-ups on the outage within a second.
    client = pg_stack.client()
    ids = [client.submit(make_image(910 + i), "outage", max_new_tokens=2)["id"] for i in range(4)]
    images = {}
    for row in pg_stack.jobs(ids):
        path = Path(pg_stack.settings.blob_url) / row.image_key
        images[path] = path.read_bytes()
        path.unlink()
        path.mkdir()
    try:
        pg_stack.start_worker()
        wait_until(lambda: _store_failures(pg_stack, ids[0]), timeout_s=60, what="a failed read")
        time.sleep(6)  # past STORE_BACKOFF_S (5 s): the next run's read too
    finally:  # the blobs are content-addressed: later tests' images may be these
        for path, image in images.items():
            path.rmdir()
            path.write_bytes(image)
    done = pg_stack.wait_all(ids)

    assert [(job["status"], job["attempts"]) for job in done] == [("succeeded", 1)] * 4
    reads = _store_failures(pg_stack, ids[0])
    assert len(reads) >= 2, "a run after the backoff read it again"
    assert min(b - a for a, b in itertools.pairwise(reads)) > timedelta(seconds=4.5)


def _store_failures(stack: Stack, job_id: str) -> list[datetime]:
    """When the worker's runs failed to read ``job_id``'s image (its log lines' times)."""
    lines = _worker_logs(stack).splitlines()
    failed = [json.loads(line) for line in lines if f"job {job_id}: the blob store" in line]
    return [datetime.fromisoformat(line["ts"]) for line in failed]


def _worker_logs(stack: Stack) -> str:
    return "".join(path.read_text() for path in stack.workdir.glob("logs/worker-*.log"))


def test_jobs_being_isolated_can_be_canceled_and_a_shutdown_hands_them_back_as_suspects(
    pg_stack: Stack,
) -> None:
    # Started first: a worker that finds work waiting answers no ping while it runs.
    launcher = pg_stack.start_worker(fault_injection="1", drain_s="1")
    client = pg_stack.client()
    # 400 slow steps each: minutes, far past this test's waits, if one ran to its end.
    canceled, handed_back = (
        client.submit(make_image(730 + i), f"[[slow]] long #{i}", max_new_tokens=400)["id"]
        for i in range(2)
    )
    culprit = client.submit(make_image(732), "[[oom]] culprit", max_new_tokens=4)["id"]
    # The first step with the culprit fails; its rows run again in halves, the first
    # half alone: [canceled], then [handed_back, culprit], which fails, then [handed_back].
    wait_until(
        lambda: f"isolating the culprit among jobs {canceled}" in _worker_logs(pg_stack),
        timeout_s=60,
        what="the first step to fail",
    )

    assert pg_stack.call("DELETE", f"/v1/jobs/{canceled}").status_code == 200
    wait_until(
        lambda: f"job {canceled} is no longer this worker's" in _worker_logs(pg_stack),
        timeout_s=30,
        what="the worker to abort the canceled job's row while isolating",
    )
    launcher.send_signal(signal.SIGTERM)

    assert launcher.wait(timeout=60) == 0
    rows = {str(row.id): row for row in pg_stack.jobs([canceled, handed_back, culprit])}
    assert rows[canceled].status is JobStatus.CANCELED and rows[canceled].result is None
    for job_id in (handed_back, culprit):
        row = rows[job_id]
        # Still suspects: their claim counted, so the next worker runs each alone.
        assert (row.status, row.attempts, row.claim_token) == (JobStatus.QUEUED, 1, None)


def test_a_result_the_database_refuses_fails_alone_and_its_commit_mates_keep_theirs(
    pg_stack: Stack,
) -> None:
    ids = _submit(pg_stack, 7, "store", first=700)
    client = pg_stack.client()
    unstorable = client.submit(make_image(800), "[[unstorable]] store", max_new_tokens=4)["id"]
    ids.insert(3, unstorable)
    pg_stack.start_worker(**FAST_RECOVERY)

    done = {job["id"]: job for job in pg_stack.wait_all(ids)}

    assert done[unstorable]["status"] == "failed"
    assert done[unstorable]["error"]["code"] == "result_unstorable"
    assert "NUL" in done[unstorable]["error"]["message"]
    assert done[unstorable]["batch_size"] > 1, "it ended beside other rows"
    others = [done[i] for i in ids if i != unstorable]
    assert [job["status"] for job in others] == ["succeeded"] * 7
    assert all(job["attempts"] == 1 for job in done.values()), "nothing was retried"
    assert "results was refused; one by one" in _worker_logs(pg_stack), "it shared a commit"


def test_cancel_queued_running_and_finished(pg_stack: Stack) -> None:
    client = pg_stack.client()
    auth = {"Authorization": f"Bearer {pg_stack.key}"}
    queued = client.submit(make_image(1), "cancel me while queued")["id"]
    response = requests.delete(f"{pg_stack.url}/v1/jobs/{queued}", headers=auth, timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"

    pg_stack.start_worker(**FAST_RECOVERY)
    slow = client.submit(make_image(2), "[[slow]] cancel me while running")["id"]
    wait_until(
        lambda: pg_stack.jobs([slow])[0].status is JobStatus.RUNNING,
        timeout_s=60,
        what="the slow job to run",
    )
    response = requests.delete(f"{pg_stack.url}/v1/jobs/{slow}", headers=auth, timeout=10)
    assert response.status_code == 200
    finished = client.submit(make_image(3), "run me")["id"]
    assert client.wait(finished)["status"] == "succeeded"  # the slow batch has ended too

    assert client.get(queued)["started_at"] is None, "a canceled queued job never runs"
    running_job = client.get(slow)
    assert running_job["status"] == "canceled"
    assert running_job["result"] is None, "the running job's result was discarded"
    conflict = requests.delete(f"{pg_stack.url}/v1/jobs/{finished}", headers=auth, timeout=10)
    assert conflict.status_code == 409
    assert conflict.headers["Content-Type"] == "application/problem+json"
    assert conflict.json()["code"] == "job_finished"


def test_idempotency_key_returns_the_original_job(pg_stack: Stack) -> None:
    def post(key: str, prompt: str, api_key: str | None = None) -> requests.Response:
        return requests.post(
            f"{pg_stack.url}/v1/jobs",
            files={"image": ("a.png", make_image(9))},
            data={"prompt": prompt},
            headers={"Authorization": f"Bearer {api_key or pg_stack.key}", "Idempotency-Key": key},
            timeout=10,
        )

    first, again = post("order-42", "same"), post("order-42", "same")
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    changed = post("order-42", "different")
    assert changed.status_code == 422
    assert changed.json()["code"] == "idempotency_key_reused"
    other_key = json.loads(pg_stack.cli("keys", "create", "other", "--json"))["key"]
    elsewhere = post("order-42", "same", api_key=other_key)
    assert elsewhere.status_code == 202 and elsewhere.json()["id"] != first.json()["id"]
    assert len(pg_stack.jobs()) == 2


def test_sigterm_mid_batch_finishes_the_batch_and_reruns_nothing(pg_stack: Stack) -> None:
    launcher = pg_stack.start_worker(**FAST_RECOVERY)
    ids = _submit(pg_stack, 8, "[[slow]] finish me")
    wait_until(lambda: _running(pg_stack), timeout_s=60, what="a running job")
    in_flight = {str(job.id) for job in _running(pg_stack)}

    launcher.send_signal(signal.SIGTERM)

    assert launcher.wait(timeout=60) == 0
    for row in pg_stack.jobs(ids):
        if str(row.id) in in_flight:
            assert (row.status, row.attempts) == (JobStatus.SUCCEEDED, 1), "finished, once"
        else:
            assert row.status in (JobStatus.QUEUED, JobStatus.SUCCEEDED)
            assert row.attempts <= 1, "nothing ran twice"


def test_a_job_that_keeps_killing_its_worker_fails_after_max_attempts(pg_stack: Stack) -> None:
    pg_stack.start_ops(**FAST_RECOVERY)
    launcher = pg_stack.start_worker(**FAST_RECOVERY)
    poison = pg_stack.client().submit(make_image(7), "[[crash]] poison", max_new_tokens=4)["id"]
    innocent = _submit(pg_stack, 3, "innocent bystander")

    job = pg_stack.client().wait(poison, timeout_s=90)

    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert job["attempts"] == 3
    assert [j["status"] for j in pg_stack.wait_all(innocent)] == ["succeeded"] * 3
    assert launcher.poll() is None, "the launcher restarted its child instead of giving up"


def test_expired_jobs_fail_without_running(pg_stack: Stack) -> None:
    client = pg_stack.client()
    doomed = client.submit(make_image(4), "too late", timeout_s=1)["id"]
    time.sleep(1.5)
    pg_stack.start_worker(**FAST_RECOVERY)
    client.submit(make_image(5), "wake the worker")

    job = client.wait(doomed)

    assert job["status"] == "failed" and job["error"]["code"] == "expired"
    assert job["result"] is None and job["batch_size"] is None


def test_two_sweepers_at_once_send_each_stale_job_once(pg_stack: Stack) -> None:
    ids = _submit(pg_stack, 50, "stale")
    pg_stack.redis.flushall()
    settings = pg_stack.settings.model_copy(update={"requeue_after_s": 1})
    time.sleep(1.2)
    barrier = threading.Barrier(2)
    reports = []

    def run() -> None:
        barrier.wait()
        reports.append(
            sweep(
                settings,
                pg_stack.sessions,
                pg_stack.celery,
                JobFeed.from_url(settings.broker_url),
                BlobStore(settings.blob_url),
            )
        )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(report.resent for report in reports) == 50
    assert pg_stack.redis.llen("interactive") == 50
    with pg_stack.sessions() as session:
        assert session.scalar(select(Job.id).where(Job.enqueued_at.is_(None))) is None
    assert len(ids) == 50
