"""Where an API request goes: one pure function, read by the API and by the status alike.

A request that reaches :9337 goes to this node's own llama-server when this node hosts and
it answers, else through the QUIC API tunnel to the elected host when that host says it is
ready. Otherwise there is no upstream, and the reason is what a 503 (and the status) says.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..inference.election import Plan
from ..mesh.peers import PeerInfo

WAITING_FOR_A_HOST = ("no host is ready: this node has no model file (no --model) and waits "
                      "for a node that has one to host the model")


@dataclass(frozen=True)
class Route:
    """One of: this node's llama-server (`port`), the host over the mesh (`peer`), or none
    (`reason` says why)."""

    port: int | None = None  # our llama-server on 127.0.0.1
    peer: str | None = None  # the host's node id, reached through the API tunnel
    reason: str = ""

    @property
    def ready(self) -> bool:
        """Whether a request sent now has somewhere to go."""
        return self.port is not None or self.peer is not None


def route_here(*, llama_port: int | None, held: bool, plan: Plan | None, model: str) -> Route:
    """Where a request for a model this node hosts goes: its serving llama-server, or why
    none answers yet."""
    if held:
        return Route(reason="switching to the new llama-server: the old one finishes its "
                            "streams first")
    if llama_port is not None:
        return Route(port=llama_port)
    if plan is not None and plan.mode == "waiting":
        return Route(reason=plan.reason)
    return Route(reason=f"the model {model} is still loading")


def route(*, node_id: str, host_id: str | None, host: PeerInfo | None, llama_port: int | None,
          held: bool, plan: Plan | None, model: str, file_less: bool) -> Route:
    """Where a request goes now.

    `host` is the elected host's peer entry while it is connected (None when we host, when
    there is no host, or when it is out of reach); `llama_port` is our serving llama-server's
    port while it answers; `held` is a CPU host switching llama-servers (new requests wait
    for the old one to finish its streams); `plan` is our plan when we host; `file_less`:
    this node has no model file and waits for a node that has one.
    """
    if host_id is not None and host_id == node_id:
        return route_here(llama_port=llama_port, held=held, plan=plan, model=model)
    if host is None and file_less:
        return Route(reason=WAITING_FOR_A_HOST)
    if host is None:
        return Route(reason="no host is ready: waiting for a node that serves a model")
    if not host.announcement.ready:
        return Route(reason=f"the host {host.node_id[:12]} is still loading its model")
    return Route(peer=host.node_id)
