"""Slow receivers cannot take webhook delivery away from others, nor stop the sweeper.

Never-answering endpoints are loopback sockets that accept connections and never reply,
more of them than the ops worker has delivery threads, with an attempt timeout (45 s)
longer than the bound a healthy endpoint's webhook must meet (30 s): only the
per-endpoint and per-tenant limits and the sweeper's own thread can meet it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TypedDict, Unpack

import pytest

from cli.processes import stop
from cli.redis_server import free_port
from tests.receiver import Receiver
from tests.stack import Stack, make_image

HANGING_TIMEOUT_S = "45"
BOUND_S = 30.0
FAST = {
    "sweep_interval_s": "0.5",
    "webhook_retry_schedule_s": "0,0.4,0.8,1.2",
    "webhook_jitter": "0",
    "webhook_timeout_s": HANGING_TIMEOUT_S,
}


class Silent:
    """A loopback endpoint that accepts connections and never answers; counts them."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.held.append(conn)

    def close(self) -> None:
        """Close everything, so the attempts still waiting end at once. The listener is
        shut down before it is closed: a close alone neither wakes the thread blocked in
        accept() nor resets the connections still in the backlog, which would then wait
        out the whole attempt timeout (and hold up stopping the ops worker)."""
        for sock in (self._listener, *self.held):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def healthy() -> Iterator[Receiver]:
    started = Receiver(free_port()).start()
    yield started
    started.stop()


@pytest.fixture
def silent() -> Iterator[list[Silent]]:
    endpoints: list[Silent] = []
    yield endpoints
    for endpoint in endpoints:
        endpoint.close()


def _key(stack: Stack) -> str:
    name = f"tenant-{uuid.uuid4().hex[:8]}"
    return str(json.loads(stack.cli("keys", "create", name, "--json"))["key"])


class _Extra(TypedDict, total=False):
    """Job fields a test adds to those ``_submit`` sets."""

    timeout_s: int


def _submit(stack: Stack, key: str, url: str, index: int, **extra: Unpack[_Extra]) -> str:
    job = stack.client(key).submit(
        make_image(index), "hook me", callback_url=url, max_new_tokens=2, **extra
    )
    return str(job["id"])


def _hold_threads(stack: Stack, key: str, silent: list[Silent], urls: list[str]) -> None:
    """Finish one job per URL (of ``key``), then wait until their attempts hang."""
    ids = [_submit(stack, key, url, i) for i, url in enumerate(urls)]
    for job_id in ids:
        stack.client(key).wait(job_id, timeout_s=120)
    deadline = time.monotonic() + 30
    while sum(len(s.held) for s in silent) < 2:
        assert time.monotonic() < deadline, "no attempt reached the silent endpoints"
        time.sleep(0.1)
    time.sleep(1.0)  # every attempt that could start has started


def _delivered_within(receiver: Receiver, started: float, count: int = 1) -> float:
    receiver.wait_for(count, timeout_s=BOUND_S)
    return receiver.requests[count - 1].at - started


def test_silent_endpoints_of_one_tenant_leave_delivery_and_sweeps_to_others(
    pg_stack: Stack, healthy: Receiver, silent: list[Silent]
) -> None:
    pg_stack.start_ops(**FAST)
    worker = pg_stack.start_worker(**FAST)
    flooder, other = _key(pg_stack), _key(pg_stack)
    silent.extend(Silent() for _ in range(10))  # more endpoints than delivery threads (8)
    _hold_threads(pg_stack, flooder, silent, [f"http://127.0.0.1:{s.port}/" for s in silent])

    started = time.time()
    job_id = _submit(pg_stack, other, healthy.url, 99)
    took = _delivered_within(healthy, started)
    print(f"\nhealthy endpoint's webhook {took:.1f} s after submission, 10 silent endpoints")
    assert json.loads(healthy.requests[0].body)["data"]["id"] == job_id

    # Only the sweeper fails a job whose timeout passed while no worker ran it; its
    # job.failed webhook shows sweeps go on while the silent endpoints hold attempts.
    stop(worker)
    started = time.time()
    expired_id = _submit(pg_stack, other, healthy.url, 98, timeout_s=1)
    took = _delivered_within(healthy, started, count=2)
    print(f"job expired by the sweeper, its webhook {took:.1f} s after submission")
    payload = json.loads(healthy.requests[1].body)
    assert payload["type"] == "job.failed" and payload["data"]["id"] == expired_id
    assert payload["data"]["error"]["code"] == "expired"


def test_one_silent_endpoint_takes_only_its_share_whatever_its_paths(
    pg_stack: Stack, healthy: Receiver, silent: list[Silent]
) -> None:
    settings = FAST | {"webhook_endpoint_concurrency": "2", "webhook_tenant_concurrency": "100"}
    pg_stack.start_ops(**settings)
    pg_stack.start_worker(**settings)
    tenant = _key(pg_stack)
    silent.append(Silent())
    # Paths and query strings vary; the endpoint (tenant, scheme, host, port) does not.
    base = f"http://127.0.0.1:{silent[0].port}"
    urls = [f"{base}/hook/{i}?attempt={i}" for i in range(12)]
    _hold_threads(pg_stack, tenant, silent, urls)
    assert len(silent[0].held) == 2, "the endpoint's limit is 2 whatever the path"

    started = time.time()
    _submit(pg_stack, tenant, healthy.url, 99)
    took = _delivered_within(healthy, started)
    print(f"\nsame tenant's healthy endpoint {took:.1f} s after submission, 12 stuck attempts")


def test_sweeps_run_while_every_delivery_thread_is_held(
    pg_stack: Stack, silent: list[Silent]
) -> None:
    pg_stack.start_ops(**FAST)
    worker = pg_stack.start_worker(**FAST)
    silent.extend(Silent() for _ in range(10))
    # Two tenants at their limit of 4 each hold all 8 delivery threads.
    for tenant, group in ((_key(pg_stack), silent[:5]), (_key(pg_stack), silent[5:])):
        _hold_threads(pg_stack, tenant, group, [f"http://127.0.0.1:{s.port}/" for s in group])
    assert sum(len(s.held) for s in silent) == 8

    stop(worker)
    started = time.monotonic()
    job_id = pg_stack.client().submit(make_image(3), "expire me", timeout_s=1)["id"]
    job = pg_stack.client().wait(job_id, timeout_s=BOUND_S)
    print(f"\njob expired by the sweeper {time.monotonic() - started:.1f} s after submission")
    assert job["status"] == "failed" and job["error"]["code"] == "expired"
