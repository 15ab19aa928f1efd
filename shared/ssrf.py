"""The SSRF guard for every URL sightline calls out to (webhooks, later image URLs).

A URL is allowed when it is ``http`` or ``https`` and every address its host resolves to
is a public (globally routable, non-multicast) address; loopback, private, link-local
(which holds the cloud metadata endpoints), shared, reserved and multicast addresses are
refused. ``SIGHTLINE_OUTBOUND_ALLOWLIST`` names hosts (exact names) and networks
(``127.0.0.1``, ``10.0.0.0/8``, ``::1``) that are allowed despite this, for local set-ups
and tests. The check is made when a URL is accepted and again right before each call,
because what a name resolves to can change in between.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from shared.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]


class ForbiddenDestination(ValidationFailed):
    """A URL sightline will not call: wrong scheme, unresolvable, or a private address."""

    code = "forbidden_destination"
    title = "Forbidden destination"


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class OutboundPolicy:
    """Which destinations are allowed; build with :meth:`from_setting`."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]
    resolver: Resolver = _resolve

    @classmethod
    def from_setting(cls, allowlist: str, resolver: Resolver = _resolve) -> OutboundPolicy:
        """Parse ``SIGHTLINE_OUTBOUND_ALLOWLIST``: comma-separated host names, addresses
        and CIDR networks. Raises ``ValueError`` for an entry that is none of these."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (e.strip() for e in allowlist.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                if "/" in entry or " " in entry:
                    raise ValueError(f"outbound allow-list entry {entry!r} is not valid") from None
                hosts.add(entry.lower())
        return cls(frozenset(hosts), tuple(networks), resolver)

    def check(self, url: str, *, field: str = "url") -> None:
        """Raise :class:`ForbiddenDestination` (422) unless ``url`` may be called now."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ForbiddenDestination(f"{field} is not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https"):
            raise ForbiddenDestination(f"{field} must be http or https, not {parts.scheme!r}")
        host = (parts.hostname or "").lower()
        if not host:
            raise ForbiddenDestination(f"{field} has no host")
        if host in self.hosts:
            return
        try:
            addresses = (
                [ipaddress.ip_address(host)]
                if _is_literal(host)
                else [ipaddress.ip_address(a.split("%")[0]) for a in self.resolver(host, port)]
            )
        except OSError as exc:
            raise ForbiddenDestination(f"{field} host {host!r} cannot be resolved: {exc}") from exc
        if not addresses:
            raise ForbiddenDestination(f"{field} host {host!r} resolves to no address")
        for address in addresses:
            if not self._allowed(address):
                raise ForbiddenDestination(
                    f"{field} host {host!r} resolves to {address}, a non-public address; "
                    "allow it with SIGHTLINE_OUTBOUND_ALLOWLIST if this is intended"
                )

    def _allowed(self, address: IPAddress) -> bool:
        mapped = getattr(address, "ipv4_mapped", None)
        candidates = [address, mapped] if mapped is not None else [address]
        if any(c in network for c in candidates for network in self.networks):
            return True
        return all(c.is_global and not c.is_multicast for c in candidates)


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
