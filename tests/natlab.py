"""A NAT lab in network namespaces: machines on an "internet", homes behind NAT routers.

The internet is a bridge in its own namespace (198.51.100.0/24, a documentation range, with
198.51.100.1 standing for the upstream gateway); a public machine sits on it directly; a
home is a router namespace (its `wan` on the internet, nftables masquerade out of it, a
home-router firewall that drops unsolicited packets from it) and a machine behind it on
10.N.0.0/24. `masquerade` keeps a mapping's port for every destination (punching works);
`fully-random` picks a new port per destination (it does not). Every lab machine has a
default route. Everything is created inside namespaces whose names start with the lab's
prefix (veth pairs are made from inside them), so no packet ever crosses this machine's
own interfaces, and `close()` deletes them all even after a failure.

Tests talk to a lab machine's 127.0.0.1 through `LabNode`, whose HTTP calls run on a
thread that entered the machine's namespace (setns); `LabLoop` runs an event loop on such
a thread, for in-process meshes on a lab machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from nodes import NodeProcess, http_json

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
INTERNET = "198.51.100"
GATEWAY = f"{INTERNET}.1"


def lab_available() -> str | None:
    """Why the lab cannot run here, or None when it can (root, ip, nft)."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs `{tool}` (scripts/setup --test installs it)"
    return None


def _enter(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
    finally:
        os.close(fd)


class NatLab:
    """Namespaces named `{prefix}-...`; see the module docstring for the topology."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespaces: list[str] = []
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._nodes: list[LabNode] = []
        self._next_public = 10
        self._lossy = False

    def ns(self, machine: str) -> str:
        return f"{self.prefix}-{machine}"

    # ------------------------------------------------------------------ building

    def _sh(self, *argv: str, stdin: str | None = None) -> None:
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")

    def _ip(self, machine: str, *argv: str) -> None:
        self._sh("ip", "-n", self.ns(machine), *argv)

    def _machine(self, machine: str) -> None:
        name = self.ns(machine)
        self._sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self._ip(machine, "link", "set", "lo", "up")

    def _sysctl(self, machine: str, setting: str) -> None:
        self._sh("ip", "netns", "exec", self.ns(machine), "sysctl", "-qw", setting)

    def internet(self) -> NatLab:
        """The internet: a bridge, and the gateway address every default route names."""
        self._machine("net")
        self._ip("net", "link", "add", "br0", "type", "bridge")
        self._ip("net", "addr", "add", f"{GATEWAY}/24", "dev", "br0")
        self._ip("net", "link", "set", "br0", "up")
        return self

    def _attach(self, machine: str, wire: bool = False) -> str:
        """`machine`'s `wan` on the internet; returns its address. With `wire`, the cable
        runs through a namespace `w{machine}` whose interfaces `in` (towards the machine)
        and `out` (towards the internet) nothing joins: frames cross only while a
        user-space program there carries them (bench/wire.py adds a delay). Frames reach
        it one datagram each (no GSO super-frames)."""
        ip = f"{INTERNET}.{self._next_public}"
        self._next_public += 1
        port = f"v-{machine}"[:15]
        if wire:
            box = f"w{machine}"
            self._machine(box)
            self._ip(machine, "link", "add", "wan", "type", "veth", "peer", "name", "in",
                     "netns", self.ns(box))
            self._ip(box, "link", "add", "out", "type", "veth", "peer", "name", port,
                     "netns", self.ns("net"))
            for link in ("in", "out"):
                self._ip(box, "link", "set", link, "up")
            self._ip(machine, "link", "set", "wan", "gso_max_segs", "1")
            self._ip("net", "link", "set", port, "gso_max_segs", "1")
        else:
            self._ip(machine, "link", "add", "wan", "type", "veth", "peer", "name", port,
                     "netns", self.ns("net"))
        self._ip("net", "link", "set", port, "master", "br0", "up")
        self._ip(machine, "addr", "add", f"{ip}/24", "dev", "wan")
        self._ip(machine, "link", "set", "wan", "up")
        self._ip(machine, "route", "add", "default", "via", GATEWAY)
        return ip

    def public(self, machine: str) -> str:
        """A machine on the internet itself; returns its address."""
        self._machine(machine)
        return self._attach(machine)

    def home(self, machine: str, index: int, *, fully_random: bool = False,
             wire: bool = False) -> str:
        """`machine` at 10.`index`.0.2 behind a NAT router `r{machine}`; returns the
        router's public address. `wire`: see `_attach`."""
        router = f"r{machine}"
        self._machine(router)
        public = self._attach(router, wire)
        self._machine(machine)
        self._ip(router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                 "netns", self.ns(machine))
        self._ip(router, "addr", "add", f"10.{index}.0.1/24", "dev", "lan")
        self._ip(router, "link", "set", "lan", "up")
        self._ip(machine, "addr", "add", f"10.{index}.0.2/24", "dev", "eth0")
        self._ip(machine, "link", "set", "eth0", "up")
        self._ip(machine, "route", "add", "default", "via", f"10.{index}.0.1")
        self._sysctl(router, "net.ipv4.ip_forward=1")
        rules = _nat_rules(fully_random) + """
table inet filter {
  chain input { type filter hook input priority filter; policy accept;
    iifname "wan" ct state new drop; }
  chain forward { type filter hook forward priority filter; policy accept;
    iifname "wan" ct state new drop; }
}
"""
        self._sh("ip", "netns", "exec", self.ns(router), "nft", "-f", "-", stdin=rules)
        return public

    def renat(self, machine: str, *, fully_random: bool) -> None:
        """Switch home `machine`'s NAT to randomise ports per destination or to keep them,
        as a router reconfigured and restarted would: its mappings are forgotten too (its
        `wan` goes down and up, which drops the connections masqueraded through it)."""
        router = f"r{machine}"
        self._sh("ip", "netns", "exec", self.ns(router), "nft", "-f", "-",
                 stdin="delete table ip nat\n" + _nat_rules(fully_random))
        self._ip(router, "link", "set", "wan", "down")
        self._ip(router, "link", "set", "wan", "up")
        self._ip(router, "route", "replace", "default", "via", GATEWAY)

    def pair(self, left: str, right: str, subnet: str = "10.77.0") -> tuple[str, str]:
        """Two machines on one link and nothing else: no default route (the found bug's
        setting). Returns their addresses."""
        self._machine(left)
        self._machine(right)
        self._ip(left, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                 "netns", self.ns(right))
        addrs = (f"{subnet}.1", f"{subnet}.2")
        for machine, addr in zip((left, right), addrs, strict=True):
            self._ip(machine, "addr", "add", f"{addr}/24", "dev", "eth0")
            self._ip(machine, "link", "set", "eth0", "up")
        return addrs

    def loss(self, percent: int) -> None:
        """Drop `percent` % of the UDP datagrams the internet forwards, at random (an
        nftables `numgen random` rule on the bridge: these kernels have no netem); 0 takes
        the rule away. Needs `internet()`."""
        self._nft_net("delete table bridge loss\n" if self._lossy else "")
        self._lossy = False
        if percent:
            self._nft_net(f"""
table bridge loss {{
  chain lossy {{ type filter hook forward priority filter; policy accept;
    meta l4proto udp counter;
    meta l4proto udp numgen random mod 100 < {percent} counter drop; }}
}}
""")
            self._lossy = True

    def lost(self) -> tuple[int, int]:
        """(UDP datagrams that reached the internet, of which dropped) since `loss()`."""
        if not self._lossy:
            return 0, 0
        result = subprocess.run(["ip", "netns", "exec", self.ns("net"), "nft", "-j", "list",
                                 "table", "bridge", "loss"], capture_output=True, text=True,
                                timeout=30, check=True)
        counts = [expr["counter"]["packets"] for item in json.loads(result.stdout)["nftables"]
                  for expr in item.get("rule", {}).get("expr", []) if "counter" in expr]
        return counts[0], counts[1]

    def _nft_net(self, rules: str) -> None:
        if rules:
            self._sh("ip", "netns", "exec", self.ns("net"), "nft", "-f", "-", stdin=rules)

    # ------------------------------------------------------------------ using

    def call(self, machine: str, fn: Callable[[], T]) -> T:
        """`fn()` on a thread inside `machine`'s namespace (its sockets are made there)."""
        name = self.ns(machine)
        executor = self._executors.get(name)
        if executor is None:
            executor = ThreadPoolExecutor(1, initializer=_enter, initargs=(name,))
            self._executors[name] = executor
        return executor.submit(fn).result()

    def node(self, machine: str, home: Path, *args: str) -> LabNode:
        """A mesh-llm process on `machine`, started; killed by `close()`."""
        node = LabNode(self, machine, home, *args)
        self._nodes.append(node)
        node.start()
        return node

    def close(self) -> None:
        """Kill the lab's nodes, then delete every namespace of the lab (their interfaces
        and rules go with them)."""
        for node in self._nodes:
            node.kill()
        self._nodes.clear()
        for executor in self._executors.values():
            executor.shutdown(wait=True)
        self._executors.clear()
        for name in reversed(self.namespaces):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._sh("ip", "netns", "delete", name)
        self.namespaces.clear()

    def __enter__(self) -> NatLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _nat_rules(fully_random: bool) -> str:
    random = " fully-random" if fully_random else ""
    return f"""
table ip nat {{
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade{random}; }}
}}
"""


def leftover_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(prefix + "-")]


