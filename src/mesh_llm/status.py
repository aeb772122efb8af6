"""The status JSON (console contract): one pure function of the node's facts."""

from __future__ import annotations

from typing import Any

from . import __version__
from .inference.election import Plan


def plan_json(plan: Plan | None, rpc: list[str]) -> dict[str, Any] | None:
    if plan is None:
        return None
    return {"mode": plan.mode, "host": plan.host, "workers": list(plan.workers), "rpc": rpc,
            "tensor_split": list(plan.tensor_split), "reason": plan.reason}


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
