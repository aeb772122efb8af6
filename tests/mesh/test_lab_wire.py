"""bench/wire.py, the NAT lab's user-space delay line (tests/natlab.py `home(wire=True)`):
frames cross a home's cable only while it runs, each held for the delay each way, and a
burst sent with UDP GSO arrives as its datagrams."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natlab import NatLab, lab_available, leftover_namespaces
from waiting import wait_until

WHY_NOT = lab_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

WIRE = Path(__file__).resolve().parents[2] / "bench" / "wire.py"
UDP_SEGMENT = 103


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(1)
    return sock


def probe(client: socket.socket, target: tuple[str, int]) -> bool:
    client.sendto(b"probe", target)
    try:
        return client.recvfrom(2000)[0] == b"probe"
    except TimeoutError:
        return False


@contextlib.contextmanager
def wire(lab: NatLab, machine: str, one_way_ms: float) -> Iterator[None]:
    proc = subprocess.Popen(["ip", "netns", "exec", lab.ns(f"wr{machine}"), sys.executable,
                             str(WIRE), "--one-way-ms", str(one_way_ms)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "carrying"
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_the_wire_carries_a_home_s_frames_with_its_delay() -> None:
    prefix = f"natwire{os.getpid() % 100000}"
    with NatLab(prefix) as lab:
        lab.internet()
        public = lab.public("P")
        lab.home("C", 3, wire=True)
        server, client = lab.call("P", udp_socket), lab.call("C", udp_socket)
        target = (public, server.getsockname()[1])
        sizes: list[int] = []

        def echo() -> None:
            while True:
                try:
                    data, addr = server.recvfrom(65535)
                except TimeoutError:
                    continue
                except OSError:  # closed
                    return
                sizes.append(len(data))
                server.sendto(data, addr)

        threading.Thread(target=echo, daemon=True).start()
        try:
            client.sendto(b"cut", target)  # no wire running: the cable is cut
            with pytest.raises(TimeoutError):
                client.recvfrom(2000)
            with wire(lab, "C", 10):
                # probes until one gets through (the router resolves P anew after the cut)
                wait_until(lambda: probe(client, target), "a first echo", 10)
                rtts = []
                for i in range(5):
                    start = time.perf_counter()
                    client.sendto(bytes([i]) * 100, target)
                    while client.recvfrom(2000)[0] != bytes([i]) * 100:
                        pass  # a late echo of an earlier probe
                    rtts.append(time.perf_counter() - start)
                assert min(rtts) >= 0.020, rtts  # 10 ms each way, never less
                sizes.clear()
                client.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1200)
                client.sendto(b"g" * 12000, target)  # one GSO send: ten datagrams
                for _ in range(10):
                    assert len(client.recvfrom(2000)[0]) == 1200
                assert sizes == [1200] * 10
        finally:
            server.close()
            client.close()
    assert leftover_namespaces(prefix) == []
