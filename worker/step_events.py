"""Step events: the text of each watched running job, published as it grows.

Every ``interval_s`` (and not more often, however fast the engine steps) the publisher
takes its turn with up to ``messages_per_s × interval_s`` of the watched jobs, those
whose turn is oldest: for each whose text grew it publishes a ``text`` message with what
each part (reasoning, answer: :func:`shared.job_feed.stream_parts`) gained since its last
turn, and stores the parts in the job's replay hash, both under the same ``seq`` (one
more with every message the publisher sends), so that a reader who starts from the
hash can drop the messages it already holds. Nothing is skipped: a turn sends
everything since the last. So at most ``messages_per_s`` messages go out per second (the
readers of each message cost the API a write each), spread evenly: with 5 watched jobs
each every 0.1 s, with 50 each every second, five of them every 0.1 s, rather than all
fifty at once (a thousand readers woken in the same instant would hold up every other
request to the API for that instant).

Which running jobs are watched it learns from their watch keys (one ``MGET``;
:mod:`shared.job_feed`), read at a round only when that may have changed: a job joined
since the last read (its reader may have been waiting for it), a reader named a running
job on the watching channel (listened to for the length of a run: :meth:`listening`),
what was announced may have been missed (the subscription is new or was made again), or
``recheck_s`` has passed (a key lapsed, or was set again by a reader's upkeep). It used
to read them at every round: ten round trips a second on the stepping thread.

A job whose watch key changed value (the key lapsed and a new reader set it again) is
sent whole again, from offset 0, since what it was sent before may be gone with the
replay hash. A job settled (finished, failed), aborted or handed back is forgotten: its
final text is read from the database. Publishing is best effort: a Redis error is
logged and the step goes on.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import redis

from shared.job_feed import (
    TEXT_TTL_S,
    claim_label,
    job_channel,
    stream_parts,
    text_key,
    text_message,
    watch_key,
    watching_channel,
)
from worker.announcements import Announcements
from worker.model.engine import Engine, StepEvents

log = logging.getLogger(__name__)

_PARTS = ("reasoning", "answer")


@dataclass
class _Watched:
    """What one watched job was sent: under which watch value, each part's text, and
    when its last turn was."""

    value: bytes | str
    sent: dict[str, str]
    turn_at: float = -float("inf")


class StepPublisher:
    """Publishes the text of watched jobs (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        interval_s: float = 0.1,
        messages_per_s: float = 50,
        recheck_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._interval_s = interval_s
        self._messages_per_s = messages_per_s
        self._recheck_s = recheck_s
        self._clock = clock
        self._round_at: float | None = None
        self._seq = 0
        self._watched: dict[uuid.UUID, _Watched] = {}
        self._readers = Announcements(client, watching_channel(client))
        self._keys_read: set[uuid.UUID] = set()  # the running jobs at the last MGET
        self._keys_read_at = -float("inf")

    def listening(self) -> AbstractContextManager[None]:
        """Subscribed to readers' announcements for the block (a worker's run): see
        :meth:`worker.announcements.Announcements.held`."""
        return self._readers.held()

    def publish(self, engine: Engine, events: StepEvents, claim: uuid.UUID) -> None:
        """After a step of ``engine`` (whose rows run under ``claim``): publish a round
        if one is due."""
        for job_id in (*events.finished, *events.failed):
            self.forget(job_id)
        now = self._clock()
        since = self._interval_s if self._round_at is None else now - self._round_at
        if since < self._interval_s or not engine.running:
            return
        self._round_at = now
        # The budget of the time since the last round: steps slower than interval_s
        # still get messages_per_s out.
        turns = max(1, round(self._messages_per_s * min(since, 1.0)))
        try:
            self._round(engine, claim_label(claim), now, turns)
        except redis.RedisError:
            log.warning("could not publish step events", exc_info=True)

    def forget(self, job_id: uuid.UUID) -> None:
        """Drop what is known of ``job_id`` (settled, aborted, or handed back)."""
        self._watched.pop(job_id, None)
        self._keys_read.discard(job_id)  # claimed again, it joins anew

    def _round(self, engine: Engine, claim: str, now: float, turns: int) -> None:
        """Take the turns of the ``turns`` watched jobs whose turn is oldest."""
        ids = list(engine.running)
        if self._keys_may_have_changed(ids, now):
            self._read_keys(ids, now)  # keeps only the running jobs
        else:
            running = set(ids)
            self._watched = {
                job_id: was for job_id, was in self._watched.items() if job_id in running
            }
        watched = self._watched
        due = sorted(watched, key=lambda job_id: watched[job_id].turn_at)[:turns]
        pipe = self._client.pipeline(transaction=False)
        for job_id in due:
            before = watched[job_id]
            before.turn_at = now
            parts = dict(zip(_PARTS, stream_parts(engine.text(job_id)), strict=True))
            if parts == before.sent:
                continue
            changes = {name: _change(before.sent[name], parts[name]) for name in _PARTS}
            self._seq += 1
            pipe.publish(job_channel(job_id), text_message(claim, self._seq, changes))
            pipe.hset(
                text_key(job_id),
                mapping={
                    "claim": claim,
                    "seq": self._seq,
                    "reasoning": parts["reasoning"],
                    "answer": parts["answer"],
                },
            )
            pipe.expire(text_key(job_id), TEXT_TTL_S)
            before.sent = parts
        pipe.execute()

    def _keys_may_have_changed(self, ids: list[uuid.UUID], now: float) -> bool:
        """Whether a watch key of ``ids`` may have been set or dropped since the last
        :meth:`_read_keys` (see the module docstring)."""
        heard = self._readers.read()
        named = {data.decode(errors="replace") for data in heard.messages}
        return (
            heard.missed
            or now >= self._keys_read_at + self._recheck_s
            or not self._keys_read.issuperset(ids)
            or any(str(job_id) in named for job_id in ids)
        )

    def _read_keys(self, ids: list[uuid.UUID], now: float) -> None:
        """Read the watch keys of ``ids``: which of them are watched, and by whom."""
        values = self._client.mget([watch_key(job_id) for job_id in ids])
        watched: dict[uuid.UUID, _Watched] = {}
        for job_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            before = self._watched.get(job_id)
            if before is None or before.value != value:
                before = _Watched(value, dict.fromkeys(_PARTS, ""))
            watched[job_id] = before
        self._watched = watched
        self._keys_read, self._keys_read_at = set(ids), now


def _change(sent: str, now: str) -> tuple[int, str]:
    """(offset, delta) taking a part from ``sent`` to ``now``: appended where ``now``
    extends ``sent``, else the whole of ``now`` from offset 0."""
    if now.startswith(sent):
        return len(sent), now[len(sent) :]
    return 0, now
