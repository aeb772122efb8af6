"""Gossip messages: each node tells every peer about itself and about the peers it knows.

On a GOSSIP stream (one per direction per connection) a node sends frames:

    {"t": "state", "ann": {...own announcement...}, "peers": [{"id", "addrs"}, ...]}
        on connect and on every change of its announcement or of its peer set;
        receivers dial the peers they do not know yet: full mesh.
    {"t": "ping", "n": int, "ts": float}  /  {"t": "pong", "n": int, "ts": float}
        application-level round trip (what a tunnelled request really pays).
    {"t": "goodbye"}
        graceful leave: drop me now, do not try to reconnect.

Pure validation here; the mesh does the I/O. Everything a peer sends is untrusted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..identity import is_node_id
from ..token import MAX_ADDRS, TokenError, parse_addr

ROLES = ("host", "worker", "client")
MAX_MODELS = 64
MAX_NAME_LEN = 256
MAX_SHORT_STR = 64
MAX_GOSSIPED_PEERS = 256
# More memory than one machine can have is a lie that would win every election: refused.
MAX_VRAM_BYTES = 2 * 1024**4

DEFAULTS: dict[str, Any] = {
    "addrs": [],
    "role": "worker",
    "vram_bytes": 0,
    "models": [],
    "rpc_version": "",
    "version": "",
    "ready": False,
    "model_file": True,  # holds a local file of `models` (False: serves the host's over RPC)
    "leaving": False,  # stopping gracefully: re-plan without it now, it waits for the drain
}


class GossipError(Exception):
    """A gossip message that breaks the rules; the connection is dropped."""


@dataclass(frozen=True)
class PeerHint:
    """A peer someone else knows: enough to dial it."""

    node_id: str
    addrs: list[str]


@dataclass(frozen=True)
class StateMsg:
    announcement: dict[str, Any]
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


def make_announcement(node_id: str, **fields: Any) -> dict[str, Any]:
    """A complete announcement: defaults, then `fields`; validated (ValueError if bad)."""
    ann = {**DEFAULTS, **fields, "node_id": node_id}
    try:
        return validate_announcement(ann, node_id)
    except GossipError as err:
        raise ValueError(str(err)) from None


def validate_announcement(raw: object, node_id: str) -> dict[str, Any]:
    """Check a peer's announcement; `node_id` is who authenticated, and wins."""
    if not isinstance(raw, dict):
        raise GossipError("announcement is not an object")
    claimed = raw.get("node_id", node_id)
    if claimed != node_id:
        raise GossipError(f"announcement claims node id {str(claimed)[:16]!r}")
    ann = {**DEFAULTS, **raw, "node_id": node_id}
    ann["addrs"] = _addrs(ann["addrs"], "announcement addrs")
    if ann["role"] not in ROLES:
        raise GossipError(f"announcement role must be one of {', '.join(ROLES)}")
    vram = ann["vram_bytes"]
    if type(vram) is not int or vram < 0:
        raise GossipError("announcement vram_bytes must be a non-negative integer")
    if vram > MAX_VRAM_BYTES:
        raise GossipError(f"announcement vram_bytes {vram} is more than one machine can have "
                          f"(the limit is {MAX_VRAM_BYTES // 1024**4} TiB)")
    models = ann["models"]
    if (
        not isinstance(models, list)
        or len(models) > MAX_MODELS
        or not all(isinstance(m, str) and len(m) <= MAX_NAME_LEN for m in models)
    ):
        raise GossipError(f"announcement models must be a list of at most {MAX_MODELS} "
                          "names")
    for name in ("rpc_version", "version"):
        value = ann[name]
        if not isinstance(value, str) or len(value) > MAX_SHORT_STR:
            raise GossipError(f"announcement {name} must be a short string")
    for name in ("ready", "model_file", "leaving"):
        if not isinstance(ann[name], bool):
            raise GossipError(f"announcement {name} must be true or false")
    return ann


def clamp_client(ann: dict[str, Any]) -> dict[str, Any]:
    """What a client-invite peer may be, whatever it announced: a client that serves
    nothing, offers no memory and hosts nothing (its version is kept for the console)."""
    return {**ann, "role": "client", "vram_bytes": 0, "models": [], "ready": False,
            "model_file": False, "rpc_ready": False, "rpc_version": "", "plan": None,
            "model_fingerprint": "", "draft": None, "addrs": []}


def _addrs(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ADDRS:
        raise GossipError(f"{what} must be a list of at most {MAX_ADDRS} addresses")
    for addr in value:
        try:
            parse_addr(addr)
        except TokenError as err:
            raise GossipError(f"{what}: {err}") from None
    return list(value)


def state_message(announcement: dict[str, Any], peers: list[PeerHint]) -> dict[str, Any]:
    return {
        "t": "state",
        "ann": announcement,
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
        ann = validate_announcement(message.get("ann"), sender_id)
        raw_peers = message.get("peers", [])
        if not isinstance(raw_peers, list) or len(raw_peers) > MAX_GOSSIPED_PEERS:
            raise GossipError(f"state peers must be a list of at most {MAX_GOSSIPED_PEERS}")
        hints = []
        for item in raw_peers:
            if not isinstance(item, dict) or not is_node_id(item.get("id")):
                raise GossipError("state peers entries need a valid node id")
            hints.append(PeerHint(item["id"], _addrs(item.get("addrs", []), "peer addrs")))
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
