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
from shared.ssrf import ForbiddenDestination, OutboundPolicy, resolve_within


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


def test_slow_names_hold_at_most_the_lookup_places_and_give_them_back() -> None:
    places = threading.BoundedSemaphore(2)
    stalling = Stalling()
    for index in range(5):  # each given up on, each still looking up
        with pytest.raises(TimeoutError):
            resolve_within(stalling, f"n{index}.slow.example.com", 443, 0.05, places)
    assert stalling.started == 2  # the rest found no place free

    def fast(host: str, port: int) -> list[str]:
        return ["93.184.216.34"]

    with pytest.raises(TimeoutError, match="no lookup place"):
        resolve_within(fast, "fast.example.com", 443, 0.05, places)
    stalling.release.set()  # the slow lookups end: their places come back
    assert resolve_within(fast, "fast.example.com", 443, 2.0, places) == ["93.184.216.34"]


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


_UNDER_GEVENT = """
from gevent import monkey
monkey.patch_all()
import gevent, threading, time
from shared.ssrf import LOOKUPS_AT_ONCE, ForbiddenDestination, OutboundPolicy
release, started = threading.Event(), []
def stalling(host, port):
    started.append(host)
    release.wait(10)
    return ["93.184.216.34"]
policy = OutboundPolicy.from_setting("", resolver=stalling)
def check(index):
    try:
        policy.vet(f"https://n{index}.slow.example.com/", timeout_s=0.3)
    except ForbiddenDestination as exc:
        return exc.detail
began = time.monotonic()
refusals = [g.get() for g in [gevent.spawn(check, i) for i in range(LOOKUPS_AT_ONCE + 4)]]
print(len(started), LOOKUPS_AT_ONCE, round(time.monotonic() - began, 1))
print(sum("did not resolve within" in (r or "") for r in refusals))
release.set()
"""


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
