"""Who may serve with whom: the election's candidates, built from the gossiped state.

Pure code. The node turns its own facts and each connected peer's announcement into a
`NodeView`; `elect_group` then says, for one model's group (groups.py), who hosts, who may
serve with us as a worker, and why every other serving peer may not (another model,
another RPC protocol, leaving, or a link too slow for a split: `too_far`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..mesh.peers import PeerInfo
from .election import Candidate, elect_host, rpc_incompatibility
from .groups import Group

DEFAULT_MAX_SPLIT_RTT_MS = 80.0  # --max-split-rtt: each token crosses a worker's link
READMIT = 0.9  # a peer held out for its RTT comes back under this share of the limit


@dataclass(frozen=True)
class NodeView:
    """What deciding who serves with whom needs about one node: ourselves or a peer."""

    node_id: str
    role: str  # "host" | "worker" | "client" as announced
    vram_bytes: int
    rtt_ms: float | None = None
    models: tuple[str, ...] = ()  # the names it serves its model under (its own, or its host's)
    file_less: bool = False  # holds no model file: lends its device to the host's model
    fingerprint: str = ""  # weight fingerprint of its file; "" when it has none or it failed
    rpc_version: str = ""
    leaving: bool = False  # stopping gracefully: plan without it
    rpc_ready: bool = False  # its ggml-rpc-server is up: a host may plan it as a worker


def _our_names(me: NodeView, peers: Sequence[NodeView]) -> set[str]:
    """Every name our bytes go by in the mesh: ours, and those of peers with the same file."""
    names = set(me.models)
    if me.fingerprint:
        for peer in peers:
            if peer.fingerprint == me.fingerprint:
                names.update(peer.models)
    return names


def _differs(me: NodeView, names: set[str], peer: NodeView) -> str | None:
    """Why `peer` serves another model than ours, or None: by the bytes when both sides
    know them, else (a worker without a file, or one whose file failed a check) by name."""
    ours = me.models[0] if me.models else "our model"
    if me.fingerprint and peer.fingerprint:
        if peer.fingerprint == me.fingerprint:
            return None
        theirs = ", ".join(peer.models) or "a model"
        return (f"serves {theirs} from another file (weights {peer.fingerprint[:12]}), "
                f"not {ours} (weights {me.fingerprint[:12]})")
    if names.intersection(peer.models):
        return None
    shown = ", ".join(peer.models) or "no model"
    return f"serves {shown}, not {ours}"


def view_of(peer: PeerInfo) -> NodeView:
    """What the election needs from a peer's announcement."""
    ann = peer.announcement
    return NodeView(peer.node_id, peer.role, peer.vram_bytes, peer.rtt_ms,
                    models=tuple(peer.models), file_less=not peer.model_file,
                    fingerprint=ann.model_fingerprint, rpc_version=ann.rpc_version,
                    leaving=ann.leaving, rpc_ready=ann.rpc_ready)


@dataclass(frozen=True)
class Electorate:
    """The outcome of one election as this node sees it."""

    host_id: str | None
    me: Candidate | None  # ourselves, when we may serve (None: a lite client, or leaving)
    workers: tuple[Candidate, ...]  # the others that may serve with us, ggml-rpc-server up
    excluded: Mapping[str, str]  # peer id → why it cannot serve with us
    far: frozenset[str] = frozenset()  # those of them held out for their link's RTT


def leaving_since(previous: Mapping[str, float], peers: Iterable[NodeView],
                  now: float) -> dict[str, float]:
    """When we first saw each peer that now announces it is leaving (a host stops using a
    leaving worker before the worker's wait runs out)."""
    return {p.node_id: previous.get(p.node_id, now) for p in peers if p.leaving}


def _group_exclusion(me: NodeView | None, names: set[str], peer: NodeView,
                     member: bool) -> str | None:
    """Why `peer` may not serve in our group, or None: leaving, another model (not a
    member of the group), or (when we hold a file and so run the checks) another RPC
    protocol."""
    if peer.leaving:
        return "leaving the mesh"
    if me is None or me.file_less:
        return None if member else "serves another model"
    if not member:
        return _differs(me, names, peer) or f"does not serve {', '.join(me.models)}"
    return rpc_incompatibility(me.rpc_version, peer.rpc_version)


def too_far(rtt_ms: float | None, max_rtt_ms: float | None, held: bool) -> str | None:
    """Why a split must not place a worker behind this link, or None. Every decode step
    crosses it, so the limit is the measured RTT's (`None`: no limit, or not measured yet).
    A peer already held out (`held`) comes back only under READMIT × the limit, so an RTT
    hovering at the limit does not restart llama-server at every sample."""
    if max_rtt_ms is None or rtt_ms is None:
        return None
    if rtt_ms > max_rtt_ms:
        return f"rtt {rtt_ms:.0f} ms: over --max-split-rtt {max_rtt_ms:g} ms"
    if held and rtt_ms > READMIT * max_rtt_ms:
        return (f"rtt {rtt_ms:.0f} ms: held out until under {READMIT * max_rtt_ms:g} ms "
                f"(--max-split-rtt {max_rtt_ms:g} ms)")
    return None


def far_peers(peers: Iterable[NodeView], max_rtt_ms: float | None,
              before: frozenset[str]) -> frozenset[str]:
    """The peers whose link is too slow for a split now (`too_far`), given those that were
    (`before`): the node re-decides when this set changes, RTT samples being no events."""
    return frozenset(p.node_id for p in peers
                     if too_far(p.rtt_ms, max_rtt_ms, p.node_id in before) is not None)


def elect_group(me: NodeView | None, peers: Sequence[NodeView], group: Group | None,
                max_rtt_ms: float | None = None,
                far_before: frozenset[str] = frozenset()) -> Electorate:
    """One model's election as this node sees it: the group's members (groups.py, the
    same on every node) less the peers our exclusion rules leave out; the host is the
    group's rule (most VRAM given to the model, ties by id) among the rest.

    Every model, a node's first included, is elected this way, so a node holding a model
    as its second one still takes part in that model's election on every node. `me` is
    None on a lite client; `group` None when the model is in no group (nothing to serve).
    """
    members = {c.node_id for c in group.candidates} if group is not None else set()
    serving = [p for p in peers if p.role != "client"]
    names = _our_names(me, serving) if me is not None and not me.file_less else set()
    excluded: dict[str, str] = {}
    for peer in serving:
        why = _group_exclusion(me, names, peer, peer.node_id in members)
        if why is not None:
            excluded[peer.node_id] = why
    far: set[str] = set()
    if me is not None:
        for peer in serving:
            why = too_far(peer.rtt_ms, max_rtt_ms, peer.node_id in far_before)
            if why is not None and peer.node_id not in excluded:
                excluded[peer.node_id] = why
                far.add(peer.node_id)
    if group is None:
        return Electorate(None, None, (), excluded, frozenset(far))
    me_id = me.node_id if me is not None and not me.leaving else None
    peer_ids = {p.node_id for p in serving}
    candidates = [c for c in group.candidates if (c.node_id not in excluded or c.node_id in far)
                  and (c.node_id == me_id or c.node_id in peer_ids)]
    mine = next((c for c in candidates if c.node_id == me_id), None)
    rpc_ready = {p.node_id for p in serving if p.rpc_ready}
    workers = tuple(c for c in candidates if c is not mine and c.node_id in rpc_ready
                    and c.node_id not in far)
    return Electorate(elect_host(candidates), mine, workers, excluded, frozenset(far))
