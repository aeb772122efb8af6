"""Who hosts the model and how it is spread: pure functions of the gossiped state.

Every node runs the same functions on the same announcements, so every node
predicts the same host without a vote.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

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

    def to_json(self, rpc: Sequence[str] = ()) -> dict[str, Any]:
        """The plan as the status and the announcement carry it; `rpc` is the endpoints
        llama-server was started with (none before it starts)."""
        return {"mode": self.mode, "host": self.host, "workers": list(self.workers),
                "rpc": list(rpc), "tensor_split": list(self.tensor_split), "reason": self.reason}


def elect_host(candidates: Iterable[Candidate]) -> str | None:
    """The serving node with the most VRAM that holds the model file; ties go to the larger
    node id. A worker without the file can only lend its device to a host that has one."""
    serving = [c for c in candidates if c.role != "client" and c.can_host]
    if not serving:
        return None
    return max(serving, key=lambda c: (c.vram_bytes, c.node_id)).node_id


def tensor_split(vrams: Sequence[int]) -> tuple[float, ...]:
    """Shares proportional to VRAM in hundredths, each >= 0 and summing to exactly 1
    (largest remainder; on a tie the later node gets the extra hundredth)."""
    if not vrams:
        return ()
    total = sum(vrams)
    if total <= 0:  # nobody says how much: equal shares
        vrams, total = [1] * len(vrams), len(vrams)
    exact = [100 * v / total for v in vrams]
    units = [int(x) for x in exact]
    by_remainder = sorted(range(len(vrams)), key=lambda i: (exact[i] - units[i], i),
                          reverse=True)
    for i in by_remainder[:100 - sum(units)]:
        units[i] += 1
    return tuple(u / 100 for u in units)


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
    return rpc_incompatibility(rpc_version, peer_rpc_version)


def rpc_incompatibility(rpc_version: str, peer_rpc_version: str) -> str | None:
    """Why a peer's ggml-rpc-server cannot serve with ours, or None when it can."""
    if not compatible(rpc_version, peer_rpc_version):
        return f"llama.cpp RPC protocol {peer_rpc_version} differs from ours ({rpc_version})"
    return None


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
