"""Whether a job may be queued that a running batch has not claimed: announced by the broker.

Between steps a running batch with room claims more jobs, and a claim that finds nothing
is a wasted database round trip on the stepping thread. A worker in a run does not
consume its queues' wake-up messages (its Celery consumer waits for the run to end), so
neither the lists' lengths nor the messages themselves say whether their jobs are still
queued: a worker with free rows and an empty queue ran a bulk claim and an interactive
claim that found nothing every ``IDLE_CLAIM_S`` (``docs/scheduling.md`` has what that
cost).

Whoever sends a job's wake-up message then announces its priority on the broker's
``queued`` channel (``shared.job_feed.queued_channel``), after the job's row was
committed. The hint subscribes to that channel for the length of a run
(:meth:`QueueHint.listening`: between runs nothing is held for the worker, however busy
the others are), and :meth:`QueueHint.read` takes the announcements received since it
last looked, without waiting (no round trip: the stepping thread asks before every
step); :meth:`QueueHint.drained`, called after a claim came back with fewer jobs than it
asked for, remembers how many had been read before that claim. Until a newer one
arrives, every job announced by then has been claimed, and :meth:`QueueHint.waiting`
says no.

Some claimable work comes without an announcement: a job abandoned by a dead worker (its
wake-up comes from the sweeper, later), one whose announcement was lost (pub/sub keeps
nothing for a subscriber that was away), and everything after Redis lost its lists. So
:meth:`waiting` also says yes once ``recheck_s`` has passed since the last drained
claim: an empty queue costs one claim of each kind per ``recheck_s``, not twenty a
second. Every answer is yes until the subscription is confirmed, again whenever it is
made again (the connection was lost: so may announcements have been), and while the
broker cannot be read: the claim finds out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import redis

from shared.job_feed import queued_channel
from shared.models import Priority
from worker.announcements import Announcements

RECHECK_S = 1.0


class QueueHint:
    """The hint over ``client``'s two job queues (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._announcements = Announcements(client, queued_channel(client))
        self._recheck_s = recheck_s
        self._clock = clock
        self._heard = dict.fromkeys(Priority, 0)  # announcements read (and misses)
        self._seen = dict.fromkeys(Priority, 0)  # as heard before the last drained claim
        self._recheck_at = dict.fromkeys(Priority, 0.0)

    def listening(self) -> AbstractContextManager[None]:
        """Subscribed for the block (a worker's run): see
        :meth:`worker.announcements.Announcements.held`."""
        return self._announcements.held()

    def read(self) -> None:
        """Take the announcements received since the last read, without waiting."""
        heard = self._announcements.read()
        for kind in Priority if heard.missed else ():
            self._heard[kind] += 1  # what was announced meanwhile is unknown
        for data in heard.messages:
            try:
                self._heard[Priority(data.decode())] += 1
            except ValueError:
                continue  # not ours

    def waiting(self, priority: Priority | None = None) -> bool:
        """Whether, as last :meth:`read`, a job of ``priority`` (``None``: of either) may
        be queued that the last drained claim of it did not see; yes while not
        listening."""
        kinds = list(Priority) if priority is None else [priority]
        now = self._clock()
        return not self._announcements.listening or any(
            now >= self._recheck_at[kind] or self._heard[kind] != self._seen[kind] for kind in kinds
        )

    def drained(self, priority: Priority | None = None) -> None:
        """A claim of ``priority`` (``None``: of either) made after the last
        :meth:`read` came back short: every such job announced by then is claimed."""
        if not self._announcements.listening:
            return
        kinds = list(Priority) if priority is None else [priority]
        recheck_at = self._clock() + self._recheck_s
        for kind in kinds:
            self._seen[kind] = self._heard[kind]
            self._recheck_at[kind] = recheck_at
