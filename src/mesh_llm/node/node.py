"""One mesh-llm node: lifecycle and wiring of home, mesh, election, roles, API and console.

The node reacts to one thing: "something changed" (a peer came or went, llama-server
became ready or died). Each time it regroups the mesh's models (inference/groups.py, the
same on every node), decides per model who hosts (reconcile.py, a pure function of the
gossiped state) and converges: each of its slots (slots.py, one per --model) runs
llama-server where it is elected (inference/hosting.py), every node lends its
ggml-rpc-server to the hosts (inference/worker.py), and the API's router (router.py) sends
each request to its model's ready host, here or through the API tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Collection, Coroutine, Mapping
from typing import Any

from aiohttp import web

from .. import __version__
from ..api.localnet import served_hosts
from ..api.proxy import ApiProxy
from ..changes import ChangeFeed
from ..errors import UserError
from ..inference.candidates import NodeView, far_peers, leaving_since, view_of
from ..inference.groups import Group, NodeOffer, local_allocation
from ..inference.hosting import Hosting
from ..inference.offers import offer_of
from ..inference.worker import FileClaim, Worker
from ..logutil import set_log_node
from ..mesh.announcement import Announcement, Offer
from ..mesh.identity import Identity, is_node_id
from ..mesh.mesh import Mesh, MeshJoinError
from ..mesh.peers import PeerEvent, PeerInfo
from ..mesh.protocol import StreamType
from ..mesh.quic import Stream
from ..models.split import model_stem
from .config import NodeConfig
from .groups_view import MeshModels
from .home import HomeDir
from .lending import plans_using
from .listen import bind_problem, serve_http
from .metrics import console_for
from .primary import primary
from .reconcile import Decision, SlotFacts, decide
from .route import WAITING_FOR_A_HOST
from .router import MeshRouter, shared_by
from .shares import SharedServers
from .slots import Slot, offered
from .startup import Setup, check_setup, serve_spec
from .status import node_status
from .view import Counters

log = logging.getLogger("mesh_llm.node")

JOIN_TIMEOUT_S = 15.0
COUNTS_EVERY_S = 5.0  # request counts are gossiped at most this often


class Node:
    """The node's state and its lifecycle; decisions live in reconcile.py, candidates.py
    and election.py, the roles' work in hosting.py and worker.py."""

    def __init__(self, config: NodeConfig, setup: Setup) -> None:
        self.config = config
        self.setup = setup
        self.home = HomeDir(config.home)
        self.changes = ChangeFeed()
        self.identity: Identity | None = None
        self.mesh: Mesh | None = None
        self.excluded: dict[str, str] = {}  # peer id → why it cannot serve with us
        self.join_error: str | None = None  # --standalone after every --join failed
        self.leaving = False
        self._stopping = False
        self._following = "starting"  # our state while another node hosts (or none does)
        self._remembered: list[tuple[str, list[str]]] = []
        self._leaving_since: Mapping[str, float] = {}
        self._far: frozenset[str] = frozenset()  # peers too far for a split (--max-split-rtt)
        # One slot per --model, the first first; none without a model file.
        models = ([setup] if setup.model is not None else []) + list(setup.extras)
        self.slots: list[Slot] = [self._slot(each, first=i == 0)
                                  for i, each in enumerate(models)]
        self.joined_host: str | None = None  # without slots: the followed group's host
        self.worker = Worker(file=self.slots[0].file if self.slots else FileClaim(None),
                             changes=self.changes, client=config.client,
                             elected=self.elected, on_change=self._local_changed)
        self.mesh_models = MeshModels(config.trust_hosts)
        self.left_out: dict[str, str] = {}  # our model name → why we give it nothing
        self.started_at = time.time()
        self._gossiped_counts: dict[str, int] = {}
        allowed = served_hosts(listen_all=config.listen_all, advertise=config.advertise)
        self.shares = SharedServers(config.shares, on_change=self._announce)  # --share
        self.router = MeshRouter(self)
        self.api = ApiProxy(self.router, api_key=config.api_key, allowed=allowed,
                            changes=self.changes)
        self.console = console_for(self, self.api, allowed)  # /metrics, charts: metrics.py
        self._counts_task: asyncio.Task[None] | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _slot(self, setup: Setup, first: bool) -> Slot:
        """A slot for one --model: its file claim and its llama-server(s), each logging to
        its own file (the first to llama-server.log)."""
        assert setup.model is not None
        file = FileClaim(setup.weights)
        log_name = "llama-server.log" if first else \
            f"llama-server-{model_stem(setup.model.name)}.log"
        hosting = Hosting(spec=serve_spec(self.config, setup), logs=self.home.logs, file=file,
                          peer=self.peer, open_stream=self.open_stream, changes=self.changes,
                          announce=self._announce, spawn=self._spawn, log_name=log_name)
        return Slot(setup, file, hosting, offered(setup))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, kept until done so shutdown can wait for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def prepare(self) -> None:
        """Take the home (one node per home) and our identity in it."""
        self.home.acquire()
        self.identity = Identity.load_or_create(self.home.path)
        set_log_node(self.identity.node_id)
        log.info("node id: %s", self.identity.node_id)

    # --- what the API, the console and the roles read (view.RunningNode) ---
    @property
    def node_id(self) -> str:
        return self.identity.node_id if self.identity else ""

    @property
    def state(self) -> str:
        if self._stopping:
            return "stopping"
        first = self.slots[0].hosting if self.slots else None
        return first.state if first is not None and first.active else self._following

    @property
    def file_less(self) -> bool:
        """A worker without a model file: it serves the model of the group it joined."""
        return not self.config.client and not self.slots

    @property
    def host_id(self) -> str | None:
        """The elected host of our first model (or of the group we follow)."""
        return self.slots[0].host_id if self.slots else self.joined_host

    def elected(self) -> Collection[str]:
        """The hosts this node elects now, one per group it serves in (the worker admits
        RPC tunnels from these only)."""
        hosts = {self.host_id} if self.host_id else set()
        hosts.update(g.host for g in self.mesh_models.groups
                     if g.host and g.host != self.node_id and self.node_id in g.nodes)
        return hosts

    def peer(self, peer_id: str | None) -> PeerInfo | None:
        """A connected peer by id, else None."""
        if peer_id is None or self.mesh is None:
            return None
        peer = self.mesh.peers.get(peer_id)
        return peer if peer is not None and peer.connected else None

    def connected_peers(self) -> list[PeerInfo]:
        if self.mesh is None:
            return []
        return [p for p in self.mesh.peers.values() if p.connected]

    async def open_stream(self, peer_id: str, kind: StreamType) -> Stream:
        assert self.mesh is not None
        return await self.mesh.open_stream(peer_id, kind)

    def invites(self) -> tuple[str, str]:
        if self.mesh is None:
            return "", ""
        return self.mesh.token(), self.mesh.invite("client")

    def reach(self) -> dict[str, Any]:
        mesh = self.mesh
        return {"addresses": mesh.addresses() if mesh is not None else None,
                "relay": mesh.relay_stats() if mesh is not None else None,
                "mdns": mesh.lan_status() if mesh is not None else None}

    def counters(self) -> Counters:
        return Counters(self.api.in_flight, self.api.queued, self.console.open_streams,
                        self.worker.status_json(), self.api.requests.to_json(),
                        self.router.tunnelled.to_json())

    def status(self) -> dict[str, Any]:
        return node_status(self)

    def _announcement(self) -> Announcement:
        first = primary(self)
        return Announcement(
            self.node_id,
            plan=first.plan if first.we_host else None,
            draft=first.draft if first.we_host else None,
            role=first.role,
            vram_bytes=0 if self.config.client else self.setup.vram_bytes,
            models=first.names,
            model_file=bool(self.slots),
            rpc_version=self.worker.rpc_version,
            version=__version__,
            ready=first.ready,
            rpc_ready=self.worker.rpc_ready,
            model_fingerprint=self.slots[0].file.fingerprint if self.slots else "",
            leaving=self.leaving,
            offers=tuple(Offer(s.offer.name, s.offer.fingerprint, s.offer.size_bytes)
                         for s in self.slots),
            hosted=tuple(h for s in self.slots if (h := s.hosted()) is not None),
            joined=self.mesh_models.joined,
            requests_per_min=tuple(self._gossiped_counts.items()),
            started_at=self.started_at, shared=self.shares.names(),
        )

    def _announce(self) -> None:
        """Tell the mesh what we are now, and wake whatever waits for a change."""
        self.mesh_models.reshare(shared_by(self))  # the mesh's shared models (their 404s)
        if self.mesh is not None:
            self.mesh.update_announcement(self._announcement())
        self.changes.bump()

    # --- lifecycle ---
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then leave the mesh and stop every child."""
        try:
            cfg = self.config
            await serve_http(self.api.app(), cfg.listen_host, cfg.api_port, "API", "--port",
                             self._runners)
            if cfg.console_port is not None:
                await serve_http(self.console.app(), cfg.listen_host, cfg.console_port,
                                 "console", "--console PORT", self._runners)
            self.shares.start()
            await self._start_mesh()
            self._reconcile()
            self._counts_task = asyncio.get_running_loop().create_task(self._gossip_counts())
            log.info("API: http://127.0.0.1:%d/v1", self.config.api_port)
            if self.config.console_port is not None:
                log.info("console: http://127.0.0.1:%d", self.config.console_port)
            await stop.wait()
        finally:
            await self.shutdown()

    async def _start_mesh(self) -> None:
        assert self.identity is not None
        cfg = self.config
        secret = self.home.mesh_secret(fresh=cfg.new_mesh)
        self.mesh = Mesh(self.identity, secret, self._announcement(),
                         bind_host=cfg.bind_host, bind_port=cfg.bind_port,
                         advertise=list(cfg.advertise), settings=cfg.mesh_settings())
        self.mesh.on_secret = self.home.save_secret  # joined another mesh: keep its secret
        try:
            await self.mesh.start()
        except OSError as err:
            raise UserError(bind_problem(err, cfg.bind_host, cfg.bind_port)) from None
        self.mesh.on_addrs = lambda _addrs: self._remember_reach()
        self._remember_reach()  # and observed addresses later, for `mesh-llm invite`
        self.mesh.peers.add_listener(self._on_peer_event)
        # A lite client needs the API tunnel and nothing else; serving is for members.
        self.mesh.add_stream_handler(StreamType.HTTP_TUNNEL, self.router.serve_http_tunnel,
                                     clients=True)
        self.mesh.add_stream_handler(StreamType.RPC_TUNNEL, self.worker.serve_rpc_tunnel)
        if self.setup.engine is not None:
            self.worker.start(self.setup.engine, self.home.logs / "ggml-rpc-server.log",
                              cfg.device)
        await self._join()

    async def _join(self) -> None:
        """Join through --join (or serve alone with --standalone), redial the peers we knew,
        and print our invites."""
        assert self.mesh is not None
        cfg = self.config
        if cfg.join:
            try:
                joined = await self.mesh.join(list(cfg.join), JOIN_TIMEOUT_S)
                log.info("joined the mesh through node %s", (joined or "")[:12])
            except MeshJoinError as err:
                if cfg.client or not cfg.standalone:
                    raise MeshJoinError(f"{err} (to serve alone anyway, add --standalone)") \
                        from None
                self.join_error = str(err)
                log.warning("%s; %s", err, "waiting for a host to join us (this node has no "
                            "model file)" if self.file_less else "serving alone (--standalone)")
        if not cfg.new_mesh:
            self.mesh.dial_known([(node_id, addrs) for node_id, addrs in self.home.known_peers()
                                  if is_node_id(node_id) and node_id != self.node_id])
        if self.mesh.secret is None:
            log.info("joined with a client invite: this lite client cannot invite others")
            return
        log.info("worker invite (lets a machine join and serve; give it with --join):\n%s",
                 self.mesh.token())
        log.info("client invite (lets a lite client use the API, nothing more):\n%s",
                 self.mesh.invite("client"))

    def _on_peer_event(self, event: PeerEvent) -> None:
        log.info("peer %s %s", event.node_id[:12], event.kind)
        self._remember_peers()
        self._remember_reach()
        self._reconcile()

    def _remember_peers(self) -> None:
        """Keep the mesh's members in the home, so that a restart finds them again."""
        if self.mesh is None or self._stopping:
            return
        members = sorted(self.mesh.member_hints())
        if members and members != self._remembered:
            self._remembered = members
            try:
                self.home.save_peers(members)
            except UserError as err:
                log.warning("%s", err, extra={"event": "peers not saved"})

    def _remember_reach(self) -> None:
        """Our addresses and via members as our invites list them, for `mesh-llm invite`."""
        if self.mesh is not None and not self._stopping:
            self.home.save_reach(self.node_id, self.mesh.addrs, self.mesh.invite_via())

    def _local_changed(self) -> None:
        """Our ggml-rpc-server came up or went down, or our file proved different: tell the
        mesh, and re-check who can split with us (our RPC version is known only now)."""
        if self.mesh is not None:
            self._reconcile()

    def _offers(self) -> list[NodeOffer]:
        """What every node brings to the mesh (ourselves first), for groups.py. We plan
        with ourselves while leaving (a host keeps serving while the peers, who plan
        without us, start the next one)."""
        me = NodeOffer(self.node_id, 0 if self.config.client else self.setup.vram_bytes,
                       models=tuple(s.offer for s in self.slots), file_less=self.file_less,
                       client=self.config.client, joined=self.mesh_models.joined,
                       requests_per_min=self.router.requests.counts(),
                       started_at=self.started_at)
        return [me, *(offer_of(p.announcement, p.rtt_ms) for p in self.connected_peers())]

    def _followed(self) -> Group | None:
        """The group a node without slots follows: a file-less worker's joined group, a
        lite client's mesh default."""
        seen = self.mesh_models
        return seen.group(seen.joined if self.file_less else seen.default_key)

    def _reconcile(self) -> None:
        """Converge on the truth: who hosts each model, what runs here, what we announce."""
        if self._stopping:
            return  # peers leaving because we leave must not start a new plan
        self.mesh_models.regroup(self._offers(), self.file_less)
        for slot in self.slots:
            slot.group = self.mesh_models.group_of(slot.offer, self.node_id)
        me = None if self.config.client else NodeView(
            self.node_id, "worker", self.setup.vram_bytes, rpc_version=self.worker.rpc_version)
        views = [view_of(p) for p in self.connected_peers()]
        self._leaving_since = leaving_since(self._leaving_since, views,
                                            asyncio.get_running_loop().time())
        facts = [SlotFacts(s.name, s.file.fingerprint, s.group, s.hosting.active)
                 for s in self.slots]
        self._far = far_peers(views, self.config.max_split_rtt_ms, self._far)
        self._apply(decide(me, views, facts, self._followed(), self.leaving,
                           self.config.max_split_rtt_ms, self._far))
        self._announce()

    def _apply(self, decision: Decision) -> None:
        """Converge every slot on its action; follow the first model's host otherwise."""
        before = self.host_id
        allocation = local_allocation(self.setup.vram_bytes, [s.offer for s in self.slots])
        self.left_out = {m.name: why for m, why in allocation.left_out}
        for slot, action in zip(self.slots, decision.slots, strict=True):
            slot.host_id = action.host_id
            slot.hosting.leaving_since = self._leaving_since
            if action.serve and action.me is not None:
                slot.hosting.converge(action.me, action.workers)
            else:  # no llama-server here; the API goes through a tunnel to the host
                slot.hosting.stand_down()
        first = decision.first
        self.joined_host = decision.follow.host_id if decision.follow is not None else None
        self.excluded = dict(first.excluded)
        if first.host_id != before:
            if first.host_id is None and self.file_less:
                log.warning("%s", WAITING_FOR_A_HOST, extra={"event": "waiting for a host"})
            else:
                log.info("host: %s", "this node" if first.host_id == self.node_id else
                         (first.host_id[:12] if first.host_id else "none"))
        if not first.serve:
            self._following = "running" if self._host_ready(first.host_id) else "waiting"

    def _host_ready(self, host_id: str | None) -> bool:
        """Whether the first model's host (a peer) announces that model ready."""
        host = self.peer(host_id)
        if self.slots:
            slot = self.slots[0]
            keys = {slot.key, *([slot.group.key] if slot.group is not None else [])}
        else:
            group = self._followed()
            keys = {group.key} if group is not None else set()
        return host is not None and any(h.ready and h.key in keys
                                        for h in host.announcement.hosted)

    async def _gossip_counts(self) -> None:
        """Tell the mesh our request counts when they change (at most every few seconds:
        a request must not cost a gossip round); re-decide when a link's RTT crosses
        --max-split-rtt (RTT samples are no peer events)."""
        while not self._stopping:
            await asyncio.sleep(COUNTS_EVERY_S)
            counts = self.router.requests.counts()
            far = far_peers([view_of(p) for p in self.connected_peers()],
                            self.config.max_split_rtt_ms, self._far)
            if (counts != self._gossiped_counts or far != self._far) and not self._stopping:
                self._gossiped_counts = counts
                self._reconcile()  # our own counts count in our groups too; announces

    def _host_plan(self) -> object:
        """The serving plans that may use our ggml-rpc-server, as one (lending.py)."""
        host = self.peer(self.host_id) if self.host_id != self.node_id else None
        return plans_using(self.node_id, host.announcement.plan if host is not None else None,
                           self.connected_peers())

    async def shutdown(self) -> None:
        if not self._stopping and self.mesh is not None and not self.config.client:
            self.leaving = True  # say so, and wait (bounded) while the host still uses us
            self.mesh.update_announcement(self._announcement())
            await self.worker.wait_released(self.node_id, self._host_plan)
        self._stopping = True
        for slot in self.slots:
            slot.hosting.stopping = True
        if self._counts_task is not None:
            self._counts_task.cancel()
        await self.shares.stop()
        if self.mesh is not None:
            await self.mesh.stop()
        for slot in reversed(self.slots):
            await slot.hosting.stop_serving()
        await self.worker.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self.home.release()


async def run_node(config: NodeConfig) -> None:
    node = Node(config, check_setup(config))
    node.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)
