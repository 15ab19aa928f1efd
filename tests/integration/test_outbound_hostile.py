"""Hostile URLs against both outbound paths (image downloads and webhook attempts), with a
loopback trap that must receive nothing.

The allowed destination is 127.0.0.2 (``SIGHTLINE_OUTBOUND_ALLOWLIST=127.0.0.2``); the
trap listens on 127.0.0.1 and ::1 on the same port, so any client that connects anywhere
but the vetted address lands in it. Names under ``.sightline.test`` are answered by a stub
of the system resolver (``socket.getaddrinfo``, the seam both the guard and any HTTP
client resolve through) that can answer differently on each query. Webhook attempts go
through a real :class:`~worker.webhook_sender.WebhookSender` on a scratch SQLite
database. All traffic stays on 127.0.0.0/8 and ::1.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from migrations import upgrade
from shared.db import create_engine_for, session_factory, transaction
from shared.errors import SightlineError
from shared.fetch import fetch_image
from shared.models import EventStatus, Tenant, WebhookDelivery, WebhookEvent, utcnow
from shared.outbound import OutboundClient, OutboundFailed
from shared.settings import Settings
from shared.ssrf import OutboundPolicy
from shared.webhooks import new_secret
from tests.hostile_servers import answer, flood, loopback, trap_handler, trickle
from tests.stack import Stack, make_image
from worker.webhook_sender import WebhookSender

ALLOWLIST = "127.0.0.2"
DEADLINE_S = 1.0
# Generous: the deadline is 1 s; before the fix these took 20 s (the trickle's length).
CUT_OFF_WITHIN_S = 10.0
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
_real_getaddrinfo = socket.getaddrinfo


class StubResolver:
    """``socket.getaddrinfo`` for names in ``answers``: the n-th query of a name gets its
    n-th answer (the last one from then on); other names go to the real resolver."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.queries: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.answers:
            return _real_getaddrinfo(host, port, *args, **kwargs)
        asked = self.queries.count(name)
        self.queries.append(name)
        answers = self.answers[name]
        return _real_getaddrinfo(answers[min(asked, len(answers) - 1)], port, *args, **kwargs)


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> StubResolver:
    stub = StubResolver(
        {
            # Vetted as the allowed peer, then (any later query) the trap.
            "rebind.sightline.test": ["127.0.0.2", "127.0.0.1"],
            "hooks.sightline.test": ["127.0.0.2"],
            "evil.sightline.test": ["127.0.0.2"],
            "internal.sightline.test": ["127.0.0.1"],
        }
    )
    monkeypatch.setattr(socket, "getaddrinfo", stub)
    # No proxy or .netrc from the developer's environment either way.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return stub


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> sessionmaker[Session]:
    path = tmp_path_factory.mktemp("outbound")
    settings = Settings(data_dir=path, database_url=f"sqlite:///{path / 'hooks.db'}")
    upgrade(settings)
    return session_factory(create_engine_for(settings))


Outcome = str
Path_ = Callable[[str], Outcome]


def download(url: str) -> Outcome:
    """The image path: ``fetched`` or the error code."""
    policy = OutboundPolicy.from_setting(ALLOWLIST)
    try:
        fetch_image(url, policy, max_bytes=1024 * 1024, timeout_s=DEADLINE_S)
    except SightlineError as exc:
        return exc.code
    return "fetched"


def webhook(sessions: sessionmaker[Session], url: str) -> Outcome:
    """The webhook path: one attempt by a real sender; ``delivered`` or the error."""
    settings = Settings(outbound_allowlist=ALLOWLIST, webhook_timeout_s=DEADLINE_S)
    event_id = f"msg_{uuid.uuid4().hex}"
    with transaction(sessions) as session:
        tenant = Tenant(name=f"t-{event_id}", webhook_secret=new_secret())
        session.add(tenant)
        session.flush()
        session.add(
            WebhookEvent(
                id=event_id,
                tenant_id=tenant.id,
                type="job.completed",
                url=url,
                payload='{"type": "job.completed"}',
                status=EventStatus.PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
            )
        )
    WebhookSender(settings, sessions).deliver(event_id)
    with transaction(sessions) as session:
        row = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)
        ).one()
        return row.error or "delivered"


