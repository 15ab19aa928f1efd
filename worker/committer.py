"""Results committed on a thread of their own, in order, while the engine steps on.

A commit of the rows that ended in a step is a transaction with PostgreSQL (the jobs'
rows, their webhook events, the batches they complete) followed by the wake-ups: a few
milliseconds in which, on the stepping thread, the model would wait. The batch service
hands each commit to a :class:`Committer` instead and goes on with its next step. The
committer's thread makes the commits one after another, in the order they were handed
over; those handed over while it was making one go together in the next, so a commit
slower than a step leaves no growing queue behind. The stepping thread takes what was
written between its steps (:meth:`Committer.take`) and reports it itself (to the
task's events, the metrics, the run's report): that code is not shared with another
thread.

What a commit writes does not change: one transaction for the rows that ended in one
step (or in a few, when the committer fell behind), conditional on the claim (a job
canceled or taken over meanwhile keeps its state), the job's webhooks woken only after
it. A commit that raises (PostgreSQL unreachable) is raised again by the next
:meth:`take`, and nothing handed over after it is committed: the run ends as it did
when the commit was its own, and the jobs whose results were not written are taken up
again once their lease lapses. :meth:`flush` waits for everything handed over, so that
a run still returns only once every outcome it reports is committed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from shared.lifecycle import Outcome
from shared.models import Job

log = logging.getLogger(__name__)

# Writes ``outcomes`` of ``jobs``; returns the outcomes written.
Write = Callable[[Sequence[Job], Sequence[Outcome]], list[Outcome]]


@dataclass(frozen=True)
class Committed:
    """One commit made: the outcomes handed over and those that were written."""

    outcomes: Sequence[Outcome]
    written: list[Outcome]


class Committer:
    """Makes the commits handed to it on its own thread (see the module docstring)."""

    def __init__(self, write: Write) -> None:
        self._write = write
        self._todo: queue.Queue[tuple[Sequence[Job], Sequence[Outcome]] | None] = queue.Queue()
        self._done: queue.Queue[Committed] = queue.Queue()
        self._error: BaseException | None = None
        self._idle = threading.Condition()
        self._pending = 0

    def submit(self, jobs: Sequence[Job], outcomes: Sequence[Outcome]) -> None:
        """Hand over the commit of ``outcomes`` (of ``jobs``); returns at once."""
        with self._idle:
            self._pending += 1
        self._todo.put((jobs, outcomes))

    def take(self) -> list[Committed]:
        """The commits made since the last call, in order; raises what a commit raised."""
        made: list[Committed] = []
        while True:
            try:
                made.append(self._done.get_nowait())
            except queue.Empty:
                break
        if self._error is not None:
            raise self._error
        return made

    def flush(self) -> list[Committed]:
        """Wait until every commit handed over is made (or one raised), then :meth:`take`."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0 or self._error is not None)
        return self.take()

    @contextmanager
    def running(self) -> Iterator[Committer]:
        """This committer with its thread started; at the end of the block the thread
        makes what is still handed over and stops."""
        thread = threading.Thread(target=self._run, name="committer", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._todo.put(None)
            thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping and (item := self._todo.get()) is not None:
            items = [item]
            while True:  # what was handed over meanwhile goes in the same commit
                try:
                    more = self._todo.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                items.append(more)
            if self._error is None:
                jobs = [job for each, _ in items for job in each]
                outcomes = [outcome for _, each in items for outcome in each]
                try:
                    self._done.put(Committed(outcomes, self._write(jobs, outcomes)))
                except BaseException as exc:
                    log.warning("a commit of %d results failed: %r", len(outcomes), exc)
                    self._error = exc
            with self._idle:
                self._pending -= len(items)
                self._idle.notify_all()
