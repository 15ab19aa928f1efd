"""The client sends a request that is safe to repeat once more when its kept-alive
connection turns out to be closed (``Client._send`` in client/api.py), against a scripted
loopback peer that reads the second request of its first connection and hangs up without
answering: what a server closing an idle connection does to a request sent just then."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
import requests

from client.api import Client
from tests.hostile_servers import Listener

JOB = {"id": "j1", "status": "queued"}


@pytest.fixture
def peer() -> Iterator[Listener]:
    connections: list[int] = []

    def handle(conn: socket.socket, listener: Listener) -> None:
        first = not connections
        connections.append(1)
        while head := listener.read_request(conn):
            if first and len(listener.received) == 2:
                return  # the second request on the first connection: hang up
            status = "202 Accepted" if head.startswith(b"POST") else "200 OK"
            body = json.dumps(JOB).encode()
            conn.sendall(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )

    listener = Listener(socket.create_server(("127.0.0.1", 0)), handle).start()
    yield listener
    listener.close()


def _client(peer: Listener) -> Client:
    return Client(f"http://127.0.0.1:{peer.sock.getsockname()[1]}", "sk_test", timeout_s=5)


def _requests(peer: Listener) -> list[tuple[str, str | None]]:
    """Each request's line and Idempotency-Key, in arrival order."""
    found = []
    for request in peer.received:
        line, *headers = request.split(b"\r\n\r\n")[0].decode().split("\r\n")
        fields = dict(header.split(": ", 1) for header in headers)
        found.append((line.rsplit(" ", 1)[0], fields.get("Idempotency-Key")))
    return found


def test_a_read_is_sent_again_on_a_new_connection(peer: Listener) -> None:
    client = _client(peer)
    client.get("a")

    assert client.get("b") == JOB
    assert [line for line, _ in _requests(peer)] == [
        "GET /v1/jobs/a",
        "GET /v1/jobs/b",
        "GET /v1/jobs/b",
    ]


def test_a_submission_is_sent_again_under_the_same_key(peer: Listener) -> None:
    client = _client(peer)
    client.get("a")

    assert client.submit_once(b"png", "What is it?") == (JOB, True)
    (_, none), (first, key), (again, same) = _requests(peer)
    assert first == again == "POST /v1/jobs"
    assert none is None and key is not None and key.startswith("client-")
    assert same == key, "the repeat carries the first try's key: no second job"


def test_a_batch_is_not_sent_twice(peer: Listener) -> None:
    client = _client(peer)
    client.get("a")

    with pytest.raises(requests.ConnectionError):
        client.batch([{"image": b"png", "prompt": "What is it?"}])
    assert [line for line, _ in _requests(peer)] == ["GET /v1/jobs/a", "POST /v1/batches"]
