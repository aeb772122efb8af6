"""Gossip messages: each node tells every peer about itself and about the peers it knows.

On a GOSSIP stream (one per direction per connection) a node sends frames:

    {"t": "state", "ann": {...own announcement...}, "peers": [{"id", "addrs"}, ...]}
        on connect and on every change of its announcement or of its peer set;
        receivers dial the peers they do not know yet: full mesh.
    {"t": "ping", "n": int, "ts": float}  /  {"t": "pong", "n": int, "ts": float}
        application-level round trip (what a tunnelled request really pays).
    {"t": "goodbye"}
        graceful leave: drop me now, do not try to reconnect.
    {"t": "intro?", "id": target}
        "I cannot dial `target`: introduce us" (to a member connected to both).
    {"t": "intro", "id": peer, "addrs": [...], "dial": bool, "in_ms": int}
        from an introducer: `peer` is reachable at `addrs` (where the introducer sees it);
        in `in_ms` ms dial it (`dial`) or send it punch packets from our mesh socket.

A state message also says where its sender sees the receiver ("seen": HOST:PORT): how a
node behind a NAT learns its public address (observed.py); and "path": "punched" when the
sender found the link by hole punching (punch.py), so both ends label it alike.

Pure validation here (the announcement's own in announcement.py); the gossip session does
the I/O. Everything a peer sends is untrusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .announcement import Announcement, AnnouncementError, addr_list
from .identity import is_node_id
from .invites import MAX_ADDR_LEN

MAX_GOSSIPED_PEERS = 256
MAX_INTRO_ADDRS = 4
MAX_INTRO_DELAY_MS = 5000


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
    seen: str | None = None  # where the sender sees us (unchecked beyond its type)
    punched: bool = False  # the sender found this link's path by punching


@dataclass(frozen=True)
class IntroRequest:
    target: str


@dataclass(frozen=True)
class Intro:
    peer: str
    addrs: list[str]
    dial: bool
    in_ms: int


@dataclass(frozen=True)
class PingMsg:
    n: int
    ts: float
    pong: bool


@dataclass(frozen=True)
class GoodbyeMsg:
    pass


GossipMsg = StateMsg | PingMsg | GoodbyeMsg | IntroRequest | Intro


def state_message(announcement: Announcement, peers: list[PeerHint],
                  seen: str | None = None, punched: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {
        "t": "state",
        "ann": announcement.to_wire(),
        "peers": [{"id": p.node_id, "addrs": p.addrs} for p in peers[:MAX_GOSSIPED_PEERS]],
    }
    if seen is not None:
        message["seen"] = seen
    if punched:
        message["path"] = "punched"
    return message


def intro_request(target: str) -> dict[str, Any]:
    return {"t": "intro?", "id": target}


def intro_message(intro: Intro) -> dict[str, Any]:
    return {"t": "intro", "id": intro.peer, "addrs": intro.addrs[:MAX_INTRO_ADDRS],
            "dial": intro.dial, "in_ms": intro.in_ms}


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
        seen = message.get("seen")
        if seen is not None and (not isinstance(seen, str) or len(seen) > MAX_ADDR_LEN):
            raise GossipError("state seen must be a HOST:PORT string")
        return StateMsg(ann, hints, seen, message.get("path") == "punched")
    if kind in ("ping", "pong"):
        n, ts = message.get("n"), message.get("ts")
        if type(n) is not int or not isinstance(ts, int | float) or isinstance(ts, bool) \
                or not math.isfinite(ts):
            raise GossipError("ping needs an integer n and a number ts")
        return PingMsg(n, float(ts), kind == "pong")
    if kind == "goodbye":
        return GoodbyeMsg()
    if kind == "intro?":
        target = message.get("id")
        if not is_node_id(target):
            raise GossipError("intro? needs a valid node id")
        return IntroRequest(str(target))
    if kind == "intro":
        return _intro(message)
    return None


def _intro(message: dict[str, Any]) -> Intro:
    peer, dial, in_ms = message.get("id"), message.get("dial"), message.get("in_ms")
    if not is_node_id(peer):
        raise GossipError("intro needs a valid node id")
    if not isinstance(dial, bool):
        raise GossipError("intro dial must be true or false")
    if type(in_ms) is not int or not 0 <= in_ms <= MAX_INTRO_DELAY_MS:
        raise GossipError(f"intro in_ms must be an integer from 0 to {MAX_INTRO_DELAY_MS}")
    raw = message.get("addrs")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_INTRO_ADDRS:
        raise GossipError(f"intro addrs must list 1 to {MAX_INTRO_ADDRS} addresses")
    try:
        addrs = addr_list(raw, "intro addrs")
    except AnnouncementError as err:
        raise GossipError(str(err)) from None
    return Intro(str(peer), addrs, dial, in_ms)
