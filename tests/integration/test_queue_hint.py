"""The worker's queue hint (``worker/queue_hint.py``) against a real Redis and the wake-ups
the API really sends (``shared.enqueue``): an announced job is waiting until a claim comes
back short; one announced during a claim still is; an empty queue is tried again every
``recheck_s``; another database's announcements are not heard; a lost connection, or an
unreachable broker, says that anything may be waiting. A fake clock drives the
rechecks."""

from __future__ import annotations

import uuid

import redis
from celery import Celery

from cli.redis_server import RedisServer, free_port
from shared.celery_app import create_celery
from shared.enqueue import enqueue_job, enqueue_wakeups
from shared.job_feed import queued_channel
from shared.models import Priority
from shared.settings import Settings
from shared.tasks import QUEUE_INTERACTIVE
from tests.waiting import wait_until
from worker.queue_hint import QueueHint

INTERACTIVE, BULK = Priority.INTERACTIVE, Priority.BULK


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _broker(redis_server: RedisServer, database: int) -> tuple[redis.Redis, Celery]:
    """A database of the tests' Redis of its own, emptied, and a Celery app sending to it."""
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{database}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    return client, create_celery(Settings(broker_url=url))


def _listening(client: redis.Redis, clock: Clock) -> QueueHint:
    """A hint whose subscription is confirmed and whose first claims came back short."""
    hint = QueueHint(client, clock=clock)
    assert hint.waiting(), "nothing is known before the subscription is confirmed"
    _quiet(hint)
    return hint


def _quiet(hint: QueueHint) -> None:
    """Read, and claim finding nothing, until ``hint`` says no job waits: once its
    subscription is confirmed."""

    def claimed_nothing() -> bool:
        hint.read()
        hint.drained()
        return not hint.waiting()

    wait_until(claimed_nothing, timeout_s=5, what="the subscription to be confirmed")


def _heard(hint: QueueHint, priority: Priority | None = None) -> bool:
    """Read until ``hint`` says a job of ``priority`` may be waiting (pub/sub delivers
    asynchronously: a read right after the publish may come too early)."""

    def heard() -> bool:
        hint.read()
        return hint.waiting(priority)

    return wait_until(heard, timeout_s=5, what=f"an announcement ({priority})")


def test_an_announced_job_waits_until_a_claim_comes_back_short(
    redis_server: RedisServer,
) -> None:
    client, app = _broker(redis_server, 7)
    hint = _listening(client, Clock())

    enqueue_job(app, uuid.uuid4(), INTERACTIVE)
    assert _heard(hint, INTERACTIVE)
    assert not hint.waiting(BULK), "an interactive announcement says nothing of bulk jobs"
    hint.read()
    assert hint.waiting(INTERACTIVE), "until a claim comes back short"
    hint.drained(INTERACTIVE)  # a claim took that job; its message stays in the list
    hint.read()
    assert client.llen(QUEUE_INTERACTIVE) == 1
    assert not hint.waiting(INTERACTIVE) and not hint.waiting()

    enqueue_wakeups(app, [uuid.uuid4() for _ in range(20)], BULK, every=8)
    assert _heard(hint, BULK)
    assert not hint.waiting(INTERACTIVE)
    hint.drained()
    hint.read()
    assert not hint.waiting(), "one announcement per bulk insert, not per message"


def test_a_claim_that_began_before_an_announcement_does_not_hide_it(
    redis_server: RedisServer,
) -> None:
    """``drained`` keeps what was read before the claim, never what came later."""
    client, app = _broker(redis_server, 8)
    hint = _listening(client, Clock())
    enqueue_job(app, uuid.uuid4(), INTERACTIVE)
    assert _heard(hint, INTERACTIVE)  # read before the claim
    enqueue_job(app, uuid.uuid4(), INTERACTIVE)  # queued while it ran
    hint.drained(INTERACTIVE)
    assert _heard(hint, INTERACTIVE), "the job queued during the claim"


def test_another_databases_announcements_are_not_heard(redis_server: RedisServer) -> None:
    """Pub/sub channels are the server's: a second deployment on another database of the
    same Redis must not make this one's workers claim for nothing."""
    client, app = _broker(redis_server, 10)
    _, other = _broker(redis_server, 11)
    hint = _listening(client, Clock())
    enqueue_job(other, uuid.uuid4(), INTERACTIVE)
    enqueue_job(app, uuid.uuid4(), BULK)  # published later: read after the other one
    assert _heard(hint, BULK)
    assert not hint.waiting(INTERACTIVE)


def test_an_empty_queue_is_tried_again_every_recheck_s(redis_server: RedisServer) -> None:
    """Work may come without an announcement (a dead worker's abandoned job): a claim runs
    again once ``recheck_s`` has passed since the last one came back short."""
    client, _ = _broker(redis_server, 9)
    clock = Clock()
    hint = _listening(client, clock)
    clock.now += 0.9
    assert not hint.waiting()
    clock.now += 0.2
    assert hint.waiting() and hint.waiting(BULK) and hint.waiting(INTERACTIVE)


def test_a_lost_connection_says_anything_may_be_waiting(redis_server: RedisServer) -> None:
    """What was announced while the subscription was away is lost: once it is made again,
    every kind of claim runs once more."""
    client, app = _broker(redis_server, 12)
    hint = _listening(client, Clock())
    client.client_kill_filter(_type="pubsub")
    enqueue_job(app, uuid.uuid4(), BULK)  # announced to no one
    assert _heard(hint, INTERACTIVE) and hint.waiting(BULK)
    _quiet(hint)  # listening again: claims stop once they come back short


def test_nothing_is_held_for_a_worker_between_runs(redis_server: RedisServer) -> None:
    """A worker listens only while it runs a batch: an idle one would have Redis buffer
    every announcement of a busy fleet for it."""
    client, app = _broker(redis_server, 13)
    channel = queued_channel(client)
    hint = QueueHint(client, clock=Clock())
    with hint.listening():
        _quiet(hint)  # subscribed
        assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]
    wait_until(
        lambda: client.pubsub_numsub(channel) == [(channel.encode(), 0)],
        timeout_s=5,
        what="the subscription to be left",
    )
    enqueue_job(app, uuid.uuid4(), BULK)  # between runs
    with hint.listening():
        assert _heard(hint, BULK), "what was announced between runs may be waiting"


def test_an_unreachable_broker_says_waiting() -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    hint = QueueHint(client, clock=Clock())
    with hint.listening():  # a run goes on without its subscription
        hint.read()
        assert hint.waiting()
        hint.drained()  # nothing was read: nothing remembered
        hint.read()
        assert hint.waiting()
