"""Long-polls cannot take the API away from other tenants.

The test API runs 2 gevent gunicorn workers; a long-poll is a sleeping greenlet, woken by
the job feed. One tenant opens more ``?wait=60`` long-polls than its cap (6 in the test
stack, ``SIGHTLINE_LONG_POLL_PER_TENANT``) on a job that stays queued (no worker runs);
another tenant's POST must still answer promptly, the waits over the cap answer at once
with the job's current state, and the held ones answer as soon as the job ends.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.stack import Stack, make_image

TENANT_CAP = 6
WAITERS = TENANT_CAP + 6
BOUND_S = 10.0
# Waits still open after this long hold a thread; the others were answered at once.
HELD_S = 3.0


def _poll(stack: Stack, job_id: str) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = stack.call("GET", f"/v1/jobs/{job_id}?wait=60", timeout=90)
    return time.monotonic() - started, response


def test_long_polls_over_the_tenant_cap_answer_at_once_and_leave_room(pg_stack: Stack) -> None:
    job_id = pg_stack.client().submit(make_image(1), "wait for me")["id"]
    rival = json.loads(pg_stack.cli("keys", "create", f"rival-{uuid.uuid4().hex[:6]}", "--json"))

    with ThreadPoolExecutor(WAITERS) as pool:
        polls = [pool.submit(_poll, pg_stack, job_id) for _ in range(WAITERS)]
        time.sleep(HELD_S)  # every long-poll has reached the API
        started = time.monotonic()
        created = pg_stack.call(
            "POST",
            "/v1/jobs",
            key=rival["key"],
            files={"image": ("a.png", make_image(2))},
            data={"prompt": "my turn"},
            timeout=BOUND_S * 3,
        )
        took = time.monotonic() - started
        print(f"\nanother tenant's POST answered in {took:.2f} s beside {WAITERS} long-polls")
        assert created.status_code == 202, created.text
        assert took < BOUND_S

        # The job ends, so the waits still held end too.
        assert pg_stack.call("DELETE", f"/v1/jobs/{job_id}").status_code == 200
        answers = [poll.result() for poll in polls]

    assert all(response.status_code == 200 for _, response in answers)
    at_once = [r.json()["status"] for took_s, r in answers if took_s < HELD_S - 0.5]
    held = [r.json()["status"] for took_s, r in answers if took_s >= HELD_S]
    print(f"{len(at_once)} waits answered at once, {len(held)} held until the job ended")
    assert len(held) == TENANT_CAP and len(at_once) + len(held) == WAITERS
    assert set(at_once) == {"queued"}, "over the cap: the job's current state, at once"
    assert set(held) == {"canceled"}, "woken by the cancel, not by the 60 s timeout"
