"""Loopback servers for the outbound-call tests: a trap that must receive nothing, and
scripted HTTP peers (well-behaved, redirecting, trickling, flooding, TLS) on 127.0.0.2.

The trap and the peer listen on the same port, the trap on 127.0.0.1 (and ::1 where
there is one) and the peer on 127.0.0.2, so a URL that names the peer's port reaches the
trap whenever a client connects to an address other than the vetted one. Every listener
is on 127.0.0.0/8 or ::1: no test traffic leaves the machine.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

TRAP_HOST = "127.0.0.1"
PEER_HOST = "127.0.0.2"

Handler = Callable[[socket.socket, "Listener"], None]


@dataclass
class Listener:
    """Accepts connections on one socket, each handled on its own thread; records what
    arrived (the first bytes of each connection), which handlers got to their end
    (``finished``), and sets ``ended`` when a connection's handling is over."""

    sock: socket.socket
    handler: Handler
    received: list[bytes] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    tls: ssl.SSLContext | None = None

    def start(self) -> Listener:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            self.handler(conn, self)
        except OSError:
            pass
        finally:
            conn.close()
            self.ended.set()

    def read_request(self, conn: socket.socket) -> bytes:
        """Read one request (head and Content-Length body) and record it."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        self.received.append(data)
        return head

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def trap_handler(conn: socket.socket, listener: Listener) -> None:
    """Record whatever arrives (even an empty connection) and hang up."""
    conn.settimeout(2)
    try:
        listener.received.append(conn.recv(65536) or b"<connected>")
    except OSError:
        listener.received.append(b"<connected>")


def answer(status: int, body: bytes = b"ok", extra: str = "") -> Handler:
    """A handler answering every request with ``status``, ``body`` and ``extra`` headers."""

    def handle(conn: socket.socket, listener: Listener) -> None:
        listener.read_request(conn)
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}"
        conn.sendall(f"{head}Connection: close\r\n\r\n".encode() + body)
        listener.finished.append("answered")

    return handle


def trickle(*, headers_too: bool, every_s: float = 0.3, for_s: float = 30.0) -> Handler:
    """A handler that dribbles its answer one byte every ``every_s`` seconds for up to
    ``for_s`` seconds: the status line too when ``headers_too``, else only the body."""

    def handle(conn: socket.socket, listener: Listener) -> None:
        listener.read_request(conn)
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
        slow = head if headers_too else b""
        if not headers_too:
            conn.sendall(head)
        ends = time.monotonic() + for_s
        stream = iter(slow + b"x" * 100_000)
        while time.monotonic() < ends:
            conn.sendall(bytes([next(stream)]))
            time.sleep(every_s)
        listener.finished.append("trickled to the end")

    return handle


def flood(total_bytes: int) -> Handler:
    """A handler answering 200 with a ``total_bytes`` body, sent as fast as it is read;
    ``finished`` records whether all of it was taken."""

    def handle(conn: socket.socket, listener: Listener) -> None:
        listener.read_request(conn)
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {total_bytes}\r\n\r\n".encode())
        block = b"\0" * 65536
        for _ in range(total_bytes // len(block)):
            conn.sendall(block)
        listener.finished.append("sent everything")

    return handle


@dataclass
class Loopback:
    """The trap listeners and the peer on one shared port."""

    port: int
    trap: list[Listener]
    peer: Listener

    def url(self, path: str = "/hook", host: str = PEER_HOST, scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def trapped(self) -> list[bytes]:
        return [data for listener in self.trap for data in listener.received]


@contextlib.contextmanager
def loopback(peer: Handler, tls: ssl.SSLContext | None = None) -> Iterator[Loopback]:
    """Start a trap on 127.0.0.1 (and ::1) and ``peer`` on 127.0.0.2, all on one port."""
    for _ in range(20):
        trap4 = socket.create_server((TRAP_HOST, 0))
        port = trap4.getsockname()[1]
        try:
            peer_sock = socket.create_server((PEER_HOST, port))
        except OSError:
            trap4.close()
            continue
        break
    else:
        raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")
    traps = [Listener(trap4, trap_handler).start()]
    with contextlib.suppress(OSError):
        trap6 = socket.create_server(("::1", port), family=socket.AF_INET6)
        traps.append(Listener(trap6, trap_handler).start())
    server = Listener(peer_sock, peer, tls=tls).start()
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: server.sni.append(name)
    try:
        yield Loopback(port, traps, server)
    finally:
        for listener in [*traps, server]:
            listener.close()
