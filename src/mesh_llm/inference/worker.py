"""The worker's side: a ggml-rpc-server that only the elected host reaches, over the mesh.

Every serving node runs ggml-rpc-server on 127.0.0.1. The host's llama-server reaches it
through an RPC tunnel (a mesh stream); this module accepts that tunnel only from the node
we too elect as host (ggml-rpc-server has no authentication of its own), restores the
weight references the host sent (dedupe) from our own file, and, when a leaving worker
stops, waits until the host serves without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from ..changes import ChangeFeed
from ..logutil import RateLimitedLog
from ..mesh.quic import Stream
from ..mesh.tunnel import relay_to_tcp
from ..models.weights import ModelWeights
from .dedupe import DedupeDecoder
from .engine import Engine
from .rpc import RpcServer
from .rpc_wire import ReplyFrames

log = logging.getLogger("mesh_llm.worker")
refusals = RateLimitedLog(log)  # what a peer can make us log at will

HOST_AGREEMENT_S = 5.0  # an RPC tunnel from a peer we do not (yet) see as host waits this long
LEAVE_WAIT_S = 30.0  # a leaving worker waits this long for its host to plan without it


class FileClaim:
    """Our model file as the RPC tunnel uses it: its weight index, and the fingerprint we
    announce while the file has matched every reference a host sent ("" once it has not, or
    without a file). Shared by both roles: a host sends references only to a worker that
    announces the same fingerprint as ours."""

    def __init__(self, weights: ModelWeights | None) -> None:
        self.weights = weights
        self.fingerprint = weights.fingerprint.hex() if weights is not None else ""


class Worker:
    """ggml-rpc-server and the RPC tunnel into it."""

    def __init__(self, *, file: FileClaim, changes: ChangeFeed, client: bool,
                 elected: Callable[[], Collection[str]],
                 on_change: Callable[[], None]) -> None:
        self.file = file
        self.changes = changes
        self.client = client  # a lite client serves nothing
        self._elected = elected  # the hosts this node elects now (one per group it serves)
        self._on_change = on_change  # our server came up or went, or our file proved different
        self.rpc: RpcServer | None = None
        self.connections = 0  # the host's llama-servers connected to us now

    def start(self, engine: Engine, log_path: Path, device: str | None) -> None:
        self.rpc = RpcServer(engine, log_path, self._on_change, device)
        self.rpc.start()

    async def stop(self) -> None:
        if self.rpc is not None:
            await self.rpc.stop()

    @property
    def rpc_version(self) -> str:
        """Our ggml-rpc-server's protocol version ("" until it has answered)."""
        version = self.rpc.version if self.rpc is not None else None
        return str(version) if version is not None else ""

    @property
    def rpc_ready(self) -> bool:
        return bool(self.rpc and self.rpc.ready)

    def status_json(self) -> dict[str, Any] | None:
        if self.rpc is None:
            return None
        return {"pid": self.rpc.pid, "port": self.rpc.port, "ready": self.rpc.ready}

    async def serve_rpc_tunnel(self, peer_id: str, stream: Stream) -> None:
        """The host's llama-server reaching our ggml-rpc-server: only the node that we too
        elect as host may (ggml-rpc-server has no authentication of its own)."""
        if not await self.agrees_host(peer_id):
            refusals.warning(f"rpc {peer_id}", "refused an RPC tunnel from %s: it is not the "
                             "host of this node's plan", peer_id[:12])
            stream.abort()
            return
        if self.rpc is None or not self.rpc.ready or self.rpc.port is None:
            stream.abort()
            return
        log.debug("RPC tunnel from host %s", peer_id[:12])
        decoder = DedupeDecoder(self.file.weights if self.file.fingerprint else None)
        self.connections += 1
        await relay_to_tcp(stream, "127.0.0.1", self.rpc.port, decoder=decoder,
                           encoder=ReplyFrames(),
                           on_decode_error=self.weights_differ,
                           on_closed=self._connection_closed)

    def _connection_closed(self) -> None:
        self.connections -= 1
        self.changes.bump()

    async def agrees_host(self, peer_id: str) -> bool:
        """Whether we elect `peer_id` as host of a group we serve in, waiting briefly: its
        tunnel can arrive a moment before the gossip that makes it host here."""
        if self.client:
            return False
        return await self.changes.wait_until(lambda: peer_id in self._elected(),
                                             HOST_AGREEMENT_S)

    def weights_differ(self, err: ValueError) -> None:
        """The host referenced bytes our file does not have: stop claiming the same file,
        so the host re-plans and sends the real bytes."""
        if self.file.fingerprint:
            log.warning("our model file differs from the host's (%s): asking for the real "
                        "bytes", err)
            self.file.fingerprint = ""
            self._on_change()

    def needed(self, node_id: str, host_plan: object) -> bool:
        """Whether the host's serving plan (as it announces it) has us, or one of its
        llama-servers still holds a connection to our ggml-rpc-server."""
        if self.connections > 0:
            return True
        return isinstance(host_plan, dict) and node_id in (host_plan.get("workers") or [])

    async def wait_released(self, node_id: str, host_plan: Callable[[], object]) -> None:
        """Leaving: if the host's llama-server uses us, wait (bounded) until it serves
        without us and its old llama-server has let go of our ggml-rpc-server."""
        if not self.needed(node_id, host_plan()):
            return
        log.info("leaving: waiting for the host to serve without this node (at most %.0f s)",
                 LEAVE_WAIT_S)
        if await self.changes.wait_until(lambda: not self.needed(node_id, host_plan()),
                                         LEAVE_WAIT_S):
            log.info("leaving: the host serves without this node")
        else:
            log.warning("leaving: the host still used this node after %.0f s; leaving anyway",
                        LEAVE_WAIT_S)
