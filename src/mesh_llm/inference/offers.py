"""A mesh of many models: the gossiped state as groups.py's inputs, and the
groups as the API's served models. Pure functions, no I/O.

`offer_of` turns an announcement into a `NodeOffer`; `served_models` answers, per group,
who serves it now: the elected host when it announces that model ready, else another of
the group's nodes that may host and does (a group's host and the node that really serves
can differ for a moment while a re-plan settles; the node that says it is ready is the
one to send requests to).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..api.name_match import ServedModel
from ..mesh.announcement import Announcement, Hosted
from .election import Plan
from .groups import Group, NodeOffer, OfferedModel


def offered_models(ann: Announcement) -> tuple[OfferedModel, ...]:
    """The models a node holds files of: its `offers`, or (a peer that announces none)
    its primary model by name and fingerprint."""
    if ann.offers:
        return tuple(OfferedModel(o.fingerprint, o.name, o.size_bytes) for o in ann.offers)
    if ann.model_file and ann.models and ann.role != "client":
        return (OfferedModel(ann.model_fingerprint, ann.models[0], 0),)
    return ()


def offer_of(ann: Announcement, rtt_ms: float | None = None) -> NodeOffer:
    """What a peer brings to the mesh, from its announcement."""
    client = ann.role == "client"
    models = () if client else offered_models(ann)
    return NodeOffer(
        node_id=ann.node_id, vram_bytes=0 if client else ann.vram_bytes, models=models,
        file_less=not client and not models, client=client, leaving=ann.leaving,
        joined=ann.joined, requests_per_min=dict(ann.requests_per_min), rtt_ms=rtt_ms,
        started_at=ann.started_at)


def served_model(group: Group, plan: Plan, ready: bool, why_not_ready: str = "") -> ServedModel:
    """The API's view of a group: the wiring adds what only the host knows (readiness)."""
    return ServedModel(group.name, group.key, group.aliases, ready,
                       why_not_ready or plan.reason, plan.mode, group.host, group.nodes)


def ready_host(group: Group, hosted: Mapping[str, Mapping[str, Hosted]]) -> str | None:
    """The node that serves `group` now: its elected host when that announces it ready,
    else the first (by id) of the group's nodes that may host and does; None when none
    does. A claim from any other node is ignored: hosting sees every prompt, and a peer
    is granted it by the group's rule (--trust-hosts included), not by saying so."""
    may_host = {c.node_id for c in group.candidates if c.can_host}

    def ready(node: str) -> bool:
        entry = hosted.get(node, {}).get(group.key)
        return node in may_host and entry is not None and entry.ready
    if group.host is not None and ready(group.host):
        return group.host
    return next((n for n in sorted(hosted) if ready(n)), None)


def served_models(groups: Sequence[Group], hosted: Mapping[str, Mapping[str, Hosted]],
                  force_split: bool = False) -> list[ServedModel]:
    """The API's view of every group: who serves it, how, and why not when nobody does.
    `hosted` maps node id → group key → what that node announces hosting."""
    out = []
    for group in groups:
        serving = ready_host(group, hosted)
        host = serving or group.host
        entry = hosted.get(host or "", {}).get(group.key)
        plan = entry.plan if entry is not None else None
        mode = str(plan.get("mode", "")) if plan else group.plan(force_split).mode
        why = ""
        if serving is None:
            if entry is not None and plan is not None and plan.get("mode") == "waiting":
                why = str(plan.get("reason", "")) or "its host waits for more VRAM"
            elif entry is not None:
                why = f"its host {host[:12] if host else ''} is still loading it"
            elif group.host is None or group.plan(force_split).mode == "waiting":
                why = group.plan(force_split).reason
            else:
                why = f"its host {group.host[:12]} has not started it yet"
        out.append(ServedModel(group.name, group.key, group.aliases, serving is not None,
                               why, mode, host, group.nodes))
    return out
