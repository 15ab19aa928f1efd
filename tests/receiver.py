"""A real HTTP webhook receiver on 127.0.0.1 that records every request it gets."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.waiting import wait_until


@dataclass
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """Answers each request with the next status of ``script`` (then ``default``), with
    ``headers`` on every answer that is not a 2xx; while ``hold`` is set to an unset
    event, answers wait for it (requests are recorded first)."""

    port: int
    script: list[int] = field(default_factory=list)
    default: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    hold: threading.Event | None = None
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(
                    Received({k.lower(): v for k, v in self.headers.items()}, body, time.time())
                )
                if receiver.hold is not None:
                    receiver.hold.wait(timeout=60)
                status = receiver.script.pop(0) if receiver.script else receiver.default
                self.send_response(status)
                if not 200 <= status < 300:
                    for name, value in receiver.headers.items():
                        self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, count: int, timeout_s: float = 60.0) -> list[Received]:
        """Every request so far, once there are at least ``count``."""
        wait_until(
            lambda: len(self.requests) >= count, timeout_s=timeout_s, what=f"{count} webhooks"
        )
        return self.requests
