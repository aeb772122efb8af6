"""Our addresses as peers see them: how a node behind a NAT learns its public address
without asking any server outside the mesh.

Each peer reports, in its gossip, the address our packets reach it from. A report is an
untrusted claim: only an IP literal with a real port is kept (no name to resolve, no
loopback, unspecified or multicast address), each peer holds one report (its newest), and
both the peers remembered and the addresses shown are bounded. Pure logic, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from .invites import TokenError, format_addr, parse_addr

MAX_REPORTERS = 32  # peers whose latest report is remembered
MAX_OBSERVED = 4  # distinct addresses shown and handed out
_DISCARD = ipaddress.IPv6Network("100::/64")


def valid_observed(addr: object) -> str | None:
    """`addr` in canonical HOST:PORT form if it can be an address of ours, else None."""
    if not isinstance(addr, str):
        return None
    try:
        host, port = parse_addr(addr)
        ip = ipaddress.ip_address(host)
    except (TokenError, ValueError):
        return None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_reserved \
            or ip in _DISCARD:  # a relay's virtual path (relay.py), not an address
        return None
    return format_addr(str(ip), port)


class ObservedAddrs:
    """What peers report seeing us at: one report per peer, most recent first."""

    def __init__(self, max_reporters: int = MAX_REPORTERS,
                 max_addrs: int = MAX_OBSERVED) -> None:
        self._reports: OrderedDict[str, str] = OrderedDict()  # peer → addr, oldest first
        self._max_reporters = max_reporters
        self._max_addrs = max_addrs

    def report(self, peer_id: str, addr: object) -> bool:
        """Record `peer_id`'s report; True when the addresses shown changed."""
        checked = valid_observed(addr)
        if checked is None:
            return False
        before = self.addrs()
        self._reports.pop(peer_id, None)
        self._reports[peer_id] = checked
        while len(self._reports) > self._max_reporters:
            self._reports.popitem(last=False)
        return self.addrs() != before

    def addrs(self) -> list[str]:
        """Distinct reported addresses, the most recently reported first."""
        return list(dict.fromkeys(reversed(self._reports.values())))[: self._max_addrs]

    def public(self, lan: list[str]) -> list[str]:
        """The reported addresses that are not this machine's own: a NAT's outside."""
        return [addr for addr in self.addrs() if addr not in lan]
