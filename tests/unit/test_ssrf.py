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
        # Each resolves to an IPv4 address hidden in an IPv6 one.
        "nat64.example.com": ["64:ff9b::a9fe:a9fe"],  # 169.254.169.254
        "sixtofour.example.com": ["2002:a00:1::"],  # 10.0.0.1
        "compat.example.com": ["::7f00:1"],  # 127.0.0.1
        "teredo.example.com": ["2001:0:4136:e378:8000:63bf:80ff:fffe"],
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
        # The guard must read the URL as the client does: ambiguous forms are refused.
        "http://127.0.0.1\\@hooks.example.com/",
        "http://127.0.0.1:80\\@hooks.example.com/",
        "http://user:pw@hooks.example.com/",
        "http://hooks.example.com@127.0.0.1/",
        "http://hooks.example.com/a b",
        "http://hooks.example.com/\x00",
        "http://hooks.example.com/\r\nX-Injected: 1",
        "http://hooks.example.com\t/",
        "http://hooks.example.com:/",
        "http://hooks.example.com:0/",
        "http://hooks.example.com:+80/",
        "http://hooks.example.com./",
        "http://hooks%2eexample.com/",
        "http://h\u00f6oks.example.com/",
        "http://127.1/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://[fe80::1%25eth0]/",
        # IPv6 forms that embed a non-public IPv4 address, literal or resolved.
        "http://[::7f00:1]/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b:1::a00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        "http://nat64.example.com/",
        "http://sixtofour.example.com/",
        "http://compat.example.com/",
        "http://teredo.example.com/",
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
    policy.check("HTTPS://Hooks.Example.COM:8443?x=1#fragment")
    policy.check("http://[2606:4700:4700::1111]/")
    policy.check("http://[64:ff9b::5db8:d822]/")  # NAT64 of a public address


def test_refusals_do_not_reveal_what_a_name_resolves_to() -> None:
    with pytest.raises(ForbiddenDestination) as raised:
        OutboundPolicy.from_setting("", resolver=DNS).check("http://internal.corp/")
    assert "192.168" not in raised.value.detail
    assert "resolves to a non-public address" in raised.value.detail


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
