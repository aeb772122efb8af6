"""Which addresses this node hands out (token, announcement) and how a peer's is shown.

A loopback address reaches the machine that dials it, so it is never handed to another
machine: a node bound to every interface lists the addresses others can reach, and gossip
to a peer that is not on this machine carries no loopback address (nor is one taken from
such a peer). Pure functions but `local_ips`, which reads the interfaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import sys
from collections.abc import Iterable

from .invites import MAX_ADDRS, TokenError, format_addr, parse_addr
from .quic import Connection

WILDCARDS = ("0.0.0.0", "::", "")
_SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def advertised(addrs: Iterable[str]) -> list[str]:
    """`--advertise` addresses, checked (TokenError, a UserError, for a bad one)."""
    checked = [str(a) for a in addrs]
    for addr in checked:
        parse_addr(addr)
    return checked


def lan_addrs(bind_host: str, port: int, ips: Iterable[str]) -> list[str]:
    """Where this machine's own networks reach the socket: the bound address, or for a
    wildcard bind each interface address (`ips`; loopback dropped)."""
    if bind_host not in WILDCARDS:
        return [format_addr(bind_host, port)]
    return list(dict.fromkeys(format_addr(ip, port) for ip in ips if not _loopback_host(ip)))


def token_addrs(bind_host: str, port: int, advertise: list[str], ips: Iterable[str],
                observed: Iterable[str] = ()) -> list[str]:
    """Addresses for our token and announcement, best first: --advertise, then what peers
    see us at (a NAT's public side), then this machine's own. A wildcard bind with no
    address but loopback falls back to 127.0.0.1: such an invite works on this machine
    only (the dialler of another machine recognises it as its own and says so)."""
    lan = lan_addrs(bind_host, port, ips)
    addrs = [*advertise, *observed, *lan]
    if not lan and bind_host in WILDCARDS:
        addrs.append(format_addr("127.0.0.1", port))
    return list(dict.fromkeys(addrs))[:MAX_ADDRS]


def own_addrs(bind_host: str, port: int, ips: Iterable[str],
              observed: Iterable[str] = ()) -> set[str]:
    """Every address at which dialling reaches this very node: skipped when dialling."""
    own = {*lan_addrs(bind_host, port, ips), *observed}
    if bind_host in WILDCARDS or _loopback_host(bind_host):
        own.update(format_addr(h, port) for h in ("127.0.0.1", "localhost", "0.0.0.0"))
    return own


def is_loopback(addr: str) -> bool:
    """Whether HOST:PORT names this machine only (127/8, ::1, localhost); False if bad."""
    try:
        host, _ = parse_addr(addr)
    except TokenError:
        return False
    return _loopback_host(host)


def shareable(addrs: Iterable[str], to_loopback: bool) -> list[str]:
    """`addrs` as they may be told to (or taken from) a peer: without loopback addresses
    unless that peer is on this machine too."""
    return [a for a in addrs if to_loopback or not is_loopback(a)]


def _loopback_host(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_ips() -> list[str]:
    """This host's IPv4 addresses, found without sending a packet: the primary one (the
    route a UDP socket would take), then every interface's (so a machine without a
    default route still lists its LAN addresses)."""
    ips: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 9))
        ips.append(s.getsockname()[0])
    ips.extend(_interface_ips())
    return [ip for ip in dict.fromkeys(ips) if ip != "0.0.0.0" and not _loopback_host(ip)]


def _interface_ips() -> list[str]:
    if not sys.platform.startswith("linux"):
        return []
    import fcntl

    ips: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            with contextlib.suppress(OSError):
                reply = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, request)
                ips.append(socket.inet_ntoa(reply[20:24]))
    return ips


def remote(conn: Connection) -> str:
    """The peer's address as seen from here (HOST:PORT): logs, and a redial candidate."""
    return format_addr(*conn.remote_address)


def current(conn: Connection) -> str:
    """Where the peer is now (HOST:PORT): as `remote`, unless its NAT moved it since the
    connection began (a router that restarted). What an introducer hands out."""
    return format_addr(*conn.path_address)


def source(conn: Connection) -> str:
    """The remote host (not port): what a flood of refusals is counted by."""
    return str(conn.remote_address[0])
