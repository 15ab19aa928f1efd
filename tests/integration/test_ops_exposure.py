"""What the operational endpoints show, to whom, and at what cost (issue 15, items 7-8).

Real processes as an operator starts them: ``sightline api`` against the test
PostgreSQL and Redis, ``sightline worker`` for its metrics listener. ``/metrics`` answers
only the bearer of the metrics token (nobody in production without one) and reads the
database at most once per interval; ``/readyz`` says up or down and broadcasts nothing
to the workers; the worker metrics listen on loopback unless told otherwise; production
mode refuses the public development secret.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import redis
import requests

from cli.processes import start_api, start_worker, stop, wait_http_ok
from cli.redis_server import free_port
from tests.prometheus import METRICS_TOKEN, parse, scrape, total
from tests.stack import Stack, make_image
from tests.waiting import wait_until

PRODUCTION = {"SIGHTLINE_ENVIRONMENT": "production", "SIGHTLINE_SECRET_KEY": "s3cret-for-tests"}


@contextmanager
def _api(stack: Stack, name: str, **env: str) -> Iterator[str]:
    """``sightline api`` (one gunicorn worker, so every request meets the same process)
    with ``stack``'s settings and ``env`` on top; yields its URL once ready."""
    port = free_port()
    process = start_api({**stack.env, **env}, port, stack.workdir / "logs" / f"{name}.log", 1)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/readyz", timeout_s=60, process=process)
        yield url
    finally:
        stop(process)


def test_api_refuses_to_start_in_production_with_the_development_secret(
    pg_stack: Stack,
) -> None:
    env = {k: v for k, v in pg_stack.env.items() if k != "SIGHTLINE_SECRET_KEY"}
    env["SIGHTLINE_ENVIRONMENT"] = "production"
    log = pg_stack.workdir / "logs" / "api-default-secret.log"
    process = start_api(env, free_port(), log, 1)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        stop(process)
        raise
    assert code != 0
    assert "SIGHTLINE_SECRET_KEY must be set" in log.read_text()
    # The same command with a real secret starts (so the refusal above was the secret's).
    with _api(pg_stack, "api-real-secret", **PRODUCTION) as url:
        assert requests.get(f"{url}/readyz", timeout=10).status_code == 200


def test_metrics_answer_only_the_bearer_of_the_metrics_token(pg_stack: Stack) -> None:
    url = f"{pg_stack.url}/metrics"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {METRICS_TOKEN}"},
        # An API key is not the metrics token.
        {"Authorization": f"Bearer {pg_stack.key}"},
    ):
        refused = requests.get(url, headers=headers, timeout=10)
        assert refused.status_code == 401, headers
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "unauthorized"
        assert "SIGHTLINE_METRICS_TOKEN" in refused.json()["detail"]
        assert "sightline_jobs" not in refused.text
    assert total(scrape(url), "sightline_database_up") == 1


def test_metrics_are_off_in_production_without_a_token(pg_stack: Stack) -> None:
    with _api(pg_stack, "api-no-metrics-token", SIGHTLINE_METRICS_TOKEN="", **PRODUCTION) as url:
        refused = requests.get(f"{url}/metrics", timeout=10)
    assert refused.status_code == 404
    assert refused.json()["code"] == "not_found"
    assert "SIGHTLINE_METRICS_TOKEN" in refused.json()["detail"]
    assert "sightline_jobs" not in refused.text


def test_metrics_read_the_database_once_per_interval_however_often_scraped(
    pg_stack: Stack,
) -> None:
    with _api(pg_stack, "api-metrics-cache", SIGHTLINE_METRICS_CACHE_S="3600") as url:
        before = scrape(f"{url}/metrics")
        assert total(before, "sightline_jobs", status="queued") == 0
        pg_stack.client().submit(make_image(1), "describe")  # no worker: it stays queued
        again = scrape(f"{url}/metrics")
    assert pg_stack.jobs()[0].status.value == "queued"
    # The figures are those of the first scrape, while the request counters are live.
    assert total(again, "sightline_jobs", status="queued") == 0
    route = {"method": "GET", "route": "/metrics", "status": "200"}
    assert total(again, "sightline_http_requests_total", **route) > total(
        before, "sightline_http_requests_total", **route
    )


def test_readyz_says_up_or_down_and_broadcasts_nothing_to_workers(pg_stack: Stack) -> None:
    broker = redis.Redis.from_url(pg_stack.env["SIGHTLINE_BROKER_URL"])
    # redis leaves pubsub() unannotated.
    listener: redis.client.PubSub = broker.pubsub()  # type: ignore[no-untyped-call]
    # Celery's broadcast commands (ping, inspect) travel on the pidbox fan-out channel.
    listener.psubscribe("*pidbox*")
    wait_until(listener.get_message, timeout_s=10, what="the subscription to be confirmed")
    with _api(pg_stack, "api-readyz", SIGHTLINE_READINESS_CACHE_S="0") as url:
        answers = [requests.get(f"{url}/readyz", timeout=10) for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200] * 5
    assert answers[-1].json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok"},
    }
    assert listener.get_message(timeout=1.0) is None, "/readyz broadcast to the workers"
    listener.close()


def _listening_address(port: int) -> str | None:
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            return str(conn.laddr.ip)
    return None


@pytest.mark.parametrize(("host", "expected"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_worker_metrics_listen_on_loopback_unless_told_otherwise(
    pg_stack: Stack, tmp_path: Path, host: str | None, expected: str
) -> None:
    port = free_port()
    env = {**pg_stack.env, "SIGHTLINE_WORKER_METRICS_PORT": str(port)}
    if host is not None:
        env["SIGHTLINE_WORKER_METRICS_HOST"] = host
    # The launcher serves its metrics before its child has loaded the model.
    launcher = start_worker(env, tmp_path / "worker.log")
    try:
        bound = wait_until(
            lambda: _listening_address(port), timeout_s=60, what=f"a listener on port {port}"
        )
        page = parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    finally:
        stop(launcher)
    assert bound == expected
    assert any(name == "sightline_worker_up" for name, _ in page)
