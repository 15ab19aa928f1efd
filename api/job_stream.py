"""A job's server-sent event stream: its status, its text as it is written, its end.

Events (``event:`` name, ``data:`` one JSON object, ``id:`` the position):

- ``status``: ``{"status": "queued", "ahead"}`` (``ahead``: how many of the tenant's
  jobs of the same priority are queued before it) or ``{"status": "running", "worker",
  "attempt"}``, at the start and whenever the job moves without ending;
- ``delta``: ``{"part": "reasoning" | "answer", "text"}``: text appended to that part
  (a thinking job's reasoning, then its answer); a part's deltas concatenated are the
  final job's ``reasoning`` / ``result``;
- ``reset``: ``{"attempt", "reason"}``: forget the text received so far, it will come
  again: the job was claimed again (its worker died) or its text was rewritten;
- ``done``: the job exactly as ``GET /v1/jobs/{id}`` returns it, once final; then the
  stream ends. A stream opened on a job already final sends only this.

Every event's id is ``{attempt}-{claim}-{r}-{a}``: the attempt, the claim (first 8 hex
digits of its token; ``0`` before any), and how many characters of reasoning and answer
the reader has once it handled the event. A reader that reconnects with that id as
``Last-Event-ID`` gets what follows, with nothing lost or repeated: the text still to
come is cut from the job's replay hash (``shared.job_feed``), the worker's live
messages, or the committed result, whichever holds it; a different claim means
``reset``. Comments (``: keep-alive``) go out every ``heartbeat_s`` on an idle stream.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis

from api.feed_listener import FeedListener, Inbox, Message
from api.stream_upkeep import StreamUpkeep
from shared.job_feed import (
    WATCH_TTL_S,
    announce_watching,
    claim_label,
    job_channel,
    text_key,
    watch_key,
)
from shared.models import Job, JobStatus
from shared.schemas import JobOut

PARTS = ("reasoning", "answer")
_ID = re.compile(r"^(\d{1,9})-([0-9a-f]{8}|0)-(\d{1,9})-(\d{1,9})$")


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    """One server-sent event (``data`` as one line of JSON)."""
    return sse_json(event, json.dumps(data, separators=(",", ":")), event_id)


def sse_json(event: str, data: str, event_id: str | None = None) -> str:
    """One server-sent event whose data is ``data``, one line of JSON already encoded."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {data}\n\n"


@lru_cache(maxsize=128)
def _final_job(job: Job) -> str:
    """``job`` as ``GET /v1/jobs/{id}`` returns it, as JSON: encoded once for all the
    readers a shared read (:mod:`api.job_reads`) gave that same ``Job``."""
    return json.dumps(JobOut.from_job(job).model_dump(mode="json"), separators=(",", ":"))


@dataclass
class Position:
    """What the reader has: the claim its text comes from and each part's length."""

    attempt: int
    claim: str
    have: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))

    @classmethod
    def parse(cls, raw: str | None) -> Position | None:
        """The position an event id names; ``None`` for no id or one not of ours."""
        found = _ID.match(raw.strip()) if raw else None
        if found is None:
            return None
        attempt, claim, reasoning, answer = found.groups()
        return cls(int(attempt), claim, {"reasoning": int(reasoning), "answer": int(answer)})

    @property
    def event_id(self) -> str:
        return f"{self.attempt}-{self.claim}-{self.have['reasoning']}-{self.have['answer']}"

    @property
    def empty(self) -> bool:
        return not any(self.have.values())