class LabNode(NodeProcess):
    """A mesh-llm process on a lab machine, bound to every interface there."""

    def __init__(self, lab: NatLab, machine: str, home: Path, *args: str) -> None:
        super().__init__(home, *args)
        self.lab = lab
        self.machine = machine
        self.args[self.args.index("--bind-host") + 1] = "0.0.0.0"
        self.command_prefix = ["ip", "netns", "exec", lab.ns(machine)]

    def get(self, path: str) -> tuple[int, Any]:
        return self.lab.call(self.machine, lambda: http_json(self.console + path))

    def status(self) -> dict[str, Any]:
        code, body = self.get("/api/status")
        assert code == 200, body
        return body

    def healthy(self) -> bool:
        return self.lab.call(self.machine, lambda: http_json(self.api + "/health", 2)[0]) \
            == 200

    def wait_ready(self, timeout: float = 120.0) -> LabNode:
        self.wait_for(self.healthy, "/health 200", timeout)
        return self

    def peer(self, node_id: str) -> dict[str, Any] | None:
        return next((p for p in self.status()["peers"] if p["id"] == node_id), None)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LabLoop:
    """An event loop on a thread inside a lab machine's namespace: every socket made by
    what runs on it (an in-process Mesh) belongs to that machine."""

    def __init__(self, lab: NatLab, machine: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, args=(lab.ns(machine),),
                                        name=f"lab-{machine}", daemon=True)
        self._thread.start()

    def _serve(self, netns: str) -> None:
        _enter(netns)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float = 30.0) -> T:
        """Run `coro` on the machine's loop and wait for its result."""
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """`fn()` on the machine's loop (reads a mesh's state without racing it)."""
        async def wrapped() -> T:
            return fn()

        return self.run(wrapped(), timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
