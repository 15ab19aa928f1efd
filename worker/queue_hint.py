"""Whether a job may be queued that a running batch has not claimed: read from the broker.

Between steps a running batch with room claims more jobs, and a claim that finds nothing
is a wasted database round trip on the stepping thread. A worker in a run does not
consume its queues' wake-up messages (its Celery consumer waits for the run to end), so
neither the lists' lengths nor the messages themselves say whether their jobs are still
queued: a worker with free rows and an empty queue ran a bulk claim and an interactive
claim that found nothing every ``IDLE_CLAIM_S`` (``docs/scheduling.md`` has what that
cost).

Kombu pushes each message on its list's left, so a list's first element is its newest
message, and the API commits a job before it sends the job's message.
:meth:`QueueHint.read` reads the newest message of each list (one round trip);
:meth:`QueueHint.drained`, called after a claim came back with fewer jobs than it asked
for, remembers the ones read before that claim. Until a newer message arrives, every
job queued by then has been claimed, and :meth:`QueueHint.waiting` says no. A message
is never pushed twice with the same bytes (each carries its own delivery tag) except
when the broker restores one a dead consumer held, whose job was queued long before.

Some claimable work comes without a new message: a job abandoned by a dead worker (its
wake-up comes from the sweeper, later), and everything after Redis lost its lists. So
:meth:`waiting` also says yes once ``recheck_s`` has passed since the last drained
claim: an empty queue costs one claim of each kind per ``recheck_s``, not twenty a
second. While the broker cannot be read, every answer is yes: the claim finds out.
Before the first read, too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from shared.models import Priority
from shared.tasks import queue_for

RECHECK_S = 1.0

_UNREAD = object()


class QueueHint:
    """The hint over ``client``'s two job queues (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._recheck_s = recheck_s
        self._clock = clock
        self._newest: dict[Priority, object] = dict.fromkeys(Priority, _UNREAD)  # as read
        self._seen: dict[Priority, object] = dict.fromkeys(Priority)  # when drained
        self._recheck_at: dict[Priority, float] = dict.fromkeys(Priority, 0.0)

    def read(self) -> None:
        """Read the newest message of each queue (one round trip)."""
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for kind in Priority:
                    pipe.lindex(queue_for(kind), 0)
                self._newest = dict(zip(Priority, pipe.execute(), strict=True))
        except redis.RedisError:
            self._newest = dict.fromkeys(Priority, _UNREAD)

    def waiting(self, priority: Priority | None = None) -> bool:
        """Whether, as last :meth:`read`, a job of ``priority`` (``None``: of either) may
        be queued that the last drained claim of it did not see; yes if the read
        failed."""
        kinds = list(Priority) if priority is None else [priority]
        now = self._clock()
        return any(
            self._newest[kind] is _UNREAD
            or now >= self._recheck_at[kind]
            or (self._newest[kind] is not None and self._newest[kind] != self._seen[kind])
            for kind in kinds
        )

    def drained(self, priority: Priority | None = None) -> None:
        """A claim of ``priority`` (``None``: of either) made after the last
        :meth:`read` came back short: every such job queued by then is claimed."""
        kinds = list(Priority) if priority is None else [priority]
        recheck_at = self._clock() + self._recheck_s
        for kind in kinds:
            if self._newest[kind] is not _UNREAD:
                self._seen[kind] = self._newest[kind]
                self._recheck_at[kind] = recheck_at