@pytest.fixture(params=["image", "webhook"])
def call(request: pytest.FixtureRequest, sessions: sessionmaker[Session]) -> Path_:
    """One outbound path: a function from URL to outcome."""
    if request.param == "image":
        return download
    return lambda url: webhook(sessions, url)


def refused(outcome: Outcome) -> bool:
    return outcome == "forbidden_destination" or outcome.startswith("refused by the SSRF guard")


HOSTILE = [
    # Backslash: urlsplit reads the host after "@", urllib3 the one before "\".
    "http://127.0.0.1:{port}\\@127.0.0.2:{port}/hook",
    "http://127.0.0.1:{port}\\\\@127.0.0.2:{port}/hook",
    "http://127.0.0.2:{port}\\@127.0.0.1:{port}/hook",
    # Userinfo, and a whitespace or control character in the authority.
    "http://user:pass@127.0.0.2:{port}/hook",
    "http://127.0.0.1:{port} @127.0.0.2:{port}/hook",
    "http://127.0.0.1:{port}\t@127.0.0.2:{port}/hook",
    "http://127.0.0.2:{port}/hook\r\nX-Injected: 1",
    # Percent-encoded and Unicode hosts.
    "http://127.0.0.%31:{port}/hook",
    "http://127%2e0%2e0%2e1:{port}/hook",
    # "localhost" in circled letters, which IDNA folds to ASCII.
    "http://\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:{port}/hook",
    "http://127.0.0.\uff11:{port}/hook",  # fullwidth digit one
    # Numeric forms getaddrinfo reads as 127.0.0.1.
    "http://127.1:{port}/hook",
    "http://2130706433:{port}/hook",
    "http://0x7f.0.0.1:{port}/hook",
    "http://0177.0.0.1:{port}/hook",
    # IPv6 forms of 127.0.0.1, and ::1.
    "http://[::ffff:127.0.0.1]:{port}/hook",
    "http://[::127.0.0.1]:{port}/hook",
    "http://[64:ff9b::127.0.0.1]:{port}/hook",
    "http://[2002:7f00:1::]:{port}/hook",
    "http://[::1]:{port}/hook",
    "http://[::1%25lo]:{port}/hook",
    # A name that resolves to the trap.
    "http://internal.sightline.test:{port}/hook",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_hostile_urls_are_refused_and_reach_nothing(call: Path_, template: str) -> None:
    with loopback(answer(200, PNG)) as net:
        outcome = call(template.format(port=net.port))
        assert refused(outcome), outcome
        assert net.trapped == []
        assert net.peer.received == []


def test_a_name_that_rebinds_after_the_check_is_pinned_to_the_vetted_address(
    call: Path_, dns: StubResolver
) -> None:
    with loopback(answer(200, PNG)) as net:
        outcome = call(net.url(host="rebind.sightline.test"))
        assert net.trapped == []
        assert outcome in ("fetched", "delivered")
        assert dns.queries == ["rebind.sightline.test"]  # resolved once, then pinned
        assert f"Host: rebind.sightline.test:{net.port}".encode() in net.peer.received[0]


def test_redirects_are_not_followed(call: Path_) -> None:
    with loopback(answer(302, b"", "Location: http://127.0.0.1/\r\n")) as net:
        outcome = call(net.url())
        assert outcome in ("image_fetch_failed", "HTTP 302")
        assert net.trapped == []


def test_proxies_and_netrc_from_the_environment_are_ignored(
    call: Path_, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with loopback(answer(200, PNG)) as net:
        trap = f"http://127.0.0.1:{net.port}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, trap)
            monkeypatch.setenv(name.lower(), trap)
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.2 login someone password hunter2\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))
        outcome = call(net.url())
        assert outcome in ("fetched", "delivered")
        assert net.trapped == []
        assert b"authorization" not in net.peer.received[0].lower()


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "status-line"])
def test_a_trickling_answer_is_cut_off_at_the_total_deadline(
    call: Path_, headers_too: bool
) -> None:
    with loopback(trickle(headers_too=headers_too, for_s=20)) as net:
        started = time.monotonic()
        outcome = call(net.url())
        elapsed = time.monotonic() - started
        print(f"trickle cut off after {elapsed:.2f} s (deadline {DEADLINE_S} s): {outcome}")
        assert outcome in ("image_fetch_failed",) or outcome.startswith("DeadlineExceeded")
        assert elapsed < CUT_OFF_WITHIN_S
        assert net.peer.finished == []


