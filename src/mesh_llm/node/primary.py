"""This node's first model as the top-level fields of the status and the announcement show
it (model, plan, draft, host, readiness, role): one adapter over the first slot, or over
the group a node without slots follows, so both readers say the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..mesh.peers import PeerInfo
from .route import Route, route
from .slots import Slot
from .view import LocalNode


@dataclass(frozen=True)
class Primary:
    """The first model's facts as this node sees them now."""

    host_id: str | None  # its elected host
    we_host: bool
    role: str  # "host" | "worker" | "client"
    route: Route  # where a request for it goes from here (the API and the status agree)
    slot: Slot | None  # our first slot (None: a file-less worker or a lite client)
    host: PeerInfo | None  # the elected host's peer entry while connected (not ourselves)
    names: tuple[str, ...]  # what we announce serving: our model, else the followed one
    name: str | None  # the host's name for it, else ours
    plan: dict[str, Any] | None  # the serving plan: ours when we host, else the host's
    draft: str | None  # the draft model that serves with it, likewise
    ready: bool  # our own llama-server serves it now


def primary(node: LocalNode) -> Primary:
    """The first model's facts, from the first slot or the group we follow."""
    slot = node.slots[0] if node.slots else None
    host_id = slot.host_id if slot is not None else node.joined_host
    we_host = host_id is not None and host_id == node.node_id
    client = node.config.client
    hosting = slot.hosting if slot is not None else None
    host = None if we_host else node.peer(host_id)
    where = route(node_id=node.node_id, host_id=host_id, host=host,
                  llama_port=hosting.serving_port() if hosting is not None else None,
                  held=hosting.held if hosting is not None else False,
                  plan=hosting.plan if hosting is not None else None,
                  model=slot.name if slot is not None else "",
                  file_less=slot is None and not client)
    if we_host and slot is not None:
        plan, draft = slot.hosting.plan_json(), slot.hosting.draft_name()
        ready = slot.answers()
    else:
        announced = host.announcement.plan if host is not None else None
        plan = announced if isinstance(announced, dict) else None
        draft = host.announcement.draft if host is not None else None
        ready = False
    if slot is not None:
        names: tuple[str, ...] = (slot.name,)
    else:
        seen = node.mesh_models
        group = seen.group(seen.joined) if not client else None
        names = (group.name,) if group is not None and group.host is not None else ()
    shown = host.models[0] if host is not None and host.models else (
        slot.name if slot is not None else None)  # the host's name for it: one model, one name
    return Primary(host_id, we_host, "client" if client else "host" if we_host else "worker",
                   where, slot, host, names, shown, plan, draft, ready)
