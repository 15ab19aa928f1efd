"""Hostile names: whoever owns a name owns its DNS and can answer slowly or never. A
lookup is bounded by the caller's deadline, and slow lookups cannot take every place a
process has for them (``shared.ssrf.resolve_within``). Real threads; the resolver is the
policy's own hook, standing in for a DNS server that does not answer."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from shared.outbound import OutboundClient
from shared.ssrf import ForbiddenDestination, LookupPlaces, OutboundPolicy, resolve_within


class Stalling:
    """A resolver that answers only once ``release`` is set (at the latest after 10 s,
    so that no lookup outlives a failed test for long)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = 0

    def __call__(self, _host: str, _port: int) -> list[str]:
        self.started += 1
        self.release.wait(10.0)
        return ["93.184.216.34"]


def test_a_name_that_never_answers_is_refused_at_the_deadline() -> None:
    stalling = Stalling()
    policy = OutboundPolicy.from_setting("", resolver=stalling)
    began = time.monotonic()
    with pytest.raises(ForbiddenDestination, match=r"did not resolve within 0\.3 s") as caught:
        policy.vet("https://slow.example.com/hook", field="callback_url", timeout_s=0.3)
    assert 0.3 <= time.monotonic() - began < 1.5
    assert caught.value.status == 422
    stalling.release.set()


def test_an_outbound_request_counts_the_lookup_against_its_deadline() -> None:
    stalling = Stalling()
    client = OutboundClient(OutboundPolicy.from_setting("", resolver=stalling))
    began = time.monotonic()
    with pytest.raises(ForbiddenDestination, match="did not resolve"):
        client.request(
            "POST", "https://slow.example.com/hook", field="callback_url",
            deadline_s=0.3, max_body_bytes=1024,
        )  # fmt: skip
    assert time.monotonic() - began < 1.5
    stalling.release.set()


def _fast(_host: str, _port: int) -> list[str]:
    return ["93.184.216.34"]


def test_slow_names_hold_at_most_the_lookup_places_and_give_them_back() -> None:
    places = LookupPlaces(total=2, per_owner=2)
    stalling = Stalling()
    for index in range(5):  # each given up on, each still looking up
        with pytest.raises(TimeoutError):
            resolve_within(stalling, f"n{index}.slow.example.com", 443, 0.05, places, "a")
    assert stalling.started == 2  # the rest found no place free

    with pytest.raises(TimeoutError, match="no lookup place"):
        resolve_within(_fast, "fast.example.com", 443, 0.05, places, "b")
    stalling.release.set()  # the slow lookups end: their places come back
    assert resolve_within(_fast, "fast.example.com", 443, 2.0, places, "b") == ["93.184.216.34"]


def test_one_owner_s_slow_names_leave_the_other_places_to_other_owners() -> None:
    places = LookupPlaces(total=4, per_owner=2)
    stalling = Stalling()
    for index in range(6):
        with pytest.raises(TimeoutError):
            resolve_within(stalling, f"n{index}.evil.example", 443, 0.05, places, "hostile")
    assert stalling.started == 2, "the hostile owner held two places, no more"
    began = time.monotonic()
    answers = [
        resolve_within(_fast, "hooks.example.com", 443, 1.0, places, owner)
        for owner in ("tenant-1", "tenant-2", "tenant-1")
    ]
    assert answers == [["93.184.216.34"]] * 3
    assert time.monotonic() - began < 0.5, "nobody waited for the hostile names"
    stalling.release.set()


def test_an_owner_waits_for_its_own_place_within_its_deadline() -> None:
    places = LookupPlaces(total=4, per_owner=1)
    assert places.acquire("a", 0.0)
    assert not places.acquire("a", 0.05), "a's one place is taken"
    threading.Timer(0.1, places.release, args=("a",)).start()
    began = time.monotonic()
    assert places.acquire("a", 2.0), "given back while a waited"
    assert 0.05 < time.monotonic() - began < 1.0
    places.release("a")


