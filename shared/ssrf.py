"""The SSRF guard for every URL sightline calls out to (webhooks and image URLs).

A URL is parsed once, here, by a deliberately strict grammar, and the result is the only
reading anyone uses: :mod:`shared.outbound` connects to the address vetted here and sends
the path and ``Host`` parsed here, so no second parser can read the URL differently.
Refused outright, because clients disagree on what they mean: anything but printable
ASCII (control characters, whitespace, non-ASCII: use the ``xn--`` form of international
names and percent-encode paths), backslashes, userinfo (``user@``), ``%`` in the authority,
host names that are not letters/digits/hyphens in dot-separated labels, numeric hosts
that are not a canonical dotted quad (``127.1``, ``0x7f.1``, ``2130706433``), IPv6 zone
ids, empty or out-of-range ports.

A URL is allowed when it is ``http`` or ``https`` and every address its host resolves to
is public: ``ipaddress`` calls it global, it is not multicast, it is not an IPv4-compatible
(``::a.b.c.d``) or Teredo address, and an IPv4 address embedded in it (IPv4-mapped, NAT64
``64:ff9b::/96`` and ``64:ff9b:1::/48``, 6to4 ``2002::/16``) is public too. Loopback,
private, link-local (which holds the cloud metadata endpoints), shared, reserved and
multicast addresses are refused. ``SIGHTLINE_OUTBOUND_ALLOWLIST`` names hosts (exact
names; any address they resolve to is allowed) and networks (``127.0.0.1``,
``10.0.0.0/8``, ``::1``) that are allowed despite this, for local set-ups and tests.
Refusals never name the address a host resolved to (that would map the internal network).

:meth:`OutboundPolicy.vet` resolves once and returns the :class:`Destination` to connect
to; the check is made when a URL is accepted and again right before each call, because
what a name resolves to can change in between.

Resolving a name is bounded, since whoever owns the name also owns its DNS and can answer
slowly or never: a lookup that has not answered within ``timeout_s`` (the caller's
deadline; :data:`RESOLVE_TIMEOUT_S` for a check at intake) refuses the URL as
unresolvable. Under the API's gevent worker, lookups run in gevent's shared pool of
resolver threads, so there at most :data:`LOOKUPS_AT_ONCE` of callers' names are looked
up at a time (a lookup given up on keeps its place until the system resolver lets it
go), and at most :data:`LOOKUPS_PER_OWNER` of one owner's (the tenant a policy is bound
to with :meth:`OutboundPolicy.for_owner`): slow names cannot take the whole pool, the
process's other lookups (its database and Redis hosts) still get through, and one
tenant's slow names leave places for the other tenants' checks. With plain threads (the
webhook sender) each lookup has a thread of its own and there is no shared pool to
protect: a slow name then holds up only the delivery it belongs to.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from shared.error_codes import ErrorCode
from shared.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]

# How long a check at intake waits for a name to resolve.
RESOLVE_TIMEOUT_S = 2.0
# Lookups in flight at once in a process whose lookups share gevent's pool of resolver
# threads (10 by default; the API's), so that slow names leave it room for the others,
# and how many of them one owner (tenant) may hold.
LOOKUPS_AT_ONCE = 4
LOOKUPS_PER_OWNER = 2

MAX_URL_CHARS = 2048
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)")
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_PORT = re.compile(r"[0-9]{1,5}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Addresses that only carry an IPv4 address for a transition mechanism nobody should be
# calling webhooks through; refused whatever they embed.
_REFUSED_V6 = (
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated): ::7f00:1 is 127.0.0.1
    ipaddress.IPv6Network("2001::/32"),  # Teredo
)
# Translation prefixes whose last 32 bits are the IPv4 address reached.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


class ForbiddenDestination(ValidationFailed):
    """A URL sightline will not call: malformed or ambiguous, wrong scheme, unresolvable,
    or a non-public address."""

    code = ErrorCode.FORBIDDEN_DESTINATION
    title = "Forbidden destination"


@dataclass(frozen=True)
class OutboundURL:
    """The one reading of an outbound URL: lower-case ``scheme`` and ``host`` (an IPv6
    host without brackets), the ``port`` (the scheme's default when absent), and the
    request ``target`` (path and query; the fragment is never sent)."""

    scheme: str
    host: str
    port: int
    target: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the host, with the port unless it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """``scheme://host:port``: what logs and errors may show (no path, query or
        credentials, which may carry tokens)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class Destination:
    """A vetted URL and the addresses it may be reached at, in the order to try them."""

    url: OutboundURL
    addresses: tuple[IPAddress, ...]


