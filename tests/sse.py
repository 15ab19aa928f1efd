"""A reader of server-sent events for the tests, written from the HTML standard's
parsing rules (not from the code under test): ``id``, ``event``, ``data`` fields, blank
line ends an event, lines starting with ``:`` are comments."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import requests


@dataclass(frozen=True)
class Event:
    event: str
    data: Any
    id: str | None


def events(response: requests.Response) -> Iterator[Event]:
    """The events of a streamed ``text/event-stream`` response, as they arrive."""
    fields: dict[str, list[str]] = {}
    last_id: str | None = None
    for raw in response.iter_lines(decode_unicode=True):
        line = raw if isinstance(raw, str) else raw.decode()
        if line.startswith(":"):
            continue
        if line == "":
            if "data" in fields:
                last_id = fields["id"][-1] if "id" in fields else last_id
                name = fields.get("event", ["message"])[-1]
                yield Event(name, json.loads("\n".join(fields["data"])), last_id)
            fields = {}
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name, []).append(value.removeprefix(" "))


class Named(Protocol):
    """An event as the tests' reader or the client library gives it."""

    @property
    def event(self) -> str: ...

    @property
    def data(self) -> Any: ...


def answer(received: Iterable[Named]) -> str:
    """The answer a stream's deltas spell, honouring resets."""
    text = ""
    for event in received:
        if event.event == "reset":
            text = ""
        elif event.event == "delta" and event.data["part"] == "answer":
            text += event.data["text"]
    return text
