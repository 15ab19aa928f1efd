"""The job feed: what workers and the API publish so that waiters learn of it at once.

Two kinds of message go to a job's Redis pub/sub channel (:func:`job_channel`):

- ``{"kind": "changed"}``, published by :func:`shared.lifecycle.unit_of_work` after the
  commit of any transaction that moved the job (claimed, handed back, made final):
  read the job from the database to learn its new state;
- ``{"kind": "text", "claim", "seq", "reasoning": [offset, delta], "answer": [offset,
  delta]}``, published by the worker running the job while someone watches it
  (``worker.step_events``): each part's new text from character ``offset`` of that
  part, for the claim ``claim`` (the claim token's first 8 hex digits); ``seq`` grows
  with every message the claim's worker sends, so a reader tells a message its replay
  snapshot already holds from a newer one. The parts are
  what :func:`stream_parts` makes of the text so far: always prefixes of the committed
  ``reasoning`` and ``result``, except where the model broke that rule (then a later
  offset falls back, and the reader starts that part again).

Beside the channel, the worker keeps the latest parts of each watched job in a Redis hash
(:func:`text_key`: ``claim``, ``seq`` of the last message it holds, ``reasoning``,
``answer``; expires ``TEXT_TTL_S`` after its last write), the replay buffer a new or
resuming reader starts from. A batch's channel
(:func:`batch_channel`) gets ``{"kind": "changed"}`` whenever some of its jobs became final.

Whoever sends a job's wake-up message (``shared.enqueue``) then publishes its priority
(``interactive`` or ``bulk``) on :func:`queued_channel`, so that a running worker learns
that a job may be waiting without asking the broker before every step
(``worker.queue_hint``). Pub/sub channels are the Redis server's, not a database's, so
that channel is named after the broker's database.

A reader sets :func:`watch_key` (any fresh value, ``WATCH_TTL_S``) and refreshes it while
it reads; workers publish text only for watched jobs, so an unwatched job costs nothing.
When it sets the key it also names the job on :func:`watching_channel`
(:func:`announce_watching`), so a worker reads the watch keys of its running jobs when a
job joins, when a reader announces itself and every few seconds, not at every round.
Publishing is best effort: readers re-read the database every so often anyway, so a lost
message delays an answer, never loses it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from typing import Any

import redis

log = logging.getLogger(__name__)

WATCH_TTL_S = 30
TEXT_TTL_S = 300
_OPENING, _CLOSING = "<think>", "</think>"


def job_channel(job_id: uuid.UUID | str) -> str:
    """The pub/sub channel of ``job_id``."""
    return f"sightline:job:{job_id}"


def batch_channel(batch_id: uuid.UUID | str) -> str:
    """The pub/sub channel of batch ``batch_id``."""
    return f"sightline:batch:{batch_id}"


def queued_channel(client: redis.Redis) -> str:
    """The pub/sub channel announcing wake-ups sent to the queues of ``client``'s database."""
    return f"sightline:queued:{_database(client)}"


def watching_channel(client: redis.Redis) -> str:
    """The pub/sub channel on which readers name the jobs they start to watch, for the
    workers of ``client``'s database."""
    return f"sightline:watching:{_database(client)}"


def _database(client: redis.Redis) -> int:
    return int(client.connection_pool.connection_kwargs.get("db", 0))


def watch_key(job_id: uuid.UUID | str) -> str:
    """The key a reader keeps set while it watches ``job_id``'s text."""
    return f"sightline:watch:{job_id}"


def text_key(job_id: uuid.UUID | str) -> str:
    """The hash holding ``job_id``'s latest streamed parts (the replay buffer)."""
    return f"sightline:text:{job_id}"


def claim_label(token: uuid.UUID | None) -> str:
    """The short name of a claim in messages and event ids (``"0"`` before any claim)."""
    return token.hex[:8] if token is not None else "0"


CHANGED = json.dumps({"kind": "changed"})


class JobFeed:
    """Publishes ``changed`` messages for jobs and batches; best effort (errors logged)."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> JobFeed:
        """A feed on the Redis at ``url`` (connects lazily, short timeouts)."""
        return cls(redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2))

    def changed(self, job_ids: Iterable[uuid.UUID], batch_ids: Iterable[uuid.UUID] = ()) -> None:
        """Tell the watchers of ``job_ids`` and ``batch_ids`` that they moved."""
        channels = [*map(job_channel, job_ids), *map(batch_channel, batch_ids)]
        if not channels:
            return
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for name in channels:
                    pipe.publish(name, CHANGED)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("job feed: %d notices not sent (%s)", len(channels), type(exc).__name__)

    def forget(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Drop the replay text of ``job_ids`` (their jobs were purged); what a worker
        still publishes for them expires within ``TEXT_TTL_S``."""
        keys = [text_key(job_id) for job_id in job_ids]
        if not keys:
            return
        try:
            self._client.delete(*keys)
        except redis.RedisError as exc:
            log.warning("job feed: %d texts not dropped (%s)", len(keys), type(exc).__name__)


def announce_watching(client: redis.Redis, job_id: uuid.UUID) -> None:
    """Tell the workers that ``job_id``'s watch key was just set (see the module
    docstring). Raises Redis's errors."""
    client.publish(watching_channel(client), str(job_id))


def text_message(claim: str, seq: int, parts: dict[str, tuple[int, str]]) -> str:
    """A ``text`` message, number ``seq``: ``parts`` maps ``reasoning``/``answer`` to
    (offset, delta)."""
    body: dict[str, Any] = {"kind": "text", "claim": claim, "seq": seq}
    body.update({name: [offset, delta] for name, (offset, delta) in parts.items()})
    return json.dumps(body)


def stream_parts(text: str) -> tuple[str, str]:
    """``(reasoning, answer)`` of output still being written, such that both are prefixes
    of what ``split_reasoning`` (``worker.model.structured``) gives once the output is
    complete: what could still change is held back (trailing whitespace, which the end
    strips; a partial ``</think>``; a character cut between tokens, decoded as U+FFFD;
    a start that may yet open ``<think>``). Output that opens no section is answer, as
    ``split_reasoning`` has it, unless a ``</think>`` comes later (then the answer part
    falls back to offset 0: see the module docstring)."""
    text = text.rstrip("\ufffd")
    head, found, tail = text.partition(_CLOSING)
    if found:
        reasoning = head.lstrip().removeprefix(_OPENING).strip()
        return reasoning, tail.strip()
    start = text.lstrip()
    if _OPENING.startswith(start):
        return "", ""  # nothing yet, or the start of an opening tag
    if start.startswith(_OPENING):
        return _hold_closing(start.removeprefix(_OPENING).lstrip()).rstrip(), ""
    return "", _hold_closing(text)


def _hold_closing(text: str) -> str:
    """``text`` without a trailing beginning of ``</think>``."""
    for size in range(min(len(_CLOSING) - 1, len(text)), 0, -1):
        if _CLOSING.startswith(text[-size:]):
            return text[:-size]
    return text
