"""The status JSON (console contract): one pure function of the node's facts, and the
view that gathers those facts from a running node (read through view.RunningNode)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..inference.hosting import tunnel_stats
from .primary import primary
from .router import hosted_by, served, shared_by
from .view import LocalNode, RunningNode


def build_status(
    *,
    node_id: str,
    token: str,
    role: str,
    host_id: str | None,
    llama_ready: bool,
    model: str | None,
    draft: str | None,
    api_port: int,
    console_port: int | None,
    vram_bytes: int,
    peers: list[dict[str, Any]],
    plan: dict[str, Any] | None,
    state: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    serving_peers = [p for p in peers if p["role"] != "client"]
    own_vram = 0 if role == "client" else vram_bytes
    return {
        "node_id": node_id,
        "token": token,
        "role": role,
        "is_host": role == "host",
        "is_client": role == "client",
        "host": host_id,
        "llama_ready": llama_ready,
        "model": model,
        "draft": draft,
        "api_port": api_port,
        "console_port": console_port,
        "vram_bytes": own_vram,
        "mesh_vram_bytes": own_vram + sum(p["vram_bytes"] for p in serving_peers),
        "peers": peers,
        "plan": plan,
        "state": state,
        "version": __version__,
        **(extra or {}),
    }


def models_status(node: LocalNode) -> dict[str, Any]:
    """Every model of the mesh (the console's contract): its host, plan, readiness, nodes
    and requests in the last minute; the mesh's default model; a file-less worker's group
    and why; our models left out and why."""
    by_key = {m.key: m for m in served(node)}
    hosted = hosted_by(node)
    seen = node.mesh_models
    models = []
    for group in seen.groups:
        m = by_key.get(group.key)
        host = m.host if m is not None else group.host
        entry = hosted.get(host or "", {}).get(group.key)
        plan = entry.plan if entry is not None else None
        models.append({
            "name": group.name, "fingerprint": group.key, "aliases": list(group.aliases),
            "host": host, "plan": plan, "ready": bool(m and m.ready),
            "reason": None if m is None or m.ready else m.why_not_ready,
            "nodes": list(group.nodes), "size_bytes": group.size_bytes,
            "requests_per_min": group.requests_per_min,
            "llama_server": next((s.hosting.llama_json() for s in node.slots
                                  if s.key == group.key and s.hosting.active), None),
        })
    default = next((g.name for g in seen.groups if g.key == seen.default_key), None)
    file_less = not node.slots and not node.config.client
    joined = seen.group(seen.joined) if file_less else None
    return {
        "models": models,
        "default_model": default,
        "joined": {"model": joined.name, "fingerprint": joined.key,
                   "reason": seen.joined_reason} if joined is not None else None,
    }


def node_status(node: RunningNode) -> dict[str, Any]:
    """The status of a running node. Its host, readiness and reason come from the same
    route the API takes, so the status and the API never disagree."""
    first, cfg = primary(node), node.config
    slot = first.slot
    hosting = slot.hosting if slot is not None else None
    model = slot.model if slot is not None else None
    token, client_invite = node.invites()
    counters = node.counters()
    reason = None if first.route.ready else first.route.reason
    if node.join_error is not None:
        reason = f"serving alone (--standalone): {node.join_error}"
    return build_status(
        node_id=node.node_id,
        token=token,
        role=first.role,
        host_id=first.host_id,
        llama_ready=first.route.ready,
        model=first.name,
        draft=first.draft,
        api_port=cfg.api_port,
        console_port=cfg.console_port,
        vram_bytes=node.setup.vram_bytes,
        peers=[p.to_status() for p in node.connected_peers()],
        plan=first.plan,
        state=node.state,
        extra={
            "model_file": str(model.path) if model else None,
            "model_bytes": model.size_bytes if model else None,
            "model_files": [str(p) for p in model.paths] if model else [],
            "reason": reason,
            "invites": {"worker": token or None, "client": client_invite or None},
            **node.reach(),
            "trusted_hosts": sorted(cfg.trust_hosts) if cfg.trust_hosts is not None else None,
            "engine": {"backend": node.setup.backend, "devices": [
                {"name": d.name, "description": d.description,
                 "total_bytes": d.total_bytes} for d in node.setup.devices]},
            "llama_server": hosting.llama_json() if hosting is not None else None,
            "api_tunnel": None if first.host_id in (None, node.node_id) else {
                "host": first.host_id, "label": "QUIC · HTTP", "description": "API tunnel"},
            "rpc_server": counters.rpc_server,
            "rpc_tunnel": hosting.rpc_tunnel_stats() if hosting is not None
            else tunnel_stats([]),
            "excluded_peers": dict(node.excluded),
            "api_in_flight": counters.api_in_flight,
            "api_queued": counters.api_queued,
            "api_requests": counters.api_requests,
            "api_requests_tunnelled": counters.api_requests_tunnelled,
            "llama_servers": hosting.generations_json() if hosting is not None else [],
            "leaving": node.leaving,
            "console_streams": counters.console_streams,
            **models_status(node),
            "models_left_out": dict(node.left_out),
            "shared": node.shares.status_json(),  # our --share servers (never their keys)
            "mesh_shared": [{"name": name, "nodes": sorted(nodes)}
                            for name, nodes in sorted(shared_by(node).items())],
        },
    )
