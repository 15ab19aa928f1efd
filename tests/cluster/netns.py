"""Hosts made of Linux network namespaces, joined by one bridge (root only).

A :class:`Network` is a bridge in the root namespace with an address of its own (the test
process talks to every host through it) and one namespace per :class:`Host`, each
joined to the bridge by a veth pair, with one address in a /24 of the benchmarking range
198.18.0.0/15 picked at random per network. No host has a default route: a packet to any
other address has nowhere to go. A host's processes run in its namespace and in a UTS
namespace of their own, so ``socket.gethostname()`` (and with it a worker's Celery node
name) is the host's name.

Faults: :meth:`Host.cut` takes the host's link down (a host unplugged: nothing in or out,
no RST to anyone), :meth:`Host.drop_to` drops packets between the host and one address
(optionally one port) with the host's own firewall (a partition between two hosts, or
with no peer a receiver that blackholes everything); :meth:`Host.heal` undoes both.
:meth:`Network.close` kills every process left in the namespaces and deletes them and
the bridge; it runs at interpreter exit too, so a failed or interrupted test leaves
nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

BENCHMARK_NET = "198.18"  # 198.18.0.0/15: RFC 2544's benchmarking range


def _ip(*args: str, ns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", ns] if ns else []
    subprocess.run([*prefix, "ip", *args], check=True, capture_output=True)


class Host:
    """One namespace on the bridge: ``name`` is its host name, ``address`` its address."""

    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network = network
        self.name = name
        self.address = address
        self.ns = f"{network.prefix}-{name}"
        self.outside = f"{network.prefix}v{len(network.hosts)}"  # its veth's bridge end
        self._rules: list[list[str]] = []

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside this host: its network, its host name."""
        return [
            "ip",
            "netns",
            "exec",
            self.ns,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.name,
            *args,
        ]

    def spawn(self, args: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Start ``args`` on this host in its own process group, output to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        out: IO[bytes] = log.open("ab")
        return subprocess.Popen(
            self.command(args),
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run ``args`` on this host to completion; raises if it fails."""
        return subprocess.run(self.command(args), check=True, capture_output=True, text=True)

    def cut(self) -> None:
        """Unplug the host: its link goes down, nothing goes in or out."""
        _ip("link", "set", "eth0", "down", ns=self.ns)

    def drop_to(self, peer: str | None = None, port: int | None = None) -> None:
        """Drop, silently, every packet between this host and ``peer`` (``port``: only
        TCP to or from that port of the peer); with no ``peer``, every packet in or out."""
        out, into = ["-A", "OUTPUT"], ["-A", "INPUT"]
        if peer is not None:
            out += ["-d", peer]
            into += ["-s", peer]
        if port is not None:
            out += ["-p", "tcp", "--dport", str(port)]
            into += ["-p", "tcp", "--sport", str(port)]
        for rule in (out, into):
            self.run(["iptables", *rule, "-j", "DROP"])
            self._rules.append(rule)

    def heal(self) -> None:
        """Undo :meth:`cut` and :meth:`drop_to`."""
        for rule in self._rules:
            self.run(["iptables", "-D", *rule[1:], "-j", "DROP"])
        self._rules.clear()
        _ip("link", "set", "eth0", "up", ns=self.ns)


class Network:
    """The bridge and its hosts; see the module docstring."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:4]
        self.prefix = f"slc{tag}"
        self.bridge = f"{self.prefix}br"
        self.subnet = f"{BENCHMARK_NET}.{random.randint(1, 254)}"
        self.address = f"{self.subnet}.1"  # the test process, on the bridge
        self.hosts: list[Host] = []
        self._closed = False
        atexit.register(self.close)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def host(self, name: str) -> Host:
        """A new host called ``name`` with the next address of the subnet."""
        host = Host(self, name, f"{self.subnet}.{10 + len(self.hosts)}")
        _ip("netns", "add", host.ns)
        self.hosts.append(host)
        _ip("link", "add", host.outside, "type", "veth", "peer", "name", "eth0", "netns", host.ns)
        _ip("link", "set", host.outside, "master", self.bridge)
        _ip("link", "set", host.outside, "up")
        _ip("addr", "add", f"{host.address}/24", "dev", "eth0", ns=host.ns)
        _ip("link", "set", "eth0", "up", ns=host.ns)
        _ip("link", "set", "lo", "up", ns=host.ns)
        return host

    def close(self) -> None:
        """Kill what still runs in the hosts, delete them and the bridge (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts:
            _kill_all(host.ns)
            # Sockets still retransmitting keep a namespace alive for minutes: its link
            # goes now.
            subprocess.run(["ip", "link", "del", host.outside], check=False, capture_output=True)
            subprocess.run(["ip", "netns", "del", host.ns], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)


def _kill_all(ns: str) -> None:
    """SIGTERM every process in namespace ``ns``, SIGKILL those left after 10 s; gives up
    on any still there after 20 s (stuck in the kernel: deleting the namespace then
    only unlinks its name)."""
    deadline = time.monotonic() + 10
    sig = signal.SIGTERM
    while time.monotonic() < deadline + 10:
        listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        pids = [int(pid) for pid in listed.stdout.split()]
        if not pids:
            return
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.2)
