"""Server-sent events parsed as the HTML standard's event-stream interpretation says.

Bytes go in as they arrive, in chunks cut anywhere (inside a line, a UTF-8 character or
a CR LF pair); whole events come out. The rules followed
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

- the stream is UTF-8 (invalid bytes become U+FFFD), one leading byte order mark dropped;
- lines end with CR LF, LF or CR;
- a line starting with ``:`` is a comment; otherwise the field name runs to the first
  ``:`` and the value after it, less one leading space (no ``:``: the whole line is the
  name, the value empty);
- ``event`` sets the event's type, ``data`` adds a line to its data, ``id`` (unless it
  holds U+0000) sets the last event id, ``retry`` (ASCII digits only) sets the reconnection
  time in milliseconds; other fields are ignored;
- a blank line dispatches the event: none when no ``data`` came; the type defaults to
  ``message``; the last event id outlives the event (an event without ``id`` carries the
  one before);
- an event not ended by a blank line when the stream ends is dropped.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class MessageEvent:
    """One dispatched event: its type, its data (lines joined with ``\\n``) and the
    stream's last event id at that point (``""`` for none)."""

    type: str
    data: str
    last_event_id: str


class EventStreamDecoder:
    """Feed it the body's bytes (:meth:`feed`); it yields each event once complete.

    ``last_event_id`` and ``retry_ms`` (``None`` until the server sends ``retry``) are
    what a reader needs to reconnect."""

    def __init__(self, last_event_id: str = "") -> None:
        self.last_event_id = last_event_id
        self.retry_ms: int | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # past the (optional) byte order mark
        self._pending = ""  # the text of an unfinished line
        self._after_cr = False  # the last line ended with CR: a following LF belongs to it
        self._type = ""
        self._data: list[str] = []
        self._id = last_event_id

    def feed(self, chunk: bytes) -> Iterator[MessageEvent]:
        """The events that ``chunk`` completes, in order."""
        text = self._decoder.decode(chunk)
        if not text:  # the chunk ended inside a UTF-8 character
            return
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr:
            text = text.removeprefix("\n")
        self._after_cr = text.endswith("\r")
        start = 0
        for end in _LINE_END.finditer(text):
            line, self._pending = self._pending + text[start : end.start()], ""
            start = end.end()
            event = self._line(line)
            if event is not None:
                yield event
        self._pending += text[start:]

    def _line(self, line: str) -> MessageEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> MessageEvent | None:
        self.last_event_id = self._id
        data, kind = self._data, self._type
        self._data, self._type = [], ""
        if not data:
            return None
        return MessageEvent(kind or "message", "\n".join(data), self.last_event_id)