def test_a_webhook_answer_is_read_only_up_to_the_cap(sessions: sessionmaker[Session]) -> None:
    with loopback(flood(64 * 1024 * 1024)) as net:
        assert webhook(sessions, net.url()) == "delivered"
        assert net.peer.ended.wait(timeout=30)
        assert net.peer.finished == []  # the sender hung up long before the end


def test_an_image_is_read_only_up_to_its_cap() -> None:
    with loopback(flood(64 * 1024 * 1024)) as net:
        assert download(net.url()) == "image_too_large"
        assert net.peer.ended.wait(timeout=30)
        assert net.peer.finished == []


def test_webhook_log_lines_show_only_the_origin(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        loopback(answer(200, PNG)) as net,
        caplog.at_level(logging.INFO, logger="worker.webhook_sender"),
    ):
        assert webhook(sessions, net.url("/hook/s3cr3t-path?token=s3cr3t")) == "delivered"
    assert f"http://127.0.0.2:{net.port}" in caplog.text
    assert "s3cr3t" not in caplog.text


# --- Through the API (the stack allows 127.0.0.1): what it accepts, it reads as vetted.


def test_the_api_refuses_a_callback_url_it_would_read_differently(pg_stack: Stack) -> None:
    with loopback(trap_handler) as net:
        url = f"http://127.0.0.2:{net.port}\\@127.0.0.1:{net.port}/hook"
        response = pg_stack.call(
            "POST",
            "/v1/jobs",
            files={"image": ("a.png", make_image(1))},
            data={"prompt": "x", "callback_url": url},
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "forbidden_destination"
        assert net.trapped == [] and net.peer.received == []


def test_the_api_never_fetches_an_image_url_it_would_read_differently(pg_stack: Stack) -> None:
    with loopback(trap_handler) as net:
        url = f"http://127.0.0.2:{net.port}\\@127.0.0.1:{net.port}/x.png"
        response = pg_stack.call(
            "POST", "/v1/batches", json={"items": [{"image_url": url, "prompt": "x"}]}
        )
        assert net.trapped == [] and net.peer.received == []
        assert response.status_code in (202, 422), response.text
        if response.status_code == 202:
            rejected = response.json()["rejected"]
            assert [(r["index"], r["code"]) for r in rejected] == [(0, "forbidden_destination")]


# --- https: the pinned connection still verifies the certificate against the URL's host.


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for hooks.sightline.test, client context that
    trusts only the test CA that signed it)."""
    path = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sightline test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("hooks.sightline.test")]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (path / "leaf.pem").write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(path / "leaf.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def _client(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> OutboundClient:
    return OutboundClient(OutboundPolicy.from_setting(ALLOWLIST), ssl_context=tls_pair[1])


def test_https_goes_to_the_vetted_address_with_sni_and_host(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    with loopback(answer(200), tls=tls_pair[0]) as net:
        url = net.url(host="hooks.sightline.test", scheme="https")
        response = _client(tls_pair).request(
            "POST", url, field="callback_url", deadline_s=5, max_body_bytes=4096, body=b"{}"
        )
        assert response.status == 200
        assert net.peer.sni == ["hooks.sightline.test"]
        assert f"Host: hooks.sightline.test:{net.port}".encode() in net.peer.received[0]
        assert net.trapped == []


def test_https_refuses_a_certificate_for_another_name(
    tls_pair: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    with loopback(answer(200), tls=tls_pair[0]) as net:
        url = net.url(host="evil.sightline.test", scheme="https")
        with pytest.raises(OutboundFailed, match="TLS failed"):
            _client(tls_pair).request(
                "POST", url, field="callback_url", deadline_s=5, max_body_bytes=4096
            )
        assert net.peer.received == []
        assert net.trapped == []
