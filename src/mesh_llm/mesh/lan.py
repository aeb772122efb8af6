"""LAN discovery's records and decisions (--mdns), pure: what a member advertises on the
local network and what is made of what others advertise there.

A member advertises `_mesh-llm._udp.local.` with its node id, QUIC port and its mesh's
*tag*: a keyed hash of the mesh secret (HMAC-SHA256 under the secret, truncated), so the
record names neither the secret nor an invite, and two meshes' tags cannot be linked. Only
a holder of the secret (a member, or a joiner with a token that carries it) can tell which
records are its mesh's; connecting still takes the full mutual authentication. Everything
read from the LAN is untrusted: every field is bounded and checked here, and a record that
fails a check is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .identity import is_node_id
from .invites import format_addr

SERVICE_TYPE = "_mesh-llm._udp.local."
RECORD_VERSION = "1"
TAG_BYTES = 8  # 16 hex characters: plenty to tell meshes on one LAN apart
MAX_MODELS = 8  # model names a record carries (discover shows them)
MAX_MODEL_NAME = 64
MAX_TXT_VALUE = 240  # bytes of one property's value (a TXT string is at most 255)
MAX_ADDRESSES = 8  # addresses taken from one record
MAX_NODES = 100_000  # a record's mesh size is a claim from the network: bounded
MAX_RECORDS = 256  # records one node keeps from the LAN


def mesh_tag(secret: bytes) -> str:
    """The mesh's tag on the LAN: not the secret, not an invite, one per mesh."""
    return hmac.new(secret, b"mesh-llm mdns tag v1", hashlib.sha256).digest()[:TAG_BYTES].hex()


def instance_name(node_id: str) -> str:
    """This node's service instance name (the id's prefix keeps the label short)."""
    return f"mesh-llm-{node_id[:16]}.{SERVICE_TYPE}"


def server_name(node_id: str) -> str:
    return f"mesh-llm-{node_id[:16]}.local."


@dataclass(frozen=True)
class LanRecord:
    """One member as it advertises itself on the LAN."""

    tag: str
    node_id: str
    port: int
    ips: tuple[str, ...] = ()
    nodes: int = 1  # the mesh's size as that member sees it (itself included)
    models: tuple[str, ...] = ()

    @property
    def addrs(self) -> list[str]:
        """Where to dial it: HOST:PORT for each address it advertises."""
        return [format_addr(ip, self.port) for ip in self.ips]


def properties(record: LanRecord) -> dict[str, str]:
    """The TXT properties that advertise `record` (its addresses travel as A records)."""
    models: list[str] = []
    for name in record.models[:MAX_MODELS]:  # one TXT string holds at most 255 bytes
        name = name.encode()[:MAX_MODEL_NAME].decode(errors="ignore").replace(",", " ")
        if len(",".join([*models, name]).encode()) > MAX_TXT_VALUE:
            break
        models.append(name)
    return {"v": RECORD_VERSION, "tag": record.tag, "id": record.node_id,
            "nodes": str(max(1, min(record.nodes, MAX_NODES))), "models": ",".join(models)}


def _text(value: object, limit: int) -> str | None:
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and len(value) <= limit else None


def parse(props: Mapping[bytes | str, object], ips: Iterable[str], port: object
          ) -> LanRecord | None:
    """A record read from the LAN, or None when any field is missing or out of bounds."""
    fields = {(_text(k, 16) or ""): v for k, v in props.items()}
    if _text(fields.get("v"), 8) != RECORD_VERSION:
        return None
    tag, node_id = _text(fields.get("tag"), 2 * TAG_BYTES), _text(fields.get("id"), 64)
    nodes = _text(fields.get("nodes", "1"), 6)
    models = _text(fields.get("models", ""), MAX_MODELS * (MAX_MODEL_NAME + 1))
    if (tag is None or nodes is None or models is None or len(tag) != 2 * TAG_BYTES
            or any(c not in "0123456789abcdef" for c in tag) or node_id is None
            or not is_node_id(node_id) or not nodes.isdigit()
            or not isinstance(port, int) or not 0 < port < 65536):
        return None
    good = []
    for ip in list(ips)[:MAX_ADDRESSES]:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if not (address.is_loopback or address.is_unspecified or address.is_multicast):
            good.append(str(address))
    if not good:
        return None
    names = tuple(m for m in models.split(",") if m)[:MAX_MODELS]
    return LanRecord(tag, node_id, port, tuple(good), max(1, min(int(nodes), MAX_NODES)), names)


def should_move(remote_addr: str | None, record: LanRecord) -> bool:
    """Whether to dial a connected peer at the addresses it advertises on the LAN: our link
    to it goes elsewhere (its address changed, or the link is relayed or goes through a
    NAT's public side), so the LAN path is new. A new link replaces the old one (the
    newest wins, link_rule.py)."""
    return remote_addr is None or remote_addr not in record.addrs


@dataclass(frozen=True)
class LanMesh:
    """One mesh seen on the LAN, as `mesh-llm discover` lists it."""

    tag: str
    members: int  # members advertising on this LAN
    nodes: int  # the mesh's size, as its largest claim says
    models: tuple[str, ...]


def meshes(records: Iterable[LanRecord]) -> list[LanMesh]:
    """The meshes on the LAN by tag, the largest first."""
    by_tag: dict[str, list[LanRecord]] = {}
    for record in records:
        by_tag.setdefault(record.tag, []).append(record)
    found = []
    for tag, group in by_tag.items():
        members = {r.node_id for r in group}
        models = tuple(dict.fromkeys(m for r in group for m in r.models))[:MAX_MODELS]
        found.append(LanMesh(tag, len(members), max(len(members), *(r.nodes for r in group)),
                             models))
    return sorted(found, key=lambda m: (-m.nodes, m.tag))
