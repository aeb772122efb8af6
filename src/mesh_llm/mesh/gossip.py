"""Gossip messages: each node tells every peer about itself and about the peers it knows.

On a GOSSIP stream (one per direction per connection) a node sends frames:

    {"t": "state", "ann": {...own announcement...}, "peers": [{"id", "addrs"}, ...]}
        on connect and on every change of its announcement or of its peer set;
        receivers dial the peers they do not know yet: full mesh.
    {"t": "ping", "n": int, "ts": float}  /  {"t": "pong", "n": int, "ts": float}
        application-level round trip (what a tunnelled request really pays).
    {"t": "goodbye"}
        graceful leave: drop me now, do not try to reconnect.

Pure validation here (the announcement's own in announcement.py); the gossip session does
the I/O. Everything a peer sends is untrusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .announcement import Announcement, AnnouncementError, addr_list
from .identity import is_node_id

MAX_GOSSIPED_PEERS = 256


class GossipError(Exception):
    """A gossip message that breaks the rules; the connection is dropped."""


@dataclass(frozen=True)
class PeerHint:
    """A peer someone else knows: enough to dial it."""

    node_id: str
    addrs: list[str]


@dataclass(frozen=True)
class StateMsg:
    announcement: Announcement
    peers: list[PeerHint]


@dataclass(frozen=True)
class PingMsg:
    n: int
    ts: float
    pong: bool


@dataclass(frozen=True)
class GoodbyeMsg:
    pass


GossipMsg = StateMsg | PingMsg | GoodbyeMsg


def state_message(announcement: Announcement, peers: list[PeerHint]) -> dict[str, Any]:
    return {
        "t": "state",
        "ann": announcement.to_wire(),
        "peers": [{"id": p.node_id, "addrs": p.addrs} for p in peers[:MAX_GOSSIPED_PEERS]],
    }


def ping_message(n: int, ts: float, pong: bool = False) -> dict[str, Any]:
    return {"t": "pong" if pong else "ping", "n": n, "ts": ts}


def goodbye_message() -> dict[str, Any]:
    return {"t": "goodbye"}


def parse_gossip(message: dict[str, Any], sender_id: str) -> GossipMsg | None:
    """Validate one gossip frame from `sender_id`; None for message types we do not know
    (newer peers may send more), GossipError for a known type that is malformed."""
    kind = message.get("t")
    if kind == "state":
        try:
            ann = Announcement.from_wire(message.get("ann"), sender_id)
        except AnnouncementError as err:
            raise GossipError(str(err)) from None
        raw_peers = message.get("peers", [])
        if not isinstance(raw_peers, list) or len(raw_peers) > MAX_GOSSIPED_PEERS:
            raise GossipError(f"state peers must be a list of at most {MAX_GOSSIPED_PEERS}")
        hints = []
        for item in raw_peers:
            if not isinstance(item, dict) or not is_node_id(item.get("id")):
                raise GossipError("state peers entries need a valid node id")
            try:
                addrs = addr_list(item.get("addrs", []), "peer addrs")
            except AnnouncementError as err:
                raise GossipError(str(err)) from None
            hints.append(PeerHint(item["id"], addrs))
        return StateMsg(ann, hints)
    if kind in ("ping", "pong"):
        n, ts = message.get("n"), message.get("ts")
        if type(n) is not int or not isinstance(ts, int | float) or isinstance(ts, bool) \
                or not math.isfinite(ts):
            raise GossipError("ping needs an integer n and a number ts")
        return PingMsg(n, float(ts), kind == "pong")
    if kind == "goodbye":
        return GoodbyeMsg()
    return None
