"""Which serving plans use this node's ggml-rpc-server: a leaving worker waits (bounded)
until none does, so that no host loses a device mid-request."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..mesh.peers import PeerInfo


def plans_using(node_id: str, host_plan: Any, peers: Iterable[PeerInfo]) -> object:
    """Our host's plan (`host_plan`; None when we host or none does) and every other
    group's plan that names us as a worker, as one plan whose workers are all of theirs."""
    others = [h.plan for p in peers for h in p.announcement.hosted
              if h.plan is not None and node_id in h.plan.get("workers", [])]
    if not others:
        return host_plan
    workers = [w for each in [host_plan, *others] if isinstance(each, dict)
               for w in each.get("workers", [])]
    return {**(host_plan if isinstance(host_plan, dict) else {}), "workers": workers}
