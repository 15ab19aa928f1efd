"""``python -m tests.cluster.receiver ADDRESS PORT``: a webhook receiver host's server.

Answers every POST with 200 and records its ``webhook-id`` under the job (or batch) id
of its body; ``GET /counts`` answers ``{job id: [webhook ids in arrival order]}``, from
which a test counts deliveries and duplicates (a job with two distinct ids got two
events: a duplicate).
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_seen: dict[str, list[str]] = {}
_lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        subject = str(body.get("data", {}).get("id"))
        with _lock:
            _seen.setdefault(subject, []).append(self.headers.get("webhook-id", ""))
        self._answer(b"")

    def do_GET(self) -> None:
        with _lock:
            self._answer(json.dumps(_seen).encode())

    def _answer(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: object) -> None:
        pass


def main(argv: list[str]) -> None:
    address, port = argv
    ThreadingHTTPServer((address, int(port)), _Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