def parse_outbound_url(url: str, *, field: str = "url") -> OutboundURL:
    """Parse ``url`` by the strict grammar in the module docstring; raise
    :class:`ForbiddenDestination` (422) for anything it refuses."""
    if len(url) > MAX_URL_CHARS:
        raise ForbiddenDestination(f"{field} is longer than {MAX_URL_CHARS} characters")
    if not _PRINTABLE_ASCII.fullmatch(url):
        raise ForbiddenDestination(
            f"{field} may only hold printable ASCII without spaces: percent-encode the path "
            "and use the xn-- form of an international host name"
        )
    if "\\" in url:
        raise ForbiddenDestination(f"{field} may not contain a backslash")
    match = _URL.fullmatch(url)
    if match is None:
        raise ForbiddenDestination(f"{field} is not an absolute http or https URL")
    scheme = match["scheme"].lower()
    if scheme not in _DEFAULT_PORTS:
        raise ForbiddenDestination(f"{field} must be http or https, not {scheme!r}")
    authority = match["authority"]
    if "@" in authority:
        raise ForbiddenDestination(f"{field} may not contain credentials (user@host)")
    if "%" in authority:
        raise ForbiddenDestination(f"{field} may not percent-encode its host")
    host, port = _split_authority(authority, scheme, field)
    target = match["rest"].split("#", 1)[0]
    if target and not target.startswith(("/", "?")):
        raise ForbiddenDestination(f"{field} is not a valid URL")
    if target.startswith("?") or not target:
        target = "/" + target
    return OutboundURL(scheme, host, port, target)


def loggable_origin(url: str) -> str:
    """What a log line may show of ``url``: ``scheme://host:port``, never the path, query
    or credentials (callback URLs often carry tokens)."""
    try:
        return parse_outbound_url(url).origin
    except ForbiddenDestination:
        return "<invalid URL>"


def _split_authority(authority: str, scheme: str, field: str) -> tuple[str, int]:
    if authority.startswith("["):
        bracket = authority.find("]")
        literal, after = authority[1:bracket], authority[bracket + 1 :]
        try:
            host = str(ipaddress.IPv6Address(literal)) if bracket > 0 else ""
        except ValueError:
            host = ""
        if not host:
            raise ForbiddenDestination(f"{field} has an invalid IPv6 address")
        if after and not after.startswith(":"):
            raise ForbiddenDestination(f"{field} is not a valid URL")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_or_empty = authority.partition(":")
        port_text = port_text_or_empty if colon else None
        host = host.lower()
        if not host:
            raise ForbiddenDestination(f"{field} has no host")
        if not _HOST_NAME.fullmatch(host) or len(host) > 253:
            raise ForbiddenDestination(f"{field} host is not a valid host name")
        if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]) and not _is_dotted_quad(host):
            raise ForbiddenDestination(
                f"{field} host looks numeric but is not a dotted-quad IPv4 address"
            )
    if port_text is None:
        return host, _DEFAULT_PORTS[scheme]
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ForbiddenDestination(f"{field} has an invalid port")
    return host, int(port_text)


def _is_dotted_quad(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)  # four decimal octets, no leading zeros
    except ValueError:
        return False
    return True


