"""What a node says about itself in gossip: one typed, bounded record.

The node builds an `Announcement`; the mesh stamps its id and addresses, sends `to_wire()`
and checks every announcement it receives with `from_wire()`, the one place where an
untrusted announcement is validated. Every field is bounded (type, length, shape), so a
peer can neither crash a reader nor make it hold megabytes; keys this version does not
know are ignored (newer peers may send more).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from .identity import is_node_id
from .invites import MAX_ADDRS, TokenError, parse_addr

ROLES = ("host", "worker", "client")
PLAN_MODES = ("solo", "split", "waiting")
MAX_MODELS = 64
MAX_NAME_LEN = 256
MAX_SHORT_STR = 64
MAX_REASON_LEN = 1024
MAX_PLAN_WORKERS = 256
MAX_REQUEST_COUNTS = 64  # requests_per_min entries (one per model the node's API served)
MAX_COUNT = 10**9  # requests in a minute: more is a lie, refused
MAX_KEY_LEN = MAX_NAME_LEN + 8  # a group key: a fingerprint, or "name:" and a model name
# More memory than one machine can have is a lie that would win every election: refused.
MAX_VRAM_BYTES = 2 * 1024**4
_HEX = re.compile(r"[0-9a-f]*")
_SHARED_NAME = re.compile(rf"[!-~](?:[ -~]{{0,{MAX_NAME_LEN - 2}}}[!-~])?")


class AnnouncementError(ValueError):
    """An announcement that breaks the bounds (a peer's: its connection is dropped)."""


@dataclass(frozen=True)
class Offer:
    """One model a node holds the file of (every model of the node, in `--model` order)."""

    name: str
    fingerprint: str = ""  # weight fingerprint, hex; "" when it could not be computed
    size_bytes: int = 0


@dataclass(frozen=True)
class Hosted:
    """One model this node hosts: its plan (as JSON, like `plan`) and whether its
    llama-server answers."""

    key: str  # the model's group key (gossiped as "fingerprint")
    plan: dict[str, Any] | None = None
    ready: bool = False


@dataclass(frozen=True)
class Announcement:
    """One node's gossiped state. `plan` is the host's serving plan as JSON (read-only)."""

    node_id: str
    addrs: tuple[str, ...] = ()
    role: str = "worker"
    vram_bytes: int = 0
    models: tuple[str, ...] = ()
    model_file: bool = True  # holds a local file of `models` (False: serves the host's)
    rpc_version: str = ""
    version: str = ""
    ready: bool = False
    rpc_ready: bool = False
    model_fingerprint: str = ""
    leaving: bool = False  # stopping gracefully: re-plan without it now
    plan: dict[str, Any] | None = None
    draft: str | None = None
    # Every model of the node; the fields above describe its first (node/primary.py).
    offers: tuple[Offer, ...] = ()  # every model file held, in --model order
    hosted: tuple[Hosted, ...] = ()  # every model this node hosts
    joined: str = ""  # a file-less worker's chosen group (its key), "" when none
    requests_per_min: tuple[tuple[str, int], ...] = ()  # group key → requests, last minute
    started_at: float = 0.0  # unix seconds: the oldest node's first model is the default
    # Models of an OpenAI-compatible server this node shares (--share): names only, no
    # fingerprint; sent only when there are some (peers that predate it ignore the key).
    shared: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """The JSON object gossiped in a state message."""
        return {
            "node_id": self.node_id, "addrs": list(self.addrs), "role": self.role,
            "vram_bytes": self.vram_bytes, "models": list(self.models),
            "model_file": self.model_file, "rpc_version": self.rpc_version,
            "version": self.version, "ready": self.ready, "rpc_ready": self.rpc_ready,
            "model_fingerprint": self.model_fingerprint, "leaving": self.leaving,
            "plan": None if self.plan is None else _copy_plan(self.plan), "draft": self.draft,
            "offers": [{"name": o.name, "fingerprint": o.fingerprint,
                        "size_bytes": o.size_bytes} for o in self.offers],
            "hosted": [{"fingerprint": h.key, "ready": h.ready,
                        "plan": None if h.plan is None else _copy_plan(h.plan)}
                       for h in self.hosted],
            "joined": self.joined,
            "requests_per_min": dict(self.requests_per_min),
            "started_at": self.started_at,
            **({"shared": list(self.shared)} if self.shared else {}),
        }

    @classmethod
    def from_wire(cls, raw: object, node_id: str) -> Announcement:
        """Check an announcement (a peer's, or our own before we send it); `node_id` is
        who authenticated, and a different claim is refused. AnnouncementError if bad."""
        if not isinstance(raw, dict):
            raise AnnouncementError("announcement is not an object")
        claimed = raw.get("node_id", node_id)
        if claimed != node_id:
            raise AnnouncementError(f"announcement claims node id {str(claimed)[:16]!r}")
        ann = cls(node_id)
        get = raw.get
        role = get("role", ann.role)
        if role not in ROLES:
            raise AnnouncementError(f"announcement role must be one of {', '.join(ROLES)}")
        vram = get("vram_bytes", ann.vram_bytes)
        if type(vram) is not int or vram < 0:
            raise AnnouncementError("announcement vram_bytes must be a non-negative integer")
        if vram > MAX_VRAM_BYTES:
            raise AnnouncementError(
                f"announcement vram_bytes {vram} is more than one machine can have "
                f"(the limit is {MAX_VRAM_BYTES // 1024**4} TiB)")
        models = get("models", [])
        if not isinstance(models, list) or len(models) > MAX_MODELS or not all(
                isinstance(m, str) and len(m) <= MAX_NAME_LEN for m in models):
            raise AnnouncementError(f"announcement models must be a list of at most "
                                    f"{MAX_MODELS} names")
        draft = get("draft")
        if draft is not None and not _short(draft, MAX_NAME_LEN):
            raise AnnouncementError("announcement draft must be a model name or null")
        fingerprint = get("model_fingerprint", "")
        if not _short(fingerprint, MAX_SHORT_STR) or not _HEX.fullmatch(fingerprint):
            raise AnnouncementError("announcement model_fingerprint must be a short hex string")
        return cls(
            node_id=node_id,
            addrs=tuple(addr_list(get("addrs", []), "announcement addrs")),
            role=role,
            vram_bytes=vram,
            models=tuple(models),
            model_file=_flag(raw, "model_file", ann.model_file),
            rpc_version=_short_field(raw, "rpc_version"),
            version=_short_field(raw, "version"),
            ready=_flag(raw, "ready", ann.ready),
            rpc_ready=_flag(raw, "rpc_ready", ann.rpc_ready),
            model_fingerprint=fingerprint,
            leaving=_flag(raw, "leaving", ann.leaving),
            plan=None if get("plan") is None else _plan(get("plan")),
            draft=draft,
            offers=_offers(get("offers", [])),
            hosted=_hosted(get("hosted", [])),
            joined=_key(get("joined", ""), "joined"),
            requests_per_min=_counts(get("requests_per_min", {})),
            started_at=_time(get("started_at", 0.0)),
            shared=_shared(get("shared", [])),
        )

    def checked(self) -> Announcement:
        """This announcement as a peer will see it (ValueError when out of bounds): what
        we would send must pass the same check as what we receive."""
        return Announcement.from_wire(self.to_wire(), self.node_id)


def clamp_client(ann: Announcement) -> Announcement:
    """What a client-invite peer may be, whatever it announced: a client that serves
    nothing, offers no memory and hosts nothing (its version is kept for the console)."""
    return replace(ann, role="client", vram_bytes=0, models=(), ready=False,
                   model_file=False, rpc_ready=False, rpc_version="", plan=None,
                   model_fingerprint="", draft=None, addrs=(), offers=(), hosted=(),
                   joined="", shared=())


def addr_list(value: object, what: str) -> list[str]:
    """A list of at most MAX_ADDRS valid HOST:PORT addresses (AnnouncementError if not)."""
    if not isinstance(value, list) or len(value) > MAX_ADDRS:
        raise AnnouncementError(f"{what} must be a list of at most {MAX_ADDRS} addresses")
    for addr in value:
        try:
            parse_addr(addr)
        except TokenError as err:
            raise AnnouncementError(f"{what}: {err}") from None
    return list(value)


def _short(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _short_field(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name, "")
    if not _short(value, MAX_SHORT_STR):
        raise AnnouncementError(f"announcement {name} must be a short string")
    return str(value)


def _flag(raw: dict[str, Any], name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise AnnouncementError(f"announcement {name} must be true or false")
    return value


def _plan(raw: object) -> dict[str, Any]:
    """The host's plan: {mode, host, workers, rpc, tensor_split, reason}, each bounded."""
    if not isinstance(raw, dict):
        raise AnnouncementError("announcement plan must be an object or null")
    mode, host = raw.get("mode"), raw.get("host")
    if mode not in PLAN_MODES:
        raise AnnouncementError(f"announcement plan mode must be one of {', '.join(PLAN_MODES)}")
    if not is_node_id(host):
        raise AnnouncementError("announcement plan host must be a node id")
    workers, rpc = raw.get("workers", []), raw.get("rpc", [])
    split, reason = raw.get("tensor_split", []), raw.get("reason", "")
    if not isinstance(workers, list) or len(workers) > MAX_PLAN_WORKERS \
            or not all(is_node_id(w) for w in workers):
        raise AnnouncementError(f"announcement plan workers must be at most "
                                f"{MAX_PLAN_WORKERS} node ids")
    if not isinstance(rpc, list) or len(rpc) > MAX_PLAN_WORKERS \
            or not all(_short(r, MAX_SHORT_STR) for r in rpc):
        raise AnnouncementError("announcement plan rpc must be a list of short strings")
    if not isinstance(split, list) or len(split) > MAX_PLAN_WORKERS + 1 or not all(
            isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s)
            and 0 <= s <= 1 for s in split):
        raise AnnouncementError("announcement plan tensor_split must be shares from 0 to 1")
    if not _short(reason, MAX_REASON_LEN):
        raise AnnouncementError(f"announcement plan reason must be a string of at most "
                                f"{MAX_REASON_LEN} characters")
    return {"mode": mode, "host": host, "workers": list(workers), "rpc": list(rpc),
            "tensor_split": [float(s) for s in split], "reason": reason}


def _fingerprint(value: object, what: str) -> str:
    if not _short(value, MAX_SHORT_STR) or not _HEX.fullmatch(str(value)):
        raise AnnouncementError(f"announcement {what} must be a short hex string")
    return str(value)


def _key(value: object, what: str) -> str:
    """A group key: a hex fingerprint, or "name:" and a model name."""
    if isinstance(value, str) and value.startswith("name:") and len(value) <= MAX_KEY_LEN:
        return value
    return _fingerprint(value, what)


def _objects(raw: object, field: str, entries: str) -> list[dict[str, Any]]:
    """A list of at most MAX_MODELS objects (one per model), else the error naming `field`."""
    if not isinstance(raw, list) or len(raw) > MAX_MODELS:
        raise AnnouncementError(f"announcement {field} must be a list of at most {MAX_MODELS}")
    if not all(isinstance(item, dict) for item in raw):
        raise AnnouncementError(f"announcement {entries} must be objects")
    return raw


def _offers(raw: object) -> tuple[Offer, ...]:
    out = []
    for item in _objects(raw, "offers", "offers"):
        name, size = item.get("name"), item.get("size_bytes", 0)
        if not _short(name, MAX_NAME_LEN) or not name:
            raise AnnouncementError("announcement offer name must be a model name")
        if type(size) is not int or not 0 <= size <= MAX_VRAM_BYTES:
            raise AnnouncementError("announcement offer size_bytes must be a size in bytes")
        out.append(Offer(str(name), _fingerprint(item.get("fingerprint", ""),
                                                 "offer fingerprint"), size))
    return tuple(out)


def _hosted(raw: object) -> tuple[Hosted, ...]:
    out = []
    for item in _objects(raw, "hosted", "hosted entries"):
        plan = item.get("plan")
        out.append(Hosted(_key(item.get("fingerprint", ""), "hosted fingerprint"),
                          None if plan is None else _plan(plan),
                          _flag(item, "ready", False)))
    return tuple(out)


def _shared(raw: object) -> tuple[str, ...]:
    """Shared model names: at most MAX_MODELS, each printable ASCII of at most
    MAX_NAME_LEN characters, no duplicates (the API carries them in headers and logs)."""
    if not isinstance(raw, list) or len(raw) > MAX_MODELS or not all(
            isinstance(n, str) and _SHARED_NAME.fullmatch(n) for n in raw) \
            or len(set(raw)) != len(raw):
        raise AnnouncementError(f"announcement shared must be a list of at most {MAX_MODELS} "
                                f"distinct printable model names")
    return tuple(raw)


def _counts(raw: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, dict) or len(raw) > MAX_REQUEST_COUNTS:
        raise AnnouncementError(f"announcement requests_per_min must map at most "
                                f"{MAX_REQUEST_COUNTS} models to counts")
    out = []
    for key, count in raw.items():
        if type(count) is not int or not 0 <= count <= MAX_COUNT:
            raise AnnouncementError("announcement requests_per_min counts must be integers "
                                    f"from 0 to {MAX_COUNT}")
        out.append((_key(key, "requests_per_min key"), count))
    return tuple(out)


def _time(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) \
            or not 0 <= raw <= 1e11:
        raise AnnouncementError("announcement started_at must be a time in unix seconds")
    return float(raw)


def _copy_plan(plan: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, list) else value
            for key, value in plan.items()}
