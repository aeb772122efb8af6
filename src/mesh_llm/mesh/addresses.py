"""Which addresses this node hands out (token, announcement) and how a peer's is shown."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable

from .invites import MAX_ADDRS, format_addr, parse_addr
from .quic import Connection


def advertised(addrs: Iterable[str]) -> list[str]:
    """`--advertise` addresses, checked (TokenError, a UserError, for a bad one)."""
    checked = [str(a) for a in addrs]
    for addr in checked:
        parse_addr(addr)
    return checked


def token_addrs(bind_host: str, port: int, advertise: list[str]) -> list[str]:
    """Addresses for our token: --advertise first, then the bound or local addresses."""
    addrs = list(advertise)
    if bind_host in ("0.0.0.0", "::", ""):
        addrs.extend(format_addr(ip, port) for ip in local_ips())
        addrs.append(format_addr("127.0.0.1", port))
    else:
        addrs.append(format_addr(bind_host, port))
    return list(dict.fromkeys(addrs))[:MAX_ADDRS]


def local_ips() -> list[str]:
    """This host's primary IPv4 address, found without sending a packet (connecting a UDP
    socket only picks a route)."""
    ips: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 9))
        ip = s.getsockname()[0]
        if ip and not ip.startswith("127.") and ip != "0.0.0.0":
            ips.append(ip)
    return ips


def remote(conn: Connection) -> str:
    """The peer's address as seen from here (HOST:PORT): logs, and a redial candidate."""
    return format_addr(*conn.remote_address)


def source(conn: Connection) -> str:
    """The remote host (not port): what a flood of refusals is counted by."""
    return str(conn.remote_address[0])