def test_with_plain_threads_a_slow_name_holds_up_no_other_lookup() -> None:
    stalling = Stalling()
    slow = OutboundPolicy.from_setting("", resolver=stalling)
    for index in range(8):
        with pytest.raises(ForbiddenDestination):
            slow.vet(f"https://n{index}.slow.example.com/", timeout_s=0.05)
    fast = OutboundPolicy.from_setting("", resolver=lambda host, port: ["93.184.216.34"])
    destination = fast.vet("https://fast.example.com/", timeout_s=1.0)
    assert [str(a) for a in destination.addresses] == ["93.184.216.34"]
    assert stalling.started == 8
    stalling.release.set()


def test_a_resolver_error_still_reads_as_unresolvable() -> None:
    def failing(_host: str, _port: int) -> list[str]:
        raise OSError("no such name")

    with pytest.raises(ForbiddenDestination, match="cannot be resolved"):
        OutboundPolicy.from_setting("", resolver=failing).vet("https://gone.example.com/")


# What both scripts under gevent start with: the API's patching, and a resolver that
# stalls until ``release`` is set, counting the lookups it ``started``.
_STALLING_UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import gevent, threading, time
from shared.ssrf import LOOKUPS_AT_ONCE, LOOKUPS_PER_OWNER, ForbiddenDestination, OutboundPolicy
release, started = threading.Event(), []
def stalling(host, port):
    started.append(host)
    release.wait(10)
    return ["93.184.216.34"]
"""

_UNDER_GEVENT = (
    _STALLING_UNDER_GEVENT
    + """
policy = OutboundPolicy.from_setting("", resolver=stalling)
def check(index, owner):
    try:
        policy.for_owner(owner).vet(f"https://n{index}.slow.example.com/", timeout_s=0.3)
    except ForbiddenDestination as exc:
        return exc.detail
began = time.monotonic()
checks = [gevent.spawn(check, i, f"tenant-{i}") for i in range(LOOKUPS_AT_ONCE + 4)]
refusals = [g.get() for g in checks]
print(len(started), LOOKUPS_AT_ONCE, round(time.monotonic() - began, 1))
print(sum("did not resolve within" in (r or "") for r in refusals))
release.set()
"""
)


def test_under_the_api_s_gevent_worker_callers_names_take_at_most_four_resolver_threads() -> None:
    """The API's mode: gevent patches the standard library, lookups share its pool."""
    ran = subprocess.run(
        [sys.executable, "-c", _UNDER_GEVENT], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    counts, refused = ran.stdout.split("\n")[:2]
    started, places, seconds = counts.split()
    assert int(started) == int(places) == 4
    assert float(seconds) < 2.0  # all refused at about their 0.3 s deadline, together
    assert int(refused) == 8


_ONE_TENANT_UNDER_GEVENT = (
    _STALLING_UNDER_GEVENT
    + """
slow = OutboundPolicy.from_setting("", resolver=stalling).for_owner("hostile")
def hostile(index):
    try:
        slow.vet(f"https://n{index}.evil.example/", timeout_s=5)
    except ForbiddenDestination as exc:
        return exc.detail
attack = [gevent.spawn(hostile, i) for i in range(20)]
gevent.sleep(0.2)
fast = OutboundPolicy.from_setting("", resolver=lambda host, port: ["93.184.216.34"])
began = time.monotonic()
for owner in ("tenant-1", "tenant-2"):
    fast.for_owner(owner).vet("https://hooks.example.com/", timeout_s=0.3)
print(len(started), LOOKUPS_PER_OWNER, round(time.monotonic() - began, 2))
release.set()
gevent.joinall(attack)
"""
)


def test_under_gevent_one_tenant_s_slow_names_do_not_refuse_another_tenant_s_check() -> None:
    """Without a share per tenant, twenty slow checks of one tenant would hold all four
    places and the others' checks would be refused after their 0.3 s."""
    ran = subprocess.run(
        [sys.executable, "-c", _ONE_TENANT_UNDER_GEVENT], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    started, per_owner, seconds = ran.stdout.split()
    assert int(started) == int(per_owner) == 2
    assert float(seconds) < 0.3