@dataclass
class JobStream:
    """The events of one job for one reader (see the module docstring). ``read(since)``
    returns the job as read from the database at or after ``since`` (``time.monotonic()``;
    a read that serves all the job's readers woken by one notice: :mod:`api.job_reads`),
    and ``ahead`` counts what is queued before it;
    ``on_first_delta`` is told when (``time.time()``) this stream sent its first text.

    A ``status`` event for a move that does not end the job is held back for
    ``status_delay()`` seconds, or until text or the end must follow it, whichever comes
    first: when fifty jobs start at once, a process's thousand readers then do not all
    write in the same instant (a request arriving then would wait behind them all), and
    nothing is reordered. A queued job's first notice (almost always its claim, of which
    a whole batch's readers hear at once) is itself taken up after ``status_delay()``:
    the readers then wake, read and write at their own moments within the spread, not
    all at the notice and again at their reads; the status they read goes out at once.
    A reader learns of a queued job's cancel that much later (at most
    ``api.streams.STATUS_SPREAD_MAX_S``); text from a worker is never delayed."""

    job_id: uuid.UUID
    read: Callable[[float], Job]
    ahead: Callable[[Job], int]
    listener: FeedListener
    redis: redis.Redis
    upkeep: StreamUpkeep
    heartbeat_s: float
    on_first_delta: Callable[[float], None] = lambda seconds: None
    status_delay: Callable[[], float] = lambda: 0.0
    known: dict[str, str] = field(default_factory=lambda: dict.fromkeys(PARTS, ""))
    # The ``seq`` of the newest worker message ``known`` holds (-1: none yet).
    known_seq: int = -1
    _sent_text: bool = False

    def events(self, last_event_id: str | None) -> Iterator[str]:
        """The stream, resuming after ``last_event_id`` where one is given."""
        yield "retry: 2000\n\n"
        with self.listener.subscribe(job_channel(self.job_id)) as inbox, self._watching():
            job = self.read(time.monotonic())
            resumed = Position.parse(last_event_id)
            if job.status.is_final and resumed is None:
                yield self._done(job, Position(job.attempts, claim_label(job.claim_token)))
                return
            at = resumed or Position(job.attempts, claim_label(job.claim_token))
            yield from self._follow(inbox, job, at)

    def _follow(self, inbox: Inbox, job: Job, at: Position) -> Iterator[str]:
        if not job.status.is_final:
            yield self._status(job, at)
            self._load_snapshot(job)
        now = time.monotonic()
        recheck_at, beat_at = now + inbox.recheck_s, now + self.heartbeat_s
        noticed_at: float | None = None  # when a notice said the job moved
        held, held_until = "", float("inf")  # status events held back, and until when
        spread = False  # the pending read was put off by the spread: its status goes at once
        while True:
            now = time.monotonic()
            if held and (now >= held_until or job.status.is_final or self._behind(at)):
                yield held
                held, held_until = "", float("inf")
            if job.status.is_final:
                yield from self._finish(job, at)
                return
            yield from self._deltas(at)
            now = time.monotonic()
            if now >= beat_at:
                beat_at = now + self.heartbeat_s
                yield ": keep-alive\n\n"
            if now >= recheck_at:
                recheck_at = now + inbox.recheck_s
                before = (job.status, job.claim_token)
                job = self.read(now if noticed_at is None else noticed_at)
                noticed_at = None
                if not job.status.is_final and (job.status, job.claim_token) != before:
                    held += self._status(job, at)
                    held_until = min(held_until, now if spread else now + self.status_delay())
                spread = False
                continue
            message = inbox.get(min(recheck_at, beat_at, held_until) - now)
            if message is None:
                continue
            if message.changed:
                # Read the new state now; a queued job's first notice after its spread.
                spread = noticed_at is None and job.status is JobStatus.QUEUED
                delay = self.status_delay() if spread else 0.0
                recheck_at, noticed_at = min(recheck_at, now + delay), message.received_at
                continue
            if held:  # what the message brings comes after it
                yield held
                held, held_until = "", float("inf")
            job = yield from self._text(message, job, at)

    def _status(self, job: Job, at: Position) -> str:
        """A ``status`` event, after a ``reset`` if the job's claim is no longer the
        reader's (re-claimed: the text starts over)."""
        reset = self._switch_claim(at, job)
        body: dict[str, Any] = {"status": job.status.value}
        if job.status is JobStatus.RUNNING:
            body.update(worker=job.worker, attempt=job.attempts)
        elif job.status is JobStatus.QUEUED:
            body.update(ahead=self.ahead(job))
        return reset + sse("status", body, at.event_id)

    def _switch_claim(self, at: Position, job: Job) -> str:
        claim = claim_label(job.claim_token)
        if claim == at.claim:
            return ""
        had_text = not at.empty
        at.attempt, at.claim, at.have = job.attempts, claim, dict.fromkeys(PARTS, 0)
        self.known, self.known_seq = dict.fromkeys(PARTS, ""), -1
        if not had_text:
            return ""
        return sse("reset", {"attempt": job.attempts, "reason": "claimed again"}, at.event_id)

    def _text(self, message: Message, job: Job, at: Position) -> Generator[str, None, Job]:
        """Apply a worker's ``text`` message (a claim we do not know yet is checked
        against the database first: a late worker's text is dropped; so is a message
        that ``known`` already holds, sent before the replay snapshot was read); returns
        the job."""
        text = message.body
        if text["claim"] != claim_label(job.claim_token):
            job = self.read(message.received_at)
            if text["claim"] != claim_label(job.claim_token):
                return job
            yield self._status(job, at)
        seq = text.get("seq", self.known_seq + 1)  # none from a worker that sends none
        if seq <= self.known_seq:
            return job
        self.known_seq = seq
        for part in PARTS:
            offset, delta = text[part]
            if offset > len(self.known[part]):
                self._watch(fresh=True)  # a gap: ask the worker for the whole text
                return job
            self.known[part] = self.known[part][:offset] + delta
        return job

    def _behind(self, at: Position) -> bool:
        """Whether ``known`` differs from what the reader has (deltas or a reset due)."""
        return any(len(self.known[part]) != at.have[part] for part in PARTS)

    def _deltas(self, at: Position) -> Iterator[str]:
        """``delta`` events for what the reader lacks of ``known``; ``reset`` first where
        ``known`` no longer extends what it has."""
        # Known text shorter than the reader's is a rewrite, unless nothing is known yet
        # (a resumed reader's text has not arrived from the worker or the hash).
        shorter = any(len(self.known[part]) < at.have[part] for part in PARTS)
        if shorter and any(self.known.values()):
            at.have = dict.fromkeys(PARTS, 0)
            yield sse("reset", {"attempt": at.attempt, "reason": "text rewritten"}, at.event_id)
        for part in PARTS:
            text = self.known[part][at.have[part] :]
            if text:
                at.have[part] += len(text)
                self._note_first_delta()
                yield sse("delta", {"part": part, "text": text}, at.event_id)

    def _finish(self, job: Job, at: Position) -> Iterator[str]:
        """The rest of the committed text (``reset`` first if it does not extend what the
        reader has), then ``done``."""
        if job.status is JobStatus.SUCCEEDED:
            yield self._switch_claim(at, job)
            final = {"reasoning": job.reasoning or "", "answer": job.result or ""}
            consistent = all(
                len(final[part]) >= at.have[part]
                and final[part][: len(self.known[part])].startswith(
                    self.known[part][: at.have[part]]
                )
                for part in PARTS
            )
            if not consistent:
                at.have = dict.fromkeys(PARTS, 0)
                yield sse("reset", {"attempt": at.attempt, "reason": "text rewritten"}, at.event_id)
            self.known = final
            yield from self._deltas(at)
        yield self._done(job, at)

    def _done(self, job: Job, at: Position) -> str:
        return sse_json("done", _final_job(job), at.event_id)

    def _load_snapshot(self, job: Job) -> None:
        """Start from the replay hash when it holds the job's current claim."""
        try:
            stored = self.redis.hgetall(text_key(self.job_id))
        except redis.RedisError:
            return
        values = {_str(key): _str(value) for key, value in stored.items()}
        if values.get("claim") == claim_label(job.claim_token):
            self.known = {part: values.get(part, "") for part in PARTS}
            self.known_seq = int(values.get("seq", -1))

    @contextmanager
    def _watching(self) -> Iterator[None]:
        """The job's watch key set now and kept set (with the process's other streams:
        :mod:`api.stream_upkeep`) for the duration of the block."""
        self._watch()
        self.upkeep.watch(self.job_id)
        try:
            yield
        finally:
            self.upkeep.unwatch(self.job_id)

    def _watch(self, *, fresh: bool = False) -> None:
        """Set the job's watch key; a new value when ``fresh`` (the worker then sends
        the whole text again). Best effort."""
        key = watch_key(self.job_id)
        try:
            if fresh:
                self.redis.set(key, uuid.uuid4().hex, ex=WATCH_TTL_S)
            elif not self.redis.expire(key, WATCH_TTL_S):
                self.redis.set(key, uuid.uuid4().hex, ex=WATCH_TTL_S, nx=True)
            announce_watching(self.redis, self.job_id)  # a running job's worker reads it now
        except redis.RedisError:
            pass

    def _note_first_delta(self) -> None:
        if not self._sent_text:
            self._sent_text = True
            self.on_first_delta(time.time())


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
