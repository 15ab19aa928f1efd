"""Redis restarted or cut off from the API host, the API host cut off from the data host,
and a webhook receiver that blackholes its packets, all under load.

- Redis restart (its queues are lost: no persistence) and a Redis partition from the API
  host: submissions still commit (202); the wake-ups lost are re-sent by the sweeper and
  every job finishes.
- The API host cut off from the data host: the API answers 503 problem+json (never a
  hang, never a half-written job) and answers again once the link is back.
- A receiver that drops every packet (no RST): deliveries to another receiver go on.
"""

from __future__ import annotations

import time

from tests.cluster.cluster import PG_PORT, REDIS_PORT, Cluster, Load, settle
from tests.waiting import wait_until

FAULT_S = 20


def _flowing(load: Load, count: int = 10) -> None:
    wait_until(lambda: len(load.accepted) >= count, timeout_s=60, what=f"{count} jobs accepted")


# Seconds Redis stays down in each of the restarts, one after another under load. Short
# outages matter: kombu's reconnect then races the ops worker's unacknowledged messages,
# which stopped the ops worker (sweeper and webhooks) for good before worker/ops.py
# restarted it.
REDIS_DOWN_S = (5.0, 1.0, 0.3)
OPS_RESTARTED = "ops worker stopped on an unrecoverable error"


def test_redis_restart_under_load(cluster: Cluster) -> None:
    ops_restarts = cluster.log_lines("ops", OPS_RESTARTED)
    with Load(cluster).running() as load:
        for down_s in REDIS_DOWN_S:
            _flowing(load, len(load.accepted) + 10)
            cluster.stop("redis")
            time.sleep(down_s)
            cluster.start_redis()
            restarted_at = time.time()
        time.sleep(5)
    report = settle(cluster, load, f"Redis restart x{len(REDIS_DOWN_S)}", restarted_at)
    report.extra["ops_worker_restarts"] = cluster.log_lines("ops", OPS_RESTARTED) - ops_restarts
    report.check()
    assert not report.refused, load.refused


def test_redis_cut_off_from_the_api_host(cluster: Cluster) -> None:
    with Load(cluster).running() as load:
        _flowing(load)
        cluster.api.drop_to(cluster.data.address, REDIS_PORT)
        cut_at = time.time()
        time.sleep(FAULT_S)
        cluster.api.heal()
        healed_at = time.time()
        accepted_during = sum(1 for at, _ in load.accepted if cut_at <= at < healed_at)
        time.sleep(5)
    slowest = load.slowest_answer_s(cut_at, healed_at)
    report = settle(cluster, load, "Redis cut off from the API host", healed_at)
    report.extra.update(accepted_while_cut=accepted_during, slowest_202_s=round(slowest, 1))
    report.check()
    assert accepted_during, "submissions commit while the broker is unreachable"
    assert not report.refused, load.refused
    # A publish to the unreachable broker gives up within about 2 s (and the rate
    # limit's counter within 1 s); generous for a busy 2-core machine.
    assert slowest < 10, f"a submission waited {slowest:.1f} s while Redis was cut off"


def test_the_api_host_cut_off_from_the_data_host(cluster: Cluster) -> None:
    with Load(cluster).running() as load:
        _flowing(load)
        cluster.api.drop_to(cluster.data.address, PG_PORT)
        cluster.api.drop_to(cluster.data.address, REDIS_PORT)
        cut_at = time.time()
        time.sleep(FAULT_S)
        cluster.api.heal()
        healed_at = time.time()
        answered_s = load.accepted_again_s(
            healed_at, what="a job accepted after the link came back"
        )
        time.sleep(5)
    slowest = load.slowest_answer_s(cut_at, healed_at)
    report = settle(cluster, load, "API host cut off from the data host", healed_at)
    report.extra.update(api_answers_s=round(answered_s, 1), slowest_503_s=round(slowest, 1))
    report.check()
    during = [(status, body) for at, status, body in load.refused if at >= cut_at]
    assert during, "requests during the cut were refused"
    assert all(status == 503 and "503" in body for status, body in during), during
    # Nothing half-written: every job row the database holds was answered 202.
    rows = cluster.sql(
        "SELECT count(*) FROM jobs WHERE created_at >= to_timestamp(%s) "
        "AND created_at <= to_timestamp(%s)",
        cut_at - 1,
        healed_at + 1,
    )
    accepted_around = sum(1 for at, _ in load.accepted if cut_at - 2 <= at <= healed_at + 1)
    assert rows[0][0] <= accepted_around


def test_a_blackholing_webhook_receiver_does_not_hold_up_the_others(cluster: Cluster) -> None:
    """One tenant's receiver drops every packet, so each attempt to it takes the whole
    attempt timeout; another tenant's receiver gets its webhooks all the same. (Within
    one tenant, the blackholed attempts would hold the tenant's delivery slots: that is
    the tenant's own share, by design.)"""
    sink = cluster.hosts["sink"]
    sink.drop_to()
    try:
        blackholed = Load(cluster, per_s=2, callback_host="sink", key=cluster.other_key)
        healthy = Load(cluster, per_s=2)
        with blackholed.running(), healthy.running():
            time.sleep(FAULT_S)
        stopped = time.time()
        report = settle(cluster, healthy, "webhook receiver blackholing", stopped)
        delivered_s = time.time() - stopped
        report.extra.update(blackholed_jobs=len(blackholed.ids), delivered_s=round(delivered_s))
        report.check()
        assert delivered_s < 60, "the healthy receiver's deliveries waited on the blackhole"

        def blackholed_succeeded() -> bool:
            rows = cluster.sql(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'succeeded'",
                blackholed.ids,
            )
            return bool(rows[0][0] == len(blackholed.ids))

        wait_until(blackholed_succeeded, timeout_s=120, interval_s=1, what="every job succeeded")
    finally:
        sink.heal()
