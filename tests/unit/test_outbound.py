"""The outbound client's pinning (``shared.outbound``) and what logs may show of a URL,
checked at the connect call: no connection is made, so the "public" answers below never
leave the machine."""

from __future__ import annotations

import ssl

from shared.outbound import pinned_connection
from shared.ssrf import OutboundPolicy, loggable_origin


class Rebinding:
    """A resolver that answers a public address first and loopback ever after."""

    def __init__(self) -> None:
        self.queries = 0

    def __call__(self, _host: str, _port: int) -> list[str]:
        self.queries += 1
        return ["93.184.216.34"] if self.queries == 1 else ["127.0.0.1"]


def test_the_connection_goes_to_the_address_that_was_vetted() -> None:
    resolver = Rebinding()
    destination = OutboundPolicy.from_setting("", resolver=resolver).vet(
        "https://hooks.example.com:8443/hook?x=1"
    )
    connection = pinned_connection(
        destination, destination.addresses[0], ssl.create_default_context()
    )
    assert resolver.queries == 1
    assert (connection.host, connection.port) == ("93.184.216.34", 8443)
    assert connection.sock is None  # not connected: nothing left the machine
    assert getattr(connection, "server_hostname", None) == "hooks.example.com"  # SNI, cert
    assert destination.url.host_header == "hooks.example.com:8443"
    assert destination.url.target == "/hook?x=1"


def test_logs_show_only_scheme_host_and_port() -> None:
    assert loggable_origin("https://hooks.example.com/h/tok3n?sig=s3cret") == (
        "https://hooks.example.com:443"
    )
    assert loggable_origin("http://[2606:4700::1111]:8080/x") == "http://[2606:4700::1111]:8080"
    assert loggable_origin("http://user:pass@hooks.example.com/") == "<invalid URL>"
