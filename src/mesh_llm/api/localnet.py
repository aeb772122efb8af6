"""This machine's own addresses and name: what a LAN browser may put in `Host` when the
node listens on every interface (`--listen-all`). Read once at start, never via DNS."""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
from pathlib import Path

from .guard import AllowedHosts, allowed_hosts

_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def interface_addresses() -> list[str]:
    """The IPv4 and IPv6 addresses of every interface (Linux); elsewhere, the address of
    the default route. Nothing here sends a packet or asks a resolver."""
    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in _interfaces():
            with contextlib.suppress(OSError):
                packed = struct.pack("256s", name.encode()[:15])
                raw = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, packed)
                found.append(socket.inet_ntoa(raw[20:24]))
        with contextlib.suppress(OSError):
            sock.connect(("10.255.255.255", 9))  # only picks a route
            found.append(sock.getsockname()[0])
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            hexaddr = line.split()[0]
            found.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexaddr)))
    return list(dict.fromkeys(a for a in found if a and a != "0.0.0.0"))


def _interfaces() -> list[tuple[int, str]]:
    try:
        return socket.if_nameindex()
    except OSError:
        return []


def host_names() -> list[str]:
    """The machine's name as it calls itself, and with `.local` (mDNS)."""
    name = socket.gethostname().strip()
    return [name, f"{name.split('.')[0]}.local"] if name else []


def served_hosts(*, listen_all: bool, advertise: tuple[str, ...]) -> AllowedHosts:
    """The allowed `Host` names of a node started with these options."""
    if not listen_all:
        return allowed_hosts(listen_all=False, advertise=advertise)
    return allowed_hosts(listen_all=True, advertise=advertise,
                         local_addresses=interface_addresses(), hostnames=host_names())
