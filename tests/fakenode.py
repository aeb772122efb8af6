"""A node as node/view.py's RunningNode shows it, for the router's and the status's unit
tests: real slots (a real Hosting each, with a stand-in llama-server process), real groups
from the peers' announcements, and peers the test sets."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mesh_llm.changes import ChangeFeed
from mesh_llm.inference.election import Plan
from mesh_llm.inference.generation import Generation
from mesh_llm.inference.groups import NodeOffer, OfferedModel
from mesh_llm.inference.hosting import Hosting
from mesh_llm.inference.offers import offer_of
from mesh_llm.inference.service import ServeSpec
from mesh_llm.inference.worker import FileClaim
from mesh_llm.mesh.announcement import Announcement
from mesh_llm.mesh.peers import PeerInfo
from mesh_llm.mesh.protocol import StreamType
from mesh_llm.mesh.quic import Stream
from mesh_llm.models.resolve import ResolvedModel
from mesh_llm.node.config import NodeConfig
from mesh_llm.node.groups_view import MeshModels
from mesh_llm.node.router import shared_by
from mesh_llm.node.shares import SharedServers
from mesh_llm.node.slots import Slot
from mesh_llm.node.startup import Setup
from mesh_llm.node.view import Counters

GB = 10**9
ME = "e" * 64


@dataclass(frozen=True)
class _LlamaPlan:
    rpc: tuple[str, ...] = ()


@dataclass
class StandInLlama:
    """What Hosting reads of a running llama-server."""

    port: int
    ready: bool = True
    pid: int = 4242
    load_seconds: float = 1.5
    plan: _LlamaPlan = _LlamaPlan()


class FakeNode:
    """This node with `models` (none: a file-less worker, or a client) among `peers`."""

    def __init__(self, home: Path, *models: OfferedModel, peers: tuple[Announcement, ...] = (),
                 client: bool = False, split: bool = False, vram_bytes: int = 4 * GB) -> None:
        self.node_id = ME
        self.config = NodeConfig(model=models[0].name if models else None, home=home,
                                 client=client, split=split, console_port=3131)
        self.setup = Setup(vram_bytes=0 if client else vram_bytes, backend="cpu")
        self.changes = ChangeFeed()
        self.slots = [self._slot(m, home) for m in models]
        self.mesh_models = MeshModels(None)
        self.peers = {a.node_id: PeerInfo(a.node_id, a) for a in peers}
        self.joined_host: str | None = None
        self.started_at = 1000.0
        self.state = "running"
        self.leaving = False
        self.join_error: str | None = None
        self.excluded: dict[str, str] = {}
        self.left_out: dict[str, str] = {}
        self.shares = SharedServers((), on_change=lambda: None)  # --share: none
        self.regroup()

    def _slot(self, offer: OfferedModel, home: Path) -> Slot:
        model = ResolvedModel(offer.name, home / f"{offer.name}.gguf", offer.size_bytes)
        setup = replace(self.setup, model=model)
        file = FileClaim(None)
        hosting = Hosting(spec=ServeSpec(model, None, self.setup.vram_bytes), logs=home,
                          file=file, peer=self.peer, open_stream=self.open_stream,
                          changes=self.changes, announce=lambda: None,
                          spawn=lambda coro: coro.close())
        return Slot(setup, file, hosting, offer)

    def regroup(self) -> None:
        """The mesh's groups from every offer (ours first); each slot's host is its
        group's, and a node without slots follows the joined group or the default."""
        file_less = not self.slots and not self.config.client
        me = NodeOffer(self.node_id, self.setup.vram_bytes,
                       tuple(s.offer for s in self.slots), file_less=file_less,
                       client=self.config.client, joined=self.mesh_models.joined)
        offers = [me, *(offer_of(p.announcement) for p in self.peers.values())]
        self.mesh_models.regroup(offers, file_less)
        self.mesh_models.reshare(shared_by(self))  # as the node does on every change
        for slot in self.slots:
            slot.group = self.mesh_models.group_of(slot.offer, self.node_id)
            slot.host_id = slot.group.host if slot.group is not None else None
        seen = self.mesh_models
        followed = seen.group(seen.joined if file_less else seen.default_key)
        self.joined_host = followed.host if followed is not None else None

    def host(self, index: int, port: int | None = 4100, held: bool = False,
             plan: Plan | None = None) -> Slot:
        """Slot `index` hosted here: its llama-server on `port` (None: still loading)."""
        slot = self.slots[index]
        hosting = slot.hosting
        hosting.active = True
        hosting.held = held
        hosting.plan = plan or Plan("solo", self.node_id, tensor_split=(1.0,))
        if plan is None or plan.mode != "waiting":
            gen = Generation(hosting.plan)
            gen.llama = StandInLlama(port or 0, ready=port is not None)  # type: ignore[assignment]
            hosting.current = gen
        hosting.state = "running" if port is not None else "loading"
        slot.host_id = self.node_id
        return slot

    # --- view.RunningNode ---
    def peer(self, peer_id: str | None) -> PeerInfo | None:
        return self.peers.get(peer_id) if peer_id is not None else None

    def connected_peers(self) -> list[PeerInfo]:
        return list(self.peers.values())

    async def open_stream(self, peer_id: str, kind: StreamType) -> Stream:
        raise ConnectionError(f"no mesh in this test ({peer_id[:12]}, {kind})")

    def invites(self) -> tuple[str, str]:
        return "worker-token", "client-invite"

    def reach(self) -> dict[str, Any]:
        return {"addresses": {"bound": ["0.0.0.0:4000"], "lan": [], "observed": []},
                "relay": None}

    def counters(self) -> Counters:
        return Counters(api_in_flight=1, api_queued=0, console_streams=2,
                        rpc_server={"state": "running"},
                        api_requests={"fp-model": {"/v1/chat/completions": 3}})
