"""Who hosts the model and how it is spread: pure functions of the gossiped state.

Every node runs the same functions on the same announcements, so every node
predicts the same host without a vote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .rpc_wire import compatible

HEADROOM = 1.1  # a model needs its size × 1.1 of VRAM (KV cache, buffers)


@dataclass(frozen=True)
class Candidate:
    node_id: str
    role: str  # "host" | "worker" | "client" as announced; clients never host nor serve
    vram_bytes: int
    rtt_ms: float | None = None
    can_host: bool = True  # False: no local model file (it serves the host's model over RPC)


@dataclass(frozen=True)
class Plan:
    mode: str  # "solo" | "split" | "waiting"
    host: str
    workers: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()  # host first, then workers in order
    reason: str = ""


def elect_host(candidates: Iterable[Candidate]) -> str | None:
    """The serving node with the most VRAM that holds the model file; ties go to the larger
    node id. A worker without the file can only lend its device to a host that has one."""
    serving = [c for c in candidates if c.role != "client" and c.can_host]
    if not serving:
        return None
    return max(serving, key=lambda c: (c.vram_bytes, c.node_id)).node_id


def tensor_split(vrams: Sequence[int]) -> tuple[float, ...]:
    """Shares proportional to VRAM, rounded to 2 places and summing to 1."""
    if not vrams:
        return ()
    total = sum(vrams)
    if total <= 0:  # nobody says how much: equal shares
        vrams, total = [1] * len(vrams), len(vrams)
    shares = [round(v / total, 2) for v in vrams]
    shares[-1] = round(1.0 - sum(shares[:-1]), 2)
    return tuple(shares)


def make_plan(host: Candidate, others: Iterable[Candidate], model_bytes: int,
              force_split: bool = False) -> Plan:
    """Solo when the host alone fits the model; else split over the nearest workers that fit."""
    need = int(model_bytes * HEADROOM)
    workers = [c for c in others if c.role != "client" and c.node_id != host.node_id]
    if host.vram_bytes >= need and not force_split:
        return Plan("solo", host.node_id, tensor_split=(1.0,))
    if force_split:
        chosen = sorted(workers, key=lambda c: c.node_id)
    else:
        chosen = []
        total = host.vram_bytes
        for worker in sorted(workers, key=lambda c: (c.rtt_ms is None, c.rtt_ms or 0, c.node_id)):
            if total >= need:
                break
            chosen.append(worker)
            total += worker.vram_bytes
    total = host.vram_bytes + sum(c.vram_bytes for c in chosen)
    if total < need:
        return Plan("waiting", host.node_id, reason=(
            f"waiting for more VRAM: need {need / 1e9:.1f} GB, mesh has {total / 1e9:.1f} GB"))
    if not chosen:
        return Plan("solo", host.node_id, tensor_split=(1.0,),
                    reason="--split given but no worker has joined yet")
    vrams = [host.vram_bytes] + [c.vram_bytes for c in chosen]
    return Plan("split", host.node_id, tuple(c.node_id for c in chosen), tensor_split(vrams))


def incompatibility(model: str, rpc_version: str, peer_models: Sequence[str],
                    peer_rpc_version: str) -> str | None:
    """Why a serving peer cannot share our model's work, or None when it can."""
    if model not in peer_models:
        shown = ", ".join(peer_models) or "no model"
        return f"serves {shown}, not {model}"
    if not compatible(rpc_version, peer_rpc_version):
        return f"llama.cpp RPC protocol {peer_rpc_version} differs from ours ({rpc_version})"
    return None


@dataclass(frozen=True)
class NodeView:
    """What deciding who serves with whom needs about one node: ourselves or a peer."""

    node_id: str
    role: str  # "host" | "worker" | "client" as announced
    vram_bytes: int
    rtt_ms: float | None = None
    models: tuple[str, ...] = ()  # the names it serves its model under (its own, or its host's)
    model_file: bool = True  # holds a model file (False: lends its device to the host's model)
    fingerprint: str = ""  # weight fingerprint of its file; "" when it has none or it failed
    rpc_version: str = ""
    leaving: bool = False  # stopping gracefully: plan without it


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


def serving_candidates(me: NodeView | None, peers: Iterable[NodeView],
                       trusted_hosts: frozenset[str] | None = None,
                       ) -> tuple[list[Candidate], dict[str, str]]:
    """Who may host or serve with us, and why each other serving peer may not.

    `me` is None on a lite client (it serves nothing and takes the mesh as it is). A model
    is its bytes: peers match by weight fingerprint, whatever the file is called. A node
    without a file matches by the name it announces (its host's). A leaving node is left out.
    With `trusted_hosts` (--trust-hosts), only those nodes may host: hosting sees every
    prompt; every other node serves as a worker at most.
    """
    def may_host(node_id: str) -> bool:
        return trusted_hosts is None or node_id in trusted_hosts

    serving = [p for p in peers if p.role != "client"]
    candidates: list[Candidate] = []
    excluded: dict[str, str] = {}
    if me is not None and not me.leaving:
        candidates.append(Candidate(me.node_id, "worker", me.vram_bytes,
                                    can_host=me.model_file and may_host(me.node_id)))
    checks = me is not None and me.model_file
    names = _our_names(me, serving) if me is not None and checks else set()
    for peer in serving:
        if peer.leaving:
            excluded[peer.node_id] = "leaving the mesh"
            continue
        if me is not None and checks:
            why = _differs(me, names, peer)
            if why is None:
                why = incompatibility("", me.rpc_version, [""], peer.rpc_version)
            if why is not None:
                excluded[peer.node_id] = why
                continue
        candidates.append(Candidate(peer.node_id, peer.role, peer.vram_bytes, peer.rtt_ms,
                                    can_host=peer.model_file and may_host(peer.node_id)))
    return candidates, excluded


# Keeps the output head on the host: with -ngl N on a CPU host, llama.cpp would put it on
# the RPC side and every token would ship the logits back over the network.
OUTPUT_ON_HOST = r"^(output|token_embd)\.weight$=CPU"


@dataclass(frozen=True)
class Placement:
    """How llama-server spreads the layers: -ngl, --tensor-split, -ot."""

    gpu_layers: int
    tensor_split: tuple[float, ...]
    overrides: tuple[str, ...]


def placement(shares: Sequence[float], n_layers: int, host_has_gpu: bool) -> Placement:
    """Turn plan shares (host first, then workers) into llama-server's device arguments.

    llama.cpp orders devices RPC first (in --rpc order), then the local GPU. A GPU host
    is one more device in the split. A CPU host has no device: `-ngl` counts the layers
    sent to the RPC devices (plus the output layer, which we pin back on the host).
    """
    host_share, worker_shares = shares[0], list(shares[1:])
    if host_has_gpu:
        return Placement(999, (*worker_shares, host_share), ())
    remote = round(n_layers * sum(worker_shares))
    remote = max(1, min(n_layers, remote))
    total = sum(worker_shares) or 1.0
    split = tuple(round(w / total, 4) for w in worker_shares) if len(worker_shares) > 1 else ()
    return Placement(remote + 1, split, (OUTPUT_ON_HOST,))
