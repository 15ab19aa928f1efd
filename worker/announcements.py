"""A worker's subscription to one of the broker's announcement channels
(``shared.job_feed``): held for the length of a run, read without waiting.

Pub/sub keeps nothing for a subscriber that is away. What was announced before the
subscription was confirmed, or while a lost connection was being made again (the Redis
client does that by itself and subscribes again), is unknown; :meth:`Announcements.read`
says so, and the reader then asks the source instead (a claim, a read of the keys).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class Heard:
    """What one read took: the announcements, and whether others may have been missed
    since the read before (not subscribed yet, subscribed again, or Redis could not be
    read)."""

    messages: list[bytes]
    missed: bool


class Announcements:
    """The announcements on ``channel`` of ``client``'s Redis (see the module docstring)."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._pubsub: redis.client.PubSub | None = None
        self.listening = False  # the subscription is confirmed

    @contextmanager
    def held(self) -> Iterator[None]:
        """Subscribe for the block (a worker's run) and leave after it: between runs
        nothing is held for this worker, in Redis or in its socket, however much is
        announced to the others."""
        try:
            self._subscribe()  # now; its confirmation is read with what follows it
        except (redis.RedisError, OSError):
            self._close()  # read() asks again
        try:
            yield
        finally:
            self._close()

    def read(self) -> Heard:
        """The announcements received since the last read, without waiting (subscribing
        first where not subscribed)."""
        missed = not self.listening
        messages: list[bytes] = []
        try:
            pubsub = self._subscribe()
            while (message := pubsub.get_message(timeout=0.0)) is not None:
                if message["type"] == "subscribe":  # first, or again after a lost connection
                    self.listening = missed = True
                elif message["type"] == "message":
                    messages.append(message["data"])
        except (redis.RedisError, OSError):
            self._close()
            missed = True
        return Heard(messages, missed)

    def _subscribe(self) -> redis.client.PubSub:
        """The subscription, asked for if there is none (its confirmation comes later, to
        :meth:`read`); raises Redis's errors."""
        if self._pubsub is None:
            self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            self._pubsub.subscribe(self._channel)
        return self._pubsub

    def _close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
        self._pubsub, self.listening = None, False
