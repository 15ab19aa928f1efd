"""A batch's server-sent event stream: its progress and each item's end, as they happen.

Events (``data:`` one JSON object):

- ``progress``: the batch as ``GET /v1/batches/{id}`` returns it (counts, progress), at
  the start and after every change;
- ``item``: one finished item, as a line of ``GET /v1/batches/{id}/results`` has it;
  its id is ``{finished_at in µs}-{index}``;
- ``done``: the batch once completed (every item final); then the stream ends.

Items are reported in the order they finished. Reconnecting with ``Last-Event-ID`` (an
``item`` event's id) sends the items that finished after that one; an item whose
transaction committed after a later-finishing item was read (a race of milliseconds)
may be missed by a resume, never by a live stream, which looks back ``REORDER_S`` on
every read and remembers what it sent. The stream is woken by the job feed (a batch's
channel gets a notice when any of its jobs ends) and reads the database at most every
``MIN_READ_S``, however many items end (and without a notice, as any waiter does:
``api.feed_listener``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.feed_listener import FeedListener
from api.job_reads import Gone
from api.job_stream import sse
from shared.batches import batch_summary
from shared.job_feed import batch_channel
from shared.models import Batch, Job, JobStatus
from shared.schemas import BatchOut, BatchResultLine

MIN_READ_S = 0.5
REORDER_S = 10.0
_FINAL = [status for status in JobStatus if status.is_final]
_ID = re.compile(r"^(\d{1,16})-(\d{1,9})$")
# Ids of 14 digits or fewer count milliseconds (how ids were written before 2026-12-01).
_MILLIS_BELOW = 10**14
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass
class BatchStream:
    """The events of one batch for one reader (see the module docstring)."""

    batch_id: uuid.UUID
    sessions: sessionmaker[Session]
    listener: FeedListener
    heartbeat_s: float
    sent: set[uuid.UUID] = field(default_factory=set)
    cursor: tuple[int, int] | None = None  # (finished_at in µs, index) of the last sent

    def events(self, last_event_id: str | None) -> Iterator[str]:
        """The stream, resuming after ``last_event_id`` where one is given."""
        self.cursor = _parse(last_event_id)
        yield "retry: 2000\n\n"
        with self.listener.subscribe(batch_channel(self.batch_id)) as inbox:
            beat_at = time.monotonic() + self.heartbeat_s
            while True:
                summary, finished = self._read()
                for line, event_id in finished:
                    yield sse("item", line, event_id)
                yield sse("progress", summary)
                if summary["completed_at"] is not None:
                    yield sse("done", summary)
                    return
                read_at = time.monotonic() + inbox.recheck_s
                while time.monotonic() < read_at:
                    message = inbox.get(min(read_at, beat_at) - time.monotonic())
                    if message is not None:
                        read_at = min(read_at, time.monotonic() + MIN_READ_S)
                        time.sleep(max(0.0, read_at - time.monotonic()))
                        break
                    if time.monotonic() >= beat_at:
                        beat_at = time.monotonic() + self.heartbeat_s
                        yield ": keep-alive\n\n"

    def _read(self) -> tuple[dict[str, Any], list[tuple[dict[str, Any], str]]]:
        """The batch's summary and the items that finished since the last read."""
        with self.sessions() as session:
            batch = session.get(Batch, self.batch_id)
            if batch is None:  # deleted under us: nothing more will come
                raise Gone(f"batch {self.batch_id} is gone")
            query = select(Job).where(Job.batch_id == self.batch_id, Job.status.in_(_FINAL))
            if self.cursor is not None:
                since = _moment(self.cursor[0]) - timedelta(seconds=REORDER_S)
                query = query.where(Job.finished_at >= since)
            jobs = session.scalars(query.order_by(Job.finished_at, Job.item_index)).all()
            summary = BatchOut.model_validate(batch_summary(session, batch)).model_dump(mode="json")
        finished = []
        resumed_at = self.cursor if not self.sent else None
        for job in jobs:
            key = (_micros(job.finished_at), job.item_index or 0)
            if job.id in self.sent or (resumed_at is not None and key <= resumed_at):
                continue
            self.sent.add(job.id)
            self.cursor = max(self.cursor, key) if self.cursor else key
            line = BatchResultLine.from_job(job).model_dump(mode="json")
            finished.append((line, f"{key[0]}-{key[1]}"))
        return summary, finished


def _micros(moment: datetime | None) -> int:
    """``moment`` in whole microseconds since the epoch, exactly: the order the items
    are read in (``finished_at``, then index), so that an item that finished after the
    one a reader last had never sorts before it (in milliseconds, one that finished
    later in the same millisecond with a lower index did, and a resume skipped it)."""
    if moment is None:  # a final job always has one; order it first if not
        return 0
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (aware - _EPOCH) // _MICROSECOND


def _moment(micros: int) -> datetime:
    return _EPOCH + micros * _MICROSECOND


def _parse(raw: str | None) -> tuple[int, int] | None:
    """The cursor of a ``Last-Event-ID`` (``None`` if it is none of ours). At most 16
    digits of microseconds: year 2286, within ``datetime``'s range."""
    found = _ID.match(raw.strip()) if raw else None
    if found is None:
        return None
    micros, index = (int(value) for value in found.groups())
    if micros < _MILLIS_BELOW:
        # Resend the rest of that millisecond rather than risk skipping some of it.
        micros *= 1000
    return micros, index
