"""Flower, started as ``sightline flower``, shows every job with its real final state.

The hard case is a micro-batch: one message wakes a worker that runs eleven jobs, and
the other ten jobs' messages are processed later or never. Here nine of them are
deleted from the broker before any worker starts, so those jobs' final states can only
come from the task events the batch sends itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cli.processes import sightline_command, spawn, stop, wait_http_ok
from cli.redis_server import free_port
from shared.tasks import INFER_TASK, QUEUE_INTERACTIVE
from tests.stack import Stack, make_image
from tests.waiting import wait_until


@pytest.fixture
def flower(pg_stack: Stack) -> Iterator[str]:
    """``sightline flower`` on a free port against the stack's broker; yields its URL."""
    port = free_port()
    env = {**pg_stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    process = spawn(
        sightline_command("flower", "--port", str(port)),
        env,
        pg_stack.workdir / "logs" / "flower.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/healthcheck", timeout_s=60, process=process)
        yield url
    finally:
        stop(process)


def _tasks(url: str) -> dict[str, dict[str, Any]]:
    response = requests.get(f"{url}/api/tasks", params={"limit": 1000}, timeout=5)
    response.raise_for_status()
    found: dict[str, dict[str, Any]] = response.json()
    return found


def test_every_batched_job_shows_its_final_state(pg_stack: Stack, flower: str) -> None:
    client = pg_stack.client()
    ok = [client.submit(make_image(i), "describe", max_new_tokens=4)["id"] for i in range(10)]
    failing = client.submit(make_image(10), "describe [[oom]]", max_new_tokens=4)["id"]
    # Keep only the two oldest wake-ups (Redis pops from the right): the first wakes the
    # batch, the second reaches a worker during or after it, and the other nine never do.
    assert pg_stack.redis.llen(QUEUE_INTERACTIVE) == 11
    pg_stack.redis.ltrim(QUEUE_INTERACTIVE, -2, -1)

    pg_stack.start_worker(
        devices="cpu,cpu", fault_injection="1", max_batch_size="16", worker_metrics_port="0"
    )
    done = {job["id"]: job for job in pg_stack.wait_all([*ok, failing], timeout_s=120)}
    assert {done[i]["status"] for i in ok} == {"succeeded"}
    assert done[failing]["status"] == "failed"
    assert max(job["batch_size"] or 0 for job in done.values()) > 1, "no micro-batch ran"

    wanted = {**dict.fromkeys(ok, "SUCCESS"), failing: "FAILURE"}

    def states_as_wanted() -> dict[str, Any] | None:
        tasks = _tasks(flower)
        states = {job_id: tasks.get(job_id, {}).get("state") for job_id in wanted}
        return tasks if states == wanted else None

    tasks = wait_until(
        states_as_wanted, timeout_s=30, interval_s=0.5, what=f"Flower to show {wanted}"
    )
    for job_id in wanted:
        assert tasks[job_id]["name"] == INFER_TASK
        assert job_id in tasks[job_id]["args"]
    assert "inference_error" in tasks[failing]["exception"]

    workers = requests.get(f"{flower}/api/workers", params={"refresh": 1}, timeout=30).json()
    assert {name.split("@")[0] for name in workers} >= {"cpu0", "cpu1"}
