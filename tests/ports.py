"""Ports for the servers a test starts, picked outside the kernel's ephemeral range.

A port the kernel hands out (bind to port 0) is free only until the next process asks:
meanwhile a node's own children, a QUIC socket or any outgoing connection can be given the
same port, and the node we start fails with "port already in use". The kernel never hands
out ports outside `ip_local_port_range` by itself, so a port picked there, checked free
and never picked twice by this process, stays ours until the child binds it."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from mesh_llm.netutil import free_port as kernel_port

SPAN = 10_000
_handed: set[int] = set()


def _span() -> tuple[int, int] | None:
    """Ports below (or else above) the ephemeral range; None when neither side has room."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    if low - SPAN >= 1024:
        return low - SPAN, low - 1
    if high + SPAN <= 65535:
        return high + 1, high + SPAN
    return None


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP and UDP port free on `host` now that the kernel will not hand to anyone else."""
    span = _span()
    for _ in range(200 if span is not None else 0):
        port = random.randint(*span)  # type: ignore[misc]
        if port not in _handed and _bindable(host, port):
            _handed.add(port)
            return port
    return kernel_port(host)
