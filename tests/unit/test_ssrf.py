"""The SSRF guard on outbound URLs (``shared.ssrf``)."""

from __future__ import annotations

import pytest

from shared.ssrf import ForbiddenDestination, OutboundPolicy


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, _port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


DNS = resolver(
    {
        "localhost": ["127.0.0.1", "::1"],
        "hooks.example.com": ["93.184.216.34"],
        "rebind.example.com": ["93.184.216.34", "10.1.2.3"],
        "internal.corp": ["192.168.1.20"],
    }
)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::1]/",
        "ftp://x/",
        "http://localhost:8080/hook",
        "http://127.0.0.1/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.100.100.200/",  # Alibaba's metadata, shared address space
        "http://224.0.0.1/",
        "http://rebind.example.com/",  # one private answer is enough to refuse
        "http://internal.corp/",
        "http://nowhere.invalid/",
        "file:///etc/passwd",
        "http:///no-host",
    ],
)
def test_refused(url: str) -> None:
    with pytest.raises(ForbiddenDestination) as raised:
        OutboundPolicy.from_setting("", resolver=DNS).check(url)
    assert raised.value.status == 422
    assert raised.value.code == "forbidden_destination"


def test_public_destinations_pass() -> None:
    policy = OutboundPolicy.from_setting("", resolver=DNS)
    policy.check("https://hooks.example.com/sightline")
    policy.check("http://93.184.216.34:8080/x")


def test_the_allowlist_admits_networks_and_host_names() -> None:
    policy = OutboundPolicy.from_setting("127.0.0.1, 10.0.0.0/8, internal.corp", resolver=DNS)
    policy.check("http://127.0.0.1:9000/hook")
    policy.check("http://10.20.30.40/hook")
    policy.check("http://internal.corp/hook")
    with pytest.raises(ForbiddenDestination):
        policy.check("http://localhost/hook")  # ::1 is not allowed, so neither is the name
    with pytest.raises(ForbiddenDestination):
        policy.check("http://169.254.169.254/")


def test_malformed_allowlist_entries_are_refused() -> None:
    with pytest.raises(ValueError):
        OutboundPolicy.from_setting("10.0.0.0/33")
