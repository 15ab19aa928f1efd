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
    wait_until(lambda: len(load.accepted) >= count, timeout_s=60, what="jobs flowing")


def test_redis_restart_under_load(cluster: Cluster) -> None:
    with Load(cluster).running() as load:
        _flowing(load)
        cluster.stop("redis")
        time.sleep(5)
        cluster.start_redis()
        restarted_at = time.time()
        time.sleep(5)
    report = settle(cluster, load, "Redis restart", restarted_at)
    assert report.lost == 0 and report.duplicates == 0
    assert report.succeeded == report.accepted
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
    report = settle(cluster, load, "Redis cut off from the API host", healed_at)
    report.extra["accepted_while_cut"] = accepted_during
    print(report.line())
    assert report.lost == 0 and report.duplicates == 0
    assert report.succeeded == report.accepted
    assert accepted_during, "submissions commit while the broker is unreachable"
    assert not report.refused, load.refused


def test_the_api_host_cut_off_from_the_data_host(cluster: Cluster) -> None:
    with Load(cluster).running() as load:
        _flowing(load)
        cluster.api.drop_to(cluster.data.address, PG_PORT)
        cluster.api.drop_to(cluster.data.address, REDIS_PORT)
        cut_at = time.time()
        time.sleep(FAULT_S)
        cluster.api.heal()
        healed_at = time.time()
        wait_until(
            lambda: any(at > healed_at for at, _ in load.accepted),
            timeout_s=60,
            what="a job accepted after the link came back",
        )
        answered_s = min(at for at, _ in load.accepted if at > healed_at) - healed_at
        time.sleep(5)
    report = settle(cluster, load, "API host cut off from the data host", healed_at)
    report.extra["api_answers_s"] = round(answered_s, 1)
    print(report.line())
    assert report.lost == 0 and report.duplicates == 0
    assert report.succeeded == report.accepted
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
    sink = cluster.hosts["sink"]
    sink.drop_to()
    try:
        blackholed = Load(cluster, per_s=2, callback_host="sink")
        healthy = Load(cluster, per_s=2)
        with blackholed.running(), healthy.running():
            time.sleep(FAULT_S)
        stopped = time.time()
        report = settle(cluster, healthy, "webhook receiver blackholing", stopped)
        delivered_s = time.time() - stopped
        report.extra.update(blackholed_jobs=len(blackholed.ids), delivered_s=round(delivered_s))
        print(report.line())
        assert report.lost == 0 and report.duplicates == 0
        assert report.extra["webhooks missing"] == 0, "deliveries to the healthy receiver stalled"
        assert delivered_s < 60, "the healthy receiver's deliveries waited on the blackhole"
    finally:
        sink.heal()
