"""The outbound HTTP client: every call sightline makes to a URL a caller gave it.

One request is: vet the URL with the :class:`~shared.ssrf.OutboundPolicy` (parse once,
resolve once) → connect to the vetted address itself, never re-resolving the name, with
the URL's host in the ``Host`` header and, for https, in TLS SNI and certificate
verification → send → read the answer under a total deadline and a body cap. Redirects
are never followed, and nothing comes from the environment: no proxies, no ``.netrc``, no
CA bundle variables (the connection is made with urllib3's connection class directly,
which reads none of them).

The deadline covers connecting, the TLS handshake, sending and reading headers and body:
a watchdog shuts the socket down when it passes, so a peer trickling one byte a second is
cut off at the deadline, not at the per-read timeout. Resolving the name counts against
the same deadline (:func:`shared.ssrf.resolve_within`).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection

from shared.ssrf import Destination, IPAddress, OutboundPolicy

_CHUNK_BYTES = 64 * 1024


class OutboundFailed(Exception):
    """The request got no complete answer: connection refused or reset, TLS or
    certificate failure, malformed response. The message names no address."""


class DeadlineExceeded(OutboundFailed):
    """The total deadline passed before the answer was read."""


class _NotConnected(OutboundFailed):
    """No connection was made to this address (nothing was sent): try the next one."""


@dataclass(frozen=True)
class OutboundResponse:
    """An answer: its status, headers, and at most ``max_body_bytes`` of its body
    (``truncated`` when there was more; the rest was never read)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    truncated: bool


class OutboundClient:
    """Makes requests to vetted, pinned destinations (see the module docstring).
    ``ssl_context`` verifies servers (default: certifi's CA bundle, hostname checked)."""

    def __init__(self, policy: OutboundPolicy, *, ssl_context: ssl.SSLContext | None = None):
        self.policy = policy
        self._ssl_context = ssl_context or _default_ssl_context()

    def request(
        self,
        method: str,
        url: str,
        *,
        field: str,
        deadline_s: float,
        max_body_bytes: int,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> OutboundResponse:
        """Send one request within ``deadline_s`` seconds in all. Raises
        :class:`~shared.ssrf.ForbiddenDestination` (the guard refuses ``url``, reported
        as ``field``), :class:`DeadlineExceeded` or :class:`OutboundFailed`."""
        deadline = time.monotonic() + deadline_s
        destination = self.policy.vet(url, field=field, timeout_s=deadline_s)
        failure: OutboundFailed = DeadlineExceeded("the deadline passed before connecting")
        for address in destination.addresses:
            if time.monotonic() >= deadline:
                break
            connection = pinned_connection(destination, address, self._ssl_context)
            try:
                return _exchange(
                    connection, destination, method, headers, body, deadline, max_body_bytes
                )
            except _NotConnected as exc:
                failure = exc
        raise failure


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """certifi's CA bundle, as requests uses; built once (loading it takes milliseconds,
    and an SSLContext may be shared between threads)."""
    return ssl.create_default_context(cafile=certifi.where())


def pinned_connection(
    destination: Destination, address: IPAddress, ssl_context: ssl.SSLContext
) -> HTTPConnection:
    """An unconnected connection to ``address`` itself, verifying (for https) the
    certificate against the URL's host and sending it as SNI."""
    url = destination.url
    if url.scheme == "http":
        return HTTPConnection(str(address), url.port)
    return HTTPSConnection(
        str(address),
        url.port,
        server_hostname=url.host,
        ssl_context=ssl_context,
        cert_reqs="CERT_REQUIRED",
    )


def _exchange(
    connection: HTTPConnection,
    destination: Destination,
    method: str,
    headers: Mapping[str, str] | None,
    body: bytes | None,
    deadline: float,
    max_body_bytes: int,
) -> OutboundResponse:
    remaining = deadline - time.monotonic()
    connection.timeout = max(remaining, 0.001)
    expired = threading.Event()

    def sever() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            # socket.socket's own shutdown, not SSLSocket's, which would unwrap TLS under
            # a read in progress: this only makes the blocked read return.
            with contextlib.suppress(OSError):  # already closed: nothing to cut short
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    watchdog = threading.Timer(remaining, sever)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            connection.connect()
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            if expired.is_set():
                raise DeadlineExceeded(
                    f"could not connect within the deadline to {_origin(destination)}"
                ) from exc
            if isinstance(exc, ssl.SSLError | urllib3.exceptions.SSLError):
                raise OutboundFailed(f"TLS failed with {_origin(destination)}: {exc}") from exc
            raise _NotConnected(f"could not connect to {_origin(destination)}") from exc
        request_headers = {
            **(headers or {}),
            "Host": destination.url.host_header,
            "Accept-Encoding": "identity",
        }
        connection.request(
            method,
            destination.url.target,
            body=body,
            headers=request_headers,
            preload_content=False,
            decode_content=False,
        )
        response = connection.getresponse()
        data = bytearray()
        while len(data) <= max_body_bytes and not expired.is_set():
            chunk = response.read(min(_CHUNK_BYTES, max_body_bytes + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if expired.is_set():
            raise DeadlineExceeded(
                f"no complete answer within the deadline from {_origin(destination)}"
            )
        return OutboundResponse(
            response.status,
            dict(response.headers),
            bytes(data[:max_body_bytes]),
            truncated=len(data) > max_body_bytes,
        )
    except OutboundFailed:
        raise
    except (OSError, http.client.HTTPException, urllib3.exceptions.HTTPError) as exc:
        if expired.is_set():
            raise DeadlineExceeded(
                f"no complete answer within the deadline from {_origin(destination)}"
            ) from exc
        raise OutboundFailed(f"{type(exc).__name__} from {_origin(destination)}") from exc
    finally:
        watchdog.cancel()
        connection.close()


def _origin(destination: Destination) -> str:
    return destination.url.origin
