"""Step events: each running job's new text, published per decoding step for streaming.

A listener (the streaming endpoint) subscribes to Redis channel :func:`channel` of a job,
then sets :func:`watch_key` to a fresh value with a short TTL and keeps refreshing it
while it listens. A worker publishes only for jobs whose watch key it has seen, so
publishing costs nothing per step when no one listens: the worker reads the watch keys
of its running jobs (one ``MGET``) at most every ``refresh_s``.

Each message is JSON: ``{"job_id", "offset", "delta", "tokens", "done"}``: ``delta`` is
the text generated since the last message, starting at character ``offset`` of the
job's raw output (reasoning included, as the model wrote it), ``tokens`` the count of
new tokens so far, ``done`` true on the job's last message (its result is then being
committed; read it from the API). When a watch key's value changes (a new listener),
the next message starts again at offset 0, so a late listener gets the whole text so
far; listeners keep the text up to each message's ``offset`` and append its ``delta``.
Publishing is best effort: a Redis error is logged and the step goes on.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable

import redis

from worker.model.engine import Engine, StepEvents

log = logging.getLogger(__name__)


def channel(job_id: uuid.UUID) -> str:
    """The Redis pub/sub channel of ``job_id``'s step events."""
    return f"sightline:steps:{job_id}"


def watch_key(job_id: uuid.UUID) -> str:
    """The Redis key a listener sets while it listens to ``job_id``."""
    return f"sightline:watch:{job_id}"


class StepPublisher:
    """Publishes step events of watched jobs (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        refresh_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._refresh_s = refresh_s
        self._clock = clock
        self._checked_at = -float("inf")
        # job id -> (watch value seen, characters published to it so far)
        self._watched: dict[uuid.UUID, tuple[bytes | str, int]] = {}
        self._counts: dict[uuid.UUID, int] = {}

    def publish(self, engine: Engine, events: StepEvents) -> None:
        """Publish what ``events`` added to each watched job's text."""
        for job_id in events.tokens:
            self._counts[job_id] = self._counts.get(job_id, 0) + 1
        settled = {*events.finished, *events.failed}
        try:
            self._refresh(engine, settled)
            if self._watched:
                self._send(engine, events, settled)
        except redis.RedisError:
            log.warning("could not publish step events", exc_info=True)
        for job_id in settled:
            self._counts.pop(job_id, None)
            self._watched.pop(job_id, None)

    def forget(self, job_id: uuid.UUID) -> None:
        """Drop what is known of ``job_id`` (aborted, or handed back)."""
        self._counts.pop(job_id, None)
        self._watched.pop(job_id, None)

    def _refresh(self, engine: Engine, settled: set[uuid.UUID]) -> None:
        now = self._clock()
        if now - self._checked_at < self._refresh_s:
            return
        self._checked_at = now
        ids = [*engine.running, *settled]
        if not ids:
            self._watched = {}
            return
        values = self._client.mget([watch_key(job_id) for job_id in ids])
        watched: dict[uuid.UUID, tuple[bytes | str, int]] = {}
        for job_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            seen, sent = self._watched.get(job_id, (value, 0))
            watched[job_id] = (value, sent if seen == value else 0)
        self._watched = watched

    def _send(self, engine: Engine, events: StepEvents, settled: set[uuid.UUID]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for job_id, (value, sent) in self._watched.items():
            if job_id not in events.tokens and job_id not in settled:
                continue
            text = engine.text(job_id)
            if job_id not in settled:
                # A character cut between two tokens decodes as U+FFFD until its last
                # byte arrives: hold it back rather than send what will change.
                text = text.rstrip("\ufffd")
            message = {
                "job_id": str(job_id),
                "offset": sent,
                "delta": text[sent:],
                "tokens": self._counts.get(job_id, 0),
                "done": job_id in settled,
            }
            pipe.publish(channel(job_id), json.dumps(message))
            self._watched[job_id] = (value, len(text))
        pipe.execute()
