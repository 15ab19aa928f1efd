"""One Redis pub/sub connection per API process, shared by every request that waits.

A long-poll or an event stream subscribes to the channels it cares about
(:mod:`shared.job_feed`) and reads their messages from its own :class:`Inbox`; one
background thread (a greenlet under gunicorn's gevent worker) owns the connection,
subscribes and unsubscribes on the waiters' behalf and hands each message to the inboxes
of its channel. So a thousand waiters cost one connection and no polling of the
database: they sleep until a message or their own timeout wakes them.

:meth:`FeedListener.subscribe` returns once Redis has confirmed the subscription (so a
message published after that cannot be missed) or, when Redis does not answer within
``confirm_s``, with ``inbox.live`` false: the waiter then re-reads the database on its
own timer. The connection is re-made and every channel subscribed again after an error;
since messages may have been lost meanwhile, each inbox of a channel subscribed again
gets a ``changed`` notice (:data:`shared.job_feed.CHANGED`) as its subscription is
confirmed, so its waiter reads the database at once.

A message reaches every inbox of its channel as one :class:`Message`: its JSON is decoded
at most once per process, however many waiters read it, and it carries the moment it
arrived, so that waiters woken by it can share one database read made after that moment
(:mod:`api.job_reads`).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis

from shared.job_feed import CHANGED

log = logging.getLogger(__name__)

_CHANGED_BYTES = CHANGED.encode()
# How long a waiter sleeps without a message before it reads the database anyway: a last
# resort, since the listener sends ``changed`` itself after a lost connection; while
# Redis cannot be reached at all (no subscription), every FALLBACK_S.
RECHECK_S = 30.0
FALLBACK_S = 2.0
_POLL_S = 0.05
_RECONNECT_S = 1.0


@dataclass(frozen=True)
class Message:
    """One message of a channel, shared by every inbox of that channel."""

    channel: str
    data: bytes
    # When this process received it (``time.monotonic()``).
    received_at: float = field(default_factory=time.monotonic)

    @property
    def changed(self) -> bool:
        """Whether it is the ``changed`` notice (the job or batch moved)."""
        return self.data == _CHANGED_BYTES

    @cached_property
    def body(self) -> Any:
        """The data decoded as JSON (once, for all its readers)."""
        return json.loads(self.data)


class Inbox:
    """The messages of one waiter's channels."""

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self.live = False
        self._messages: queue.Queue[Message] = queue.Queue()

    @property
    def recheck_s(self) -> float:
        """How long to wait for a message before reading the database anyway."""
        return RECHECK_S if self.live else FALLBACK_S

    def get(self, timeout_s: float) -> Message | None:
        """The next message, or ``None`` after ``timeout_s`` without one."""
        try:
            return self._messages.get(timeout=max(timeout_s, 0.0))
        except queue.Empty:
            return None

    def put(self, message: Message) -> None:
        self._messages.put(message)


class FeedListener:
    """The pub/sub connection of one process (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, confirm_s: float = 2.0) -> None:
        self._client = client
        self._confirm_s = confirm_s
        self._lock = threading.Lock()
        self._inboxes: dict[str, set[Inbox]] = {}
        self._confirmed: dict[str, threading.Event] = {}
        self._requests: queue.Queue[str] = queue.Queue()
        # Channels subscribed again after a lost connection, not yet confirmed.
        self._resubscribing: set[str] = set()
        self._thread: threading.Thread | None = None
        self._waiters = 0

    @contextmanager
    def subscribe(self, *channels: str) -> Iterator[Inbox]:
        """An :class:`Inbox` of ``channels`` for the duration of the block."""
        inbox = Inbox(channels)
        with self._lock:
            self._start()
            self._waiters += 1
            waits = []
            for name in channels:
                self._inboxes.setdefault(name, set()).add(inbox)
                if name not in self._confirmed:
                    self._confirmed[name] = threading.Event()
                    self._requests.put(name)
                waits.append(self._confirmed[name])
        try:
            inbox.live = all(event.wait(self._confirm_s) for event in waits)
            yield inbox
        finally:
            with self._lock:
                self._waiters -= 1
                for name in channels:
                    others = self._inboxes.get(name, set())
                    others.discard(inbox)
                    if not others:
                        self._inboxes.pop(name, None)
                        self._confirmed.pop(name, None)
                        self._requests.put(name)

    @property
    def waiters(self) -> int:
        """How many inboxes this process has open now."""
        with self._lock:
            return self._waiters

    @property
    def channels(self) -> int:
        """How many channels this process listens to now."""
        with self._lock:
            return len(self._inboxes)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="feed-listener", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
            try:
                self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning("job feed listener: %s; reconnecting", type(exc).__name__)
                with self._lock:
                    for event in self._confirmed.values():
                        event.clear()
                    for name in self._confirmed:
                        self._requests.put(name)
                    self._resubscribing = set(self._confirmed)
                threading.Event().wait(_RECONNECT_S)
            finally:
                pubsub.close()

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        subscribed: set[str] = set()
        while True:
            self._apply_requests(pubsub, subscribed)
            if not subscribed:
                # Nothing to read yet: wait for the first request instead of spinning.
                with suppress(queue.Empty):
                    self._requests.put(self._requests.get(timeout=_POLL_S))
                continue
            message = pubsub.get_message(timeout=_POLL_S)
            if message is None:
                continue
            name = _text(message["channel"])
            kind = message["type"]
            with self._lock:
                if kind == "subscribe" and name in self._confirmed:
                    self._confirmed[name].set()
                    if name in self._resubscribing:
                        self._resubscribing.discard(name)
                        self._deliver(Message(name, _CHANGED_BYTES))
                elif kind == "message":
                    self._deliver(Message(name, message["data"]))

    def _deliver(self, message: Message) -> None:
        """Hand ``message`` to every inbox of its channel (the lock held)."""
        for inbox in self._inboxes.get(message.channel, ()):
            inbox.put(message)

    def _apply_requests(self, pubsub: redis.client.PubSub, subscribed: set[str]) -> None:
        """Subscribe to the channels someone waits on and leave the others."""
        names = set()
        while True:
            try:
                names.add(self._requests.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            wanted = {name for name in names if name in self._inboxes}
        wanted_new = sorted(wanted - subscribed)
        unwanted = sorted((names - wanted) & subscribed)
        if wanted_new:
            pubsub.subscribe(*wanted_new)
            subscribed.update(wanted_new)
        if unwanted:
            pubsub.unsubscribe(*unwanted)  # type: ignore[no-untyped-call]
            subscribed.difference_update(unwanted)
        # A channel asked for again while already subscribed: confirm at once.
        with self._lock:
            for name in wanted & subscribed:
                if name not in wanted_new and name in self._confirmed:
                    self._confirmed[name].set()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
