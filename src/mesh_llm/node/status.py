"""The status JSON (console contract): one pure function of the node's facts, and the
view that gathers those facts from a running node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    from .node import Node


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


def models_status(node: Node) -> dict[str, Any]:
    """Every model of the mesh (issue #15; the console's contract): its host, plan,
    readiness, nodes and requests in the last minute; the mesh's default model; a
    file-less worker's group and why; our models left out and why."""
    served = {m.fingerprint: m for m in node.router.served()}
    hosted = node.router.hosted_by()
    seen = node.mesh_models
    models = []
    for group in seen.groups:
        m = served.get(group.key)
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
    joined = seen.group(seen.joined) if node.model_less else None
    return {
        "models": models,
        "default_model": default,
        "joined": {"model": joined.name, "fingerprint": joined.key,
                   "reason": seen.joined_reason} if joined is not None else None,
        "models_left_out": dict(node.left_out),
    }


def node_status(node: Node) -> dict[str, Any]:
    """The status of a running node. Its host, readiness and reason come from the same
    route the API takes, so the status and the API never disagree."""
    hosting, worker, mesh, model, cfg = node.hosting, node.worker, node.mesh, node.model, \
        node.config
    host = node.peer(node.host_id)
    we_host = node.host_id == node.node_id
    if we_host:
        plan = hosting.plan_json()
    else:
        announced = host.announcement.plan if host else None
        plan = announced if isinstance(announced, dict) else None
    where = node.route()
    token = mesh.token() if mesh is not None else ""
    reason = None if where.ready else where.reason
    if node.join_error is not None:
        reason = f"serving alone (--standalone): {node.join_error}"
    return build_status(
        node_id=node.node_id,
        token=token,
        role=node.role(),
        host_id=node.host_id,
        llama_ready=where.ready,
        model=host.models[0] if host is not None and host.models else (
            model.name if model else None),  # the host's name for it: one model, one name
        draft=hosting.draft_name() if we_host else (
            host.announcement.draft if host else None),
        api_port=cfg.api_port,
        console_port=cfg.console_port,
        vram_bytes=node.setup.vram_bytes,
        peers=[p.to_status() for p in node.connected_peers()],
        plan=plan,
        state=node.state,
        extra={
            "model_file": str(model.path) if model else None,
            "model_bytes": model.size_bytes if model else None,
            "model_files": [str(p) for p in model.paths] if model else [],
            "reason": reason,
            "invites": {"worker": token or None,
                        "client": (mesh.invite("client") or None) if mesh is not None else None},
            "addresses": mesh.addresses() if mesh is not None else None,
            "relay": mesh.relay_stats() if mesh is not None else None,
            "trusted_hosts": sorted(cfg.trust_hosts) if cfg.trust_hosts is not None else None,
            "engine": {"backend": node.setup.backend, "devices": [
                {"name": d.name, "description": d.description,
                 "total_bytes": d.total_bytes} for d in node.setup.devices]},
            "llama_server": hosting.llama_json(),
            "api_tunnel": None if node.host_id in (None, node.node_id) else {
                "host": node.host_id, "label": "QUIC · HTTP", "description": "API tunnel"},
            "rpc_server": worker.status_json(),
            "rpc_tunnel": hosting.rpc_tunnel_stats(),
            "excluded_peers": dict(node.excluded),
            "api_in_flight": node.api.in_flight,
            "api_queued": node.api.queued,
            "llama_servers": hosting.generations_json(),
            "leaving": node.leaving,
            "console_streams": node.console.open_streams,
            **models_status(node),
        },
    )
