"""The client's event-stream parsing (client/sse.py) on raw bytes cut anywhere, and its
reconnecting reader (client/stream.py) against a scripted loopback peer."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from client.sse import EventStreamDecoder, MessageEvent
from client.stream import StreamEvent, StreamLost, follow
from tests.hostile_servers import Listener


def _decode(*chunks: bytes, last_event_id: str = "") -> list[MessageEvent]:
    decoder = EventStreamDecoder(last_event_id)
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def _every_split(body: bytes) -> Iterator[list[bytes]]:
    """``body`` whole, byte by byte, and cut in two at every position."""
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    for cut in range(1, len(body)):
        yield [body[:cut], body[cut:]]


STREAM = (
    b"retry: 2000\n\n"
    b": keep-alive\n\n"
    b'id: 1-0-0-3\nevent: delta\ndata: {"part":"answer","text":"caf\xc3\xa9"}\n\n'
    b"event: status\r\ndata: first line\r\ndata: second line\r\n\r\n"
    b"id: 2-ab12cd34-0-0\revent: reset\rdata:no space\r\r"
    b"data: \xf0\x9f\x90\x88 after the last id\n\n"
)
EXPECTED = [
    MessageEvent("delta", '{"part":"answer","text":"café"}', "1-0-0-3"),
    MessageEvent("status", "first line\nsecond line", "1-0-0-3"),
    MessageEvent("reset", "no space", "2-ab12cd34-0-0"),
    MessageEvent("message", "\U0001f408 after the last id", "2-ab12cd34-0-0"),
]


def test_events_are_the_same_however_the_bytes_are_cut() -> None:
    # Cuts fall inside lines, inside CR LF pairs and inside UTF-8 characters.
    for chunks in _every_split(STREAM):
        decoder = EventStreamDecoder()
        assert [event for chunk in chunks for event in decoder.feed(chunk)] == EXPECTED, chunks
        assert decoder.retry_ms == 2000
        assert decoder.last_event_id == "2-ab12cd34-0-0"


def test_a_cr_lf_cut_in_two_ends_one_line_not_two() -> None:
    # Read as two line ends, the LF would be a blank line dispatching "a" on its own.
    assert _decode(b"data: a\r", b"\ndata: b\r\n\r\n") == [MessageEvent("message", "a\nb", "")]
    # A lone CR is a line end of its own, whatever follows in the next chunk.
    assert _decode(b"data: a\r", b"data: b\r\r") == [MessageEvent("message", "a\nb", "")]
    # Nor does an empty chunk in between make the LF a line of its own.
    assert _decode(b"data: a\r", b"", b"\ndata: b\n\n") == [MessageEvent("message", "a\nb", "")]


def test_field_rules_of_the_standard() -> None:
    body = (
        b"data\n\n"  # no colon: the field name alone, an empty value
        b"data:  two spaces\n\n"  # only the first space goes
        b"id: has\0nul\ndata: x\n\n"  # an id holding NUL is ignored
        b"id: 7\nevent: named\nbogus: field\n\n"  # no data: nothing dispatched, id kept
        b"data: y\n\n"  # the id and the default type
        b"id\ndata: z\n\n"  # an empty id clears it
        b"retry: 2s\n\n"  # not all digits: ignored
        b"data: never ended\n"  # no blank line before the end: dropped
    )
    decoder = EventStreamDecoder("5")
    events = list(decoder.feed(body))
    assert events == [
        MessageEvent("message", "", "5"),
        MessageEvent("message", " two spaces", "5"),
        MessageEvent("message", "x", "5"),
        MessageEvent("message", "y", "7"),
        MessageEvent("message", "z", ""),
    ]
    assert decoder.retry_ms is None


def test_one_leading_byte_order_mark_is_dropped_and_bad_bytes_are_replaced() -> None:
    bom = "\ufeff".encode()
    events = _decode(bom[:1], bom[1:] + b"data: \xff\n\n" + bom + b"data: x\n\n")
    # The second BOM is not at the start: it makes an unknown field name, ignored.
    assert events == [MessageEvent("message", "\ufffd", "")]


# A scripted peer for the reconnecting reader: each connection gets the next answer.


def _peer(answers: list[bytes]) -> Listener:
    remaining = list(answers)

    def handle(conn: socket.socket, listener: Listener) -> None:
        listener.read_request(conn)
        conn.sendall(remaining.pop(0) if remaining else _open(b""))

    return Listener(socket.create_server(("127.0.0.1", 0)), handle).start()


def _open(body: bytes) -> bytes:
    """A 200 event stream that ends after ``body`` without closing the stream properly
    (close-delimited: the connection just ends)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return head + body


def _event(name: str, data: dict[str, str], event_id: str) -> bytes:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n".encode()


def _last_event_ids(peer: Listener) -> list[str | None]:
    found = []
    for request in peer.received:
        headers = dict(
            line.split(": ", 1) for line in request.decode().split("\r\n\r\n")[0].split("\r\n")[1:]
        )
        found.append(headers.get("Last-Event-ID"))
    return found


def test_a_dropped_stream_resumes_after_its_last_id_and_skips_the_repeated_status() -> None:
    running = {"status": "running"}
    peer = _peer(
        [
            _open(
                b"retry: 10\n\n"
                + _event("status", running, "1-0-0-0")
                + _event("delta", {"part": "answer", "text": "ab"}, "1-0-0-2")
                + b"event: delta\ndata: {}"  # cut off mid-event: never dispatched
            ),
            _open(
                _event("status", running, "1-0-0-2")
                + _event("delta", {"part": "answer", "text": "cd"}, "1-0-0-4")
                + _event("done", {"result": "abcd"}, "1-0-0-4")
                + _event("delta", {"part": "answer", "text": "after done"}, "1-0-0-14")
            ),
        ]
    )
    url = f"http://127.0.0.1:{peer.sock.getsockname()[1]}/v1/jobs/x/events"
    with requests.Session() as session:
        events = list(follow(session, url, timeout_s=5))
    peer.close()

    assert events == [
        StreamEvent("status", running, "1-0-0-0"),
        StreamEvent("delta", {"part": "answer", "text": "ab"}, "1-0-0-2"),
        StreamEvent("delta", {"part": "answer", "text": "cd"}, "1-0-0-4"),
        StreamEvent("done", {"result": "abcd"}, "1-0-0-4"),
    ]
    assert _last_event_ids(peer) == [None, "1-0-0-2"]


def test_reconnects_are_bounded_and_wait_the_servers_retry_time() -> None:
    # Every connection ends at once without an event; the first one sets retry to 10 ms,
    # so three reconnects wait 10 + 20 + 40 ms (the default 2 s would make it 14 s).
    peer = _peer([_open(b"retry: 10\n\n")])
    url = f"http://127.0.0.1:{peer.sock.getsockname()[1]}/v1/jobs/x/events"
    started = time.monotonic()
    with requests.Session() as session, pytest.raises(StreamLost, match="3 reconnects"):
        list(follow(session, url, timeout_s=5, retries=3, last_event_id="1-0-0-9"))
    elapsed = time.monotonic() - started
    peer.close()

    assert elapsed < 5
    assert _last_event_ids(peer) == ["1-0-0-9"] * 4
