"""Prometheus metrics after a real run agree with the database.

Workers: the launcher serves the sum of its two children's metrics; every decoding step
is counted once in the running-rows histogram and once in the step-time histogram. API:
``/metrics`` (gunicorn, two processes) counts requests and accepted jobs, and reports
jobs by status straight from the database.
"""

from __future__ import annotations

from collections import Counter

from cli.redis_server import free_port
from tests.prometheus import Samples, scrape, scrape_until, total
from tests.stack import Stack, make_image


def _of_node(samples: Samples, name: str, node: str) -> list[float]:
    """The values of ``name`` whose ``worker`` label is node ``node@…``."""
    return [
        value
        for (found, labels), value in samples.items()
        if found == name and dict(labels).get("worker", "").startswith(f"{node}@")
    ]


def test_metrics_agree_with_the_database(pg_stack: Stack) -> None:
    port = free_port()
    pg_stack.start_worker(devices="cpu,cpu", fault_injection="1", worker_metrics_port=str(port))
    api_before = scrape(f"{pg_stack.url}/metrics")
    client = pg_stack.client()
    ids = [client.submit(make_image(i), "describe", max_new_tokens=4)["id"] for i in range(12)]
    ids.append(client.submit(make_image(99), "describe [[oom]]", max_new_tokens=4)["id"])
    pg_stack.wait_all(ids, timeout_s=120)

    rows = pg_stack.jobs(ids)
    by_status = Counter(row.status.value for row in rows)
    assert by_status == {"succeeded": 12, "failed": 1}
    # The worker counts a job just after committing it: allow it a moment. The second
    # child may still be loading its model (the first one can run every job alone).
    worker = scrape_until(
        f"http://127.0.0.1:{port}/metrics",
        lambda found: (
            total(found, "sightline_worker_jobs_finished_total") == len(ids)
            and all(_of_node(found, "sightline_worker_up", n) == [1.0] for n in ("cpu0", "cpu1"))
        ),
        timeout_s=60,
        what=f"the finished-jobs counter to reach {len(ids)} with both children up",
    )

    for status, count in by_status.items():
        assert total(worker, "sightline_worker_jobs_finished_total", status=status) == count
    assert total(worker, "sightline_worker_jobs_finished_total", code="inference_error") == 1
    assert total(worker, "sightline_worker_queue_wait_seconds_count") == len(ids)
    # Tokens count as generated, so the rows of failed steps (run again apart) count too.
    assert total(worker, "sightline_worker_tokens_generated_total") >= sum(
        row.output_tokens or 0 for row in rows
    )
    # Every step is timed, the failed ones (split until the culprit is alone) too.
    steps = total(worker, "sightline_worker_step_seconds_count")
    assert total(worker, "sightline_worker_step_seconds_count", outcome="error") >= 1
    assert total(worker, "sightline_worker_running_rows_count") == steps
    # Every job that reached the model got a first token: 4 tokens each, so at least 4
    # steps, and more rows per step than one (they ran side by side).
    assert total(worker, "sightline_worker_time_to_first_token_seconds_count") >= 12
    assert total(worker, "sightline_worker_running_rows_sum") > steps
    for node in ("cpu0", "cpu1"):
        [load_s] = _of_node(worker, "sightline_worker_model_load_seconds", node)
        assert load_s > 0, node
        # The model, the libraries and the rest: hundreds of thousands of objects.
        [frozen] = _of_node(worker, "sightline_worker_heap_frozen_objects", node)
        assert frozen > 100_000, node

    # sightline_queue_depth counts broker messages, which are wake-up calls, not jobs: a
    # worker that claimed more jobs than its own message named leaves the others' messages
    # behind, and an idle worker drops them soon after. Jobs are counted by sightline_jobs.
    # Each API process reads the database and the broker at most once per metrics_cache_s:
    # wait for one scrape with figures from after the run and the leftover wake-ups gone.
    api = scrape_until(
        f"{pg_stack.url}/metrics",
        lambda found: (
            total(found, "sightline_queue_depth", queue="interactive") == 0
            and total(found, "sightline_jobs", status="succeeded") == by_status["succeeded"]
        ),
        timeout_s=30,
        what="post-run figures with an empty interactive queue",
    )
    for status, count in by_status.items():
        assert total(api, "sightline_jobs", status=status) == count
    assert total(api, "sightline_jobs", status="queued") == 0
    # No job asked for a webhook: the gauges are there, at zero.
    for status in ("pending", "failed"):
        assert api[("sightline_webhook_events", frozenset({("status", status)}))] == 0
    assert api[("sightline_webhook_oldest_pending_seconds", frozenset())] == 0
    route = {"method": "POST", "route": "/v1/jobs", "status": "202"}
    accepted = total(api, "sightline_http_requests_total", **route) - total(
        api_before, "sightline_http_requests_total", **route
    )
    assert accepted == len(ids)
    assert total(api, "sightline_api_jobs_accepted_total") - total(
        api_before, "sightline_api_jobs_accepted_total"
    ) == len(ids)
    assert total(api, "sightline_broker_up") == 1
