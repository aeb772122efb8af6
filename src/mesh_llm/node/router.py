"""The API's router over the mesh's models (api/proxy.py `ModelRouter`): which model a
request names, where that model runs now, and which of our llama-servers a tunnelled
request is for.

It reads the node through view.LocalNode (groups, slots, peers' announcements) and decides
nothing the node does not already know: names are matched by api/name_match.py, the served
models are inference/offers.py's view of the groups.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..api.name_match import ApiError, ServedModel, models_listing, resolve, resolve_in_mesh
from ..api.proxy import Upstream
from ..api.request_counts import RequestCounter, RouteCounts
from ..api.shared import SHARED_KEY_PREFIX, merge_served, shared_name
from ..api.tunnel_gate import ApiRequestGate, TunnelledRequest
from ..inference.hosting import read_tunnelled_request, refusals
from ..inference.offers import ready_host, served_models
from ..mesh.announcement import Hosted
from ..mesh.protocol import StreamType
from ..mesh.quic import Stream
from ..mesh.tunnel import stream_connect
from .primary import primary
from .slots import Slot
from .view import LocalNode

TUNNEL_REQUEST_S = 30.0  # a tunnelled request's head and body must arrive within this
MODEL_HEADER = "X-Mesh-Model"  # names the model (its group key) in a tunnelled request


def hosted_by(node: LocalNode) -> dict[str, dict[str, Hosted]]:
    """Node id → group key → what it announces hosting (ourselves included)."""
    out = {p.node_id: {h.key: h for h in p.announcement.hosted}
           for p in node.connected_peers()}
    out[node.node_id] = {h.key: h for s in node.slots if (h := s.hosted()) is not None}
    return out


def shared_by(node: LocalNode) -> dict[str, list[str]]:
    """Shared model name → the nodes that share it now (ourselves included). With
    --trust-hosts only trusted peers count: every prompt for a shared model passes
    through the node that shares it, as it does through a host."""
    trusted = node.config.trust_hosts
    out: dict[str, list[str]] = {}
    for peer in node.connected_peers():
        if trusted is None or peer.node_id in trusted:
            for name in peer.announcement.shared:
                out.setdefault(name, []).append(peer.node_id)
    for name in node.shares.names():
        out.setdefault(name, []).append(node.node_id)
    return out


def served(node: LocalNode) -> list[ServedModel]:
    """Every model of the mesh as the API sees it now: the GGUF groups, then the shared
    models (api/shared.merge_served)."""
    gguf = served_models(node.mesh_models.groups, hosted_by(node), node.config.split)
    return merge_served(gguf, shared_by(node), node.node_id)


class MeshRouter:
    """Routes API requests by their `model` over the node's view of the mesh."""

    def __init__(self, node: LocalNode) -> None:
        self._node = node
        self.requests = RequestCounter()  # requests per model that reached this node's API
        self.tunnelled = RouteCounts()  # requests peers' API tunnels brought us, as host

    def served(self) -> list[ServedModel]:
        return served(self._node)

    def resolve(self, requested: object) -> ServedModel | ApiError:
        node = self._node
        seen = node.mesh_models
        return resolve_in_mesh(requested, self.served(), seen.default_key,
                               seen.departed.values(), no_model=primary(node).route.reason)

    def upstream_for(self, model: ServedModel) -> Upstream:
        """Our llama-server when we host the model, else its ready host over the mesh."""
        node = self._node
        key = model.key
        if model.kind == "shared":
            return self._shared_upstream(model)
        slot = next((s for s in node.slots if s.key == key and s.hosting.active), None)
        if slot is not None:
            where = slot.route_here()
            if where.port is not None:
                return slot.hosting.upstream(where.port)
            return Upstream(None, where.reason)
        group = node.mesh_models.group(key)
        peer = ready_host(group, hosted_by(node)) if group is not None else None
        if peer is None or peer == node.node_id or node.peer(peer) is None:
            now = next((m for m in self.served() if m.key == key), None)
            why = now.why_not_ready if now is not None else "it left the mesh"
            return Upstream(None, f"model {model.name} has no ready host: {why}")
        opener = functools.partial(node.open_stream, peer, StreamType.HTTP_TUNNEL)
        return Upstream(stream_connect(opener), key=f"mesh {peer} {key}",
                        headers={MODEL_HEADER: key})

    def _shared_upstream(self, model: ServedModel) -> Upstream:
        """A shared model: its server when we share it, else the first node (by id) that
        shares it now, through the API tunnel."""
        node = self._node
        name = shared_name(model)
        sharing = shared_by(node).get(name, [])
        if node.node_id in sharing:
            return node.shares.upstream(name)
        peer = next((p for p in sorted(sharing) if node.peer(p) is not None), None)
        if peer is None:
            return Upstream(None, f"model {model.name} left the mesh: no node shares it now")
        opener = functools.partial(node.open_stream, peer, StreamType.HTTP_TUNNEL)
        return Upstream(stream_connect(opener), key=f"mesh {peer} {model.key}",
                        headers={MODEL_HEADER: model.key})

    def listing(self) -> dict[str, Any]:
        return models_listing(self.served(), self._node.mesh_models.default_key,
                              int(self._node.started_at))

    def unhealthy(self) -> ApiError | None:
        default = self.resolve(None)
        if isinstance(default, ServedModel) and self.upstream_for(default).connect is not None:
            return None
        if any(m.ready and self.upstream_for(m).connect is not None for m in self.served()):
            return None
        if isinstance(default, ApiError):
            return default
        return ApiError(503, self.upstream_for(default).reason)

    def count(self, model: ServedModel) -> None:
        if model.kind != "shared":  # gossiped for the groups' choices; shared ones have none
            self.requests.add(model.key)

    async def serve_http_tunnel(self, peer_id: str, stream: Stream) -> None:
        """A peer's API request: read it (through the gate), then relay it to the
        llama-server of the model it names (its X-Mesh-Model key, else its `model`)."""
        hosting = [s for s in self._node.slots if s.hosting.active]
        shares = self._node.shares
        if not hosting and not shares.names():
            refusals.warning(f"http {peer_id}", "refused an API tunnel from %s: this node is "
                             "not the host", peer_id[:12])
            stream.abort()
            return
        gate = ApiRequestGate()
        try:
            request = await asyncio.wait_for(read_tunnelled_request(stream, gate),
                                             TUNNEL_REQUEST_S)
        except (ValueError, OSError, TimeoutError, EOFError) as err:
            refusals.warning(f"gate {peer_id}", "refused a tunnelled request from %s: %s",
                             peer_id[:12], err or "timeout")
            stream.abort()
            return
        key = request.head.header(MODEL_HEADER)
        if key is not None and key.startswith(SHARED_KEY_PREFIX):
            if request.head.method == "POST":
                self.tunnelled.add(key[len(SHARED_KEY_PREFIX):], request.head.path)
            await shares.relay_tunnel(peer_id, stream, gate, request, key)
            return
        if not hosting:
            stream.abort()
            return
        slot = self._slot_for(request, hosting)
        if slot is None:  # sent for a model we no longer host: the relay tries again
            stream.abort()
            return
        if request.head.method == "POST":  # the routes the API counts (it answers the GETs)
            self.tunnelled.add(self._name_of(slot), request.head.path)
        await slot.hosting.relay_tunnel(peer_id, stream, gate, request.preface)

    def _name_of(self, slot: Slot) -> str:
        """A hosted model's name as the API shows it (and counts the requests for it)."""
        return next((m.name for m in self.served() if m.key == slot.key), slot.name)

    def _slot_for(self, request: TunnelledRequest, hosting: Sequence[Slot]) -> Slot | None:
        """The model a tunnelled request is for: by its key header (None when we do not
        host that one), else its `model` field among the models we host, else our first
        hosted model."""
        key = request.head.header(MODEL_HEADER)
        if key is not None:
            return next((s for s in hosting if s.key == key), None)
        body = request.body
        try:
            requested = json.loads(body).get("model") if body else None
        except (ValueError, AttributeError, RecursionError):
            requested = None
        if isinstance(requested, str):
            ours = [m for m in self.served() if any(s.key == m.key for s in hosting)]
            found_model = resolve(requested, [replace(m, ready=True) for m in ours])
            if isinstance(found_model, ServedModel):
                return next(s for s in hosting if s.key == found_model.key)
        return hosting[0]
