"""The worker's queue hint (``worker/queue_hint.py``) against a real Redis and the wake-up
messages the API really sends (``shared.enqueue``): a message left in its list after its
job was claimed is not taken for a waiting job; a newer one is; an empty queue is tried
again every ``recheck_s``. A fake clock drives the rechecks."""

from __future__ import annotations

import uuid

import redis
from celery import Celery

from cli.redis_server import RedisServer, free_port
from shared.celery_app import create_celery
from shared.enqueue import enqueue_job
from shared.models import Priority
from shared.settings import Settings
from shared.tasks import QUEUE_INTERACTIVE
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


def test_a_claimed_jobs_message_left_in_its_list_is_not_a_waiting_job(
    redis_server: RedisServer,
) -> None:
    client, app = _broker(redis_server, 7)
    hint = QueueHint(client, clock=Clock())
    hint.read()
    assert hint.waiting(), "no claim has come back short yet"

    enqueue_job(app, uuid.uuid4(), INTERACTIVE)
    hint.read()
    assert hint.waiting(INTERACTIVE)
    hint.drained(INTERACTIVE)  # a claim took that job; its message stays in the list
    hint.read()
    assert client.llen(QUEUE_INTERACTIVE) == 1
    assert not hint.waiting(INTERACTIVE), "the claimed job's message is not a waiting job"
    assert hint.waiting(BULK) and hint.waiting(), "no bulk claim came back short"
    hint.drained()
    hint.read()
    assert not hint.waiting()

    enqueue_job(app, uuid.uuid4(), BULK)
    hint.read()
    assert hint.waiting(BULK) and hint.waiting() and not hint.waiting(INTERACTIVE)
    enqueue_job(app, uuid.uuid4(), INTERACTIVE)
    hint.read()
    assert hint.waiting(INTERACTIVE)
    hint.read()
    assert hint.waiting(INTERACTIVE), "until a claim comes back short"


def test_a_claim_that_began_before_a_message_does_not_hide_it(redis_server: RedisServer) -> None:
    """``drained`` keeps the newest message read before the claim, never a later one."""
    client, app = _broker(redis_server, 8)
    hint = QueueHint(client, clock=Clock())
    enqueue_job(app, uuid.uuid4(), INTERACTIVE)
    hint.read()  # before the claim
    enqueue_job(app, uuid.uuid4(), INTERACTIVE)  # queued while it ran
    hint.drained(INTERACTIVE)
    hint.read()
    assert hint.waiting(INTERACTIVE), "the job queued during the claim"


def test_an_empty_queue_is_tried_again_every_recheck_s(redis_server: RedisServer) -> None:
    """Work may come without a message (a dead worker's abandoned job): a claim runs
    again once ``recheck_s`` has passed since the last one came back short."""
    client, _ = _broker(redis_server, 9)
    clock = Clock()
    hint = QueueHint(client, recheck_s=1.0, clock=clock)
    hint.read()
    hint.drained()
    clock.now += 0.9
    assert not hint.waiting()
    clock.now += 0.2
    assert hint.waiting() and hint.waiting(BULK) and hint.waiting(INTERACTIVE)


def test_an_unreachable_broker_says_waiting() -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    hint = QueueHint(client, clock=Clock())
    hint.read()
    assert hint.waiting()
    hint.drained()  # nothing was read: nothing remembered
    hint.read()
    assert hint.waiting()