class LookupPlaces:
    """``total`` places for lookups in flight, of which one owner may hold
    ``per_owner`` at a time (``None`` is an owner too: the unbound callers')."""

    def __init__(self, total: int, per_owner: int) -> None:
        self._total = total
        self._per_owner = per_owner
        self._held: dict[str | None, int] = {}
        self._changed = threading.Condition()

    def acquire(self, owner: str | None, timeout_s: float) -> bool:
        """Take a place for ``owner``, waiting up to ``timeout_s``; whether it got one."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while (
                sum(self._held.values()) >= self._total
                or self._held.get(owner, 0) >= self._per_owner
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            self._held[owner] = self._held.get(owner, 0) + 1
            return True

    def release(self, owner: str | None) -> None:
        """Give back a place ``owner`` took."""
        with self._changed:
            self._held[owner] -= 1
            if not self._held[owner]:
                del self._held[owner]
            self._changed.notify_all()


_LOOKUP_PLACES = LookupPlaces(LOOKUPS_AT_ONCE, LOOKUPS_PER_OWNER)


def resolve_within(
    resolver: Resolver,
    host: str,
    port: int,
    timeout_s: float,
    places: LookupPlaces | None = None,
    owner: str | None = None,
) -> Sequence[str]:
    """``resolver(host, port)`` in a thread of its own, given up on (``TimeoutError``)
    once ``timeout_s`` has passed. With ``places``, the lookup first takes one of them
    for ``owner`` (the wait counts against ``timeout_s``) and frees it when the lookup
    itself ends."""
    deadline = time.monotonic() + timeout_s
    if places is not None and not places.acquire(owner, max(timeout_s, 0.0)):
        raise TimeoutError(f"no lookup place free within {timeout_s:g} s")
    answer: list[Sequence[str]] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def look_up() -> None:
        try:
            answer.append(resolver(host, port))
        except BaseException as exc:  # handed to the waiter, whatever it is
            failure.append(exc)
        finally:
            if places is not None:
                places.release(owner)
            done.set()

    threading.Thread(target=look_up, name="resolve", daemon=True).start()
    if not done.wait(max(deadline - time.monotonic(), 0.0)):
        raise TimeoutError(f"not resolved within {timeout_s:g} s")
    if failure:
        raise failure[0]
    return answer[0]


def _shared_places() -> LookupPlaces | None:
    """The process's lookup places where its lookups share a pool of resolver threads
    (gevent's, under the API's worker class); none with plain threads, where each
    lookup has a thread of its own and the callers' own threads bound them."""
    try:
        from gevent import monkey  # type: ignore[import-untyped]
    except ImportError:
        return None
    return _LOOKUP_PLACES if monkey.is_module_patched("socket") else None


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class OutboundPolicy:
    """Which destinations are allowed; build with :meth:`from_setting`. ``resolver`` maps
    ``(host, port)`` to address strings; it is asked once per :meth:`vet`."""

    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]
    resolver: Resolver = _resolve
    owner: str | None = None  # whose lookups these are (see the module docstring)

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

    def for_owner(self, owner: str) -> OutboundPolicy:
        """This policy, its lookups counted as ``owner``'s (a tenant's id)."""
        return replace(self, owner=owner)

    def check(self, url: str, *, field: str = "url") -> None:
        """Raise :class:`ForbiddenDestination` (422) unless ``url`` may be called now."""
        self.vet(url, field=field)

    def vet(
        self, url: str, *, field: str = "url", timeout_s: float = RESOLVE_TIMEOUT_S
    ) -> Destination:
        """Parse ``url``, resolve its host once (within ``timeout_s``) and return where to
        connect; raise :class:`ForbiddenDestination` (422) unless every address is
        allowed."""
        parsed = parse_outbound_url(url, field=field)
        try:
            literal: IPAddress | None = ipaddress.ip_address(parsed.host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                answers = resolve_within(
                    self.resolver,
                    parsed.host,
                    parsed.port,
                    timeout_s,
                    _shared_places(),
                    self.owner,
                )
                # A scope id ("fe80::1%eth0") is dropped; fe80::/10 is refused anyway.
                addresses = [ipaddress.ip_address(a.split("%")[0]) for a in answers]
            except TimeoutError as exc:
                raise ForbiddenDestination(
                    f"{field} host {parsed.host!r} did not resolve within {timeout_s:g} s"
                ) from exc
            except (OSError, UnicodeError, ValueError) as exc:
                raise ForbiddenDestination(
                    f"{field} host {parsed.host!r} cannot be resolved"
                ) from exc
        if not addresses:
            raise ForbiddenDestination(f"{field} host {parsed.host!r} resolves to no address")
        if parsed.host not in self.hosts and not all(self._allowed(a) for a in addresses):
            what = "is" if literal is not None else f"host {parsed.host!r} resolves to"
            raise ForbiddenDestination(
                f"{field} {what} a non-public address; allow it with "
                "SIGHTLINE_OUTBOUND_ALLOWLIST if this is intended"
            )
        return Destination(parsed, tuple(addresses))

    def _allowed(self, address: IPAddress) -> bool:
        forms = _forms(address)
        if any(form in network for form in forms for network in self.networks):
            return True
        if isinstance(address, ipaddress.IPv6Address) and any(
            address in network for network in _REFUSED_V6
        ):
            return False
        return all(form.is_global and not form.is_multicast for form in forms)


def _forms(address: IPAddress) -> list[IPAddress]:
    """``address`` and every IPv4 address embedded in it that a packet to it reaches."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    forms: list[IPAddress] = [address]
    if address.ipv4_mapped is not None:
        forms.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        forms.append(address.sixtofour)
    if any(address in network for network in _NAT64):
        forms.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return forms
