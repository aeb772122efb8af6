"""What the API's router and the status read of this node: a narrow, read-only Protocol,
so that neither depends on the node's wiring (node.py builds both and satisfies it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..mesh.peers import PeerInfo
from ..mesh.protocol import StreamType
from ..mesh.quic import Stream
from .config import NodeConfig
from .groups_view import MeshModels
from .shares import SharedServers
from .slots import Slot
from .startup import Setup


@dataclass(frozen=True)
class Counters:
    """The node's servers as the status shows them now."""

    api_in_flight: int  # API requests being relayed
    api_queued: int  # API requests waiting for an upstream
    console_streams: int  # open console event streams
    rpc_server: dict[str, Any]  # our ggml-rpc-server's status
    api_requests: dict[str, dict[str, int]]  # requests since start, per model and route
    # requests peers' API tunnels brought us as host since start, per model and route
    api_requests_tunnelled: dict[str, dict[str, int]] = field(default_factory=dict)


class LocalNode(Protocol):
    """This node's models and its view of the mesh, as the router reads them."""

    @property
    def node_id(self) -> str: ...

    @property
    def config(self) -> NodeConfig: ...

    @property
    def setup(self) -> Setup: ...

    @property
    def slots(self) -> Sequence[Slot]:
        """One per --model, the first first; none on a file-less worker or a lite client."""
        ...

    @property
    def mesh_models(self) -> MeshModels:
        """The mesh's groups, its default model and the group a file-less worker joined."""
        ...

    @property
    def joined_host(self) -> str | None:
        """Without slots: the elected host of the group we follow (the one a file-less
        worker joined, a lite client's mesh default)."""
        ...

    @property
    def started_at(self) -> float: ...

    @property
    def shares(self) -> SharedServers:
        """The servers this node shares (--share) and the models they list now."""
        ...

    def peer(self, peer_id: str | None) -> PeerInfo | None:
        """A connected peer by id, else None."""
        ...

    def connected_peers(self) -> list[PeerInfo]: ...

    async def open_stream(self, peer_id: str, kind: StreamType) -> Stream: ...


class RunningNode(LocalNode, Protocol):
    """What the status reads besides: the node's lifecycle and its servers' counters."""

    @property
    def state(self) -> str:
        """"starting" | "waiting" | "loading" | "running" | "stopping"."""
        ...

    @property
    def leaving(self) -> bool: ...

    @property
    def join_error(self) -> str | None:
        """Why every --join failed (serving alone with --standalone), else None."""
        ...

    @property
    def excluded(self) -> Mapping[str, str]:
        """Peer id → why it cannot serve our first model with us."""
        ...

    @property
    def left_out(self) -> Mapping[str, str]:
        """Our model name → why this node gives it no memory."""
        ...

    def invites(self) -> tuple[str, str]:
        """The worker invite (our token) and a client invite; "" when there is none."""
        ...

    def counters(self) -> Counters: ...

    def reach(self) -> dict[str, Any]:
        """How the mesh reaches us and what we relay: the status's `addresses` and `relay`
        (None before the mesh starts)."""
        ...
