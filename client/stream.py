"""Following one of the API's event streams to its ``done``, across dropped connections.

:func:`follow` opens the stream and yields its events; when the connection drops before
``done`` (an error, a read silent for ``timeout_s``, or an end without ``done``) it
waits the server's ``retry:`` time and connects again with ``Last-Event-ID``, so the
server resumes after the last event seen and nothing comes twice. Reconnects back off
(the wait doubles after each failed one, up to ``MAX_BACKOFF_S``) and give up with
:class:`StreamLost` after ``retries`` failures in a row; an event received ends a run of
failures. A reconnect answered ``429`` (the dropped connection's slot not yet freed by
the server) or ``5xx`` is a failure like a refused connection; any other error answer,
and any error of the first request, raises at once (:class:`ApiError`, or ``requests``'
exception when there was no answer).

The server repeats the current state when a stream resumes (a job's ``status``, a
batch's ``progress``); a state event equal to the last one of its name yielded is
skipped, so a caller sees each event once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3

from client.errors import ApiError, raise_for_problem
from client.sse import EventStreamDecoder

# The HTML standard leaves the first reconnection time to the reader; the API's streams
# send ``retry: 2000`` first thing.
DEFAULT_RETRY_S = 2.0
MAX_BACKOFF_S = 30.0
RETRIES = 5
STATE_EVENTS = frozenset({"status", "progress"})
READ_SIZE = 65536


@dataclass(frozen=True)
class StreamEvent:
    """An event of the stream: its name (``status``, ``delta``, ``done``…), its data
    (one JSON object) and the stream's last event id after it (what a reconnect sends
    as ``Last-Event-ID``; ``None`` before the first id)."""

    event: str
    data: dict[str, Any]
    id: str | None


class StreamLost(Exception):
    """The stream's connection dropped and the reconnects after it failed."""


def follow(
    session: requests.Session,
    url: str,
    *,
    last_event_id: str | None = None,
    timeout_s: float = 60.0,
    retries: int = RETRIES,
) -> Iterator[StreamEvent]:
    """The events of the stream at ``url`` up to and including ``done``, starting after
    ``last_event_id`` if given (see the module docstring)."""
    reader = _Reader(last_event_id or "")
    opened = False
    failures = 0
    while True:
        cause: Exception
        try:
            response = _open(session, url, reader.last_id, timeout_s)
        except (requests.RequestException, ApiError) as exc:
            if not opened or not _retryable(exc):
                raise
            cause = exc
        else:
            opened = True
            with response:
                try:
                    for event in reader.events(response):
                        failures = 0
                        yield event
                        if event.event == "done":
                            return
                    cause = StreamLost(f"{url} ended before its done event")
                except (urllib3.exceptions.HTTPError, OSError) as exc:
                    cause = exc
        failures += 1
        if failures > retries:
            raise StreamLost(f"{url}: {retries} reconnects in a row failed") from cause
        time.sleep(min(MAX_BACKOFF_S, reader.retry_s * 2 ** (failures - 1)))


def _open(session: requests.Session, url: str, last_id: str, timeout_s: float) -> requests.Response:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    response = session.get(url, headers=headers, stream=True, timeout=timeout_s)
    if response.status_code != 200:
        with response:
            raise_for_problem(response)
        raise ApiError(response.status_code, {"detail": "expected 200 and an event stream"})
    return response


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ApiError):
        return exc.status == 429 or exc.status >= 500
    return True


@dataclass
class _Reader:
    """What carries over from one connection to the next: the last event id, the
    server's reconnection time, the last state event of each name."""

    last_id: str
    retry_s: float = DEFAULT_RETRY_S
    states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def events(self, response: requests.Response) -> Iterator[StreamEvent]:
        """The events of one connection, read as its bytes arrive, repeated states left
        out."""
        decoder = EventStreamDecoder(self.last_id)
        while chunk := response.raw.read1(READ_SIZE, decode_content=True):
            messages = list(decoder.feed(chunk))
            if decoder.retry_ms is not None:
                self.retry_s = decoder.retry_ms / 1000
            for message in messages:
                self.last_id = message.last_event_id
                event = StreamEvent(message.type, json.loads(message.data), self.last_id or None)
                if event.event in STATE_EVENTS:
                    if self.states.get(event.event) == event.data:
                        continue
                    self.states[event.event] = event.data
                yield event
