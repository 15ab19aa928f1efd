"""Reading the broker's state: how many messages wait in each queue."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from celery import Celery
from kombu.exceptions import ChannelError

if TYPE_CHECKING:
    from kombu.transport.virtual import Channel


def queue_depths(celery: Celery, queues: Iterable[str]) -> dict[str, int] | None:
    """Messages waiting in each of ``queues`` (a queue the broker has no key for — never
    used, drained, or flushed — is 0); ``None`` when the broker cannot be reached."""
    depths: dict[str, int] = {}
    try:
        with celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            for name in queues:
                # A virtual (Redis) transport channel: the stubs type ``channel()`` as the
                # bare ``StdChannel`` base, which has no ``queue_declare``.
                with cast("Channel", conn.channel()) as channel:
                    try:
                        declared = channel.queue_declare(queue=name, passive=True)
                        depths[name] = declared.message_count
                    except ChannelError:
                        depths[name] = 0
    except Exception:
        return None
    return depths
