"""One mesh-llm node: lifecycle and wiring of home, mesh, election, roles, API and console.

The node reacts to one thing: "something changed" (a peer came or went, llama-server
became ready or died). Each time it recomputes who hosts (inference/candidates.py, a pure
function of the gossiped state) and converges: the host runs llama-server
(inference/hosting.py), every node lends its ggml-rpc-server to the host
(inference/worker.py), and the API sends each request where api/routing.py says.

Many models (issue #15): each --model is a slot with its own Hosting. Every model of the
mesh is a group (inference/groups.py, the same on every node), and every slot, the primary
(first) included, is elected inside its group by candidates.elect_group with the
single-model exclusion rules (RPC protocol, leaving), so all nodes agree on one host per
model; a one-model mesh is one group and behaves as it always did. The API's router
(model_router.py): a request's `model` picks the group, and the group's ready host
serves it, here or through the API tunnel (whose host end reads the request to pick the
model).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import signal
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from .. import __version__
from ..api.localnet import served_hosts
from ..api.proxy import ApiProxy, Upstream
from ..api.serving import EdgeRunner, raise_open_file_limit
from ..changes import ChangeFeed
from ..console.server import Console
from ..errors import UserError
from ..inference.candidates import NodeView, elect_group, leaving_since, view_of
from ..inference.groups import (
    Group,
    NodeOffer,
    OfferedModel,
    group_key,
    local_allocation,
)
from ..inference.hosting import Hosting
from ..inference.offers import offer_of
from ..inference.worker import FileClaim, Worker
from ..mesh.announcement import Announcement, Hosted, Offer
from ..mesh.identity import Identity, is_node_id
from ..mesh.mesh import Mesh, MeshJoinError
from ..mesh.peers import PeerEvent, PeerInfo
from ..mesh.protocol import StreamType
from ..mesh.quic import Stream
from ..mesh.tunnel import stream_connect
from ..models.split import model_stem
from .config import NodeConfig
from .groups_view import MeshModels
from .home import HomeDir
from .route import WAITING_FOR_A_HOST, Route, route
from .router import MeshRouter
from .startup import Setup, check_setup, serve_spec
from .status import node_status

log = logging.getLogger("mesh_llm.node")

JOIN_TIMEOUT_S = 15.0
COUNTS_EVERY_S = 5.0  # request counts are gossiped at most this often


@dataclass
class ModelSlot:
    """One --model of this node: its file, what it offers, and its llama-server(s)."""

    setup: Setup
    file: FileClaim
    hosting: Hosting
    offer: OfferedModel

    @property
    def key(self) -> str:
        return group_key(self.offer)


class Node:
    """The node's state and its lifecycle; decisions live in candidates.py, election.py and
    routing.py, the roles' work in hosting.py and worker.py."""

    def __init__(self, config: NodeConfig, setup: Setup) -> None:
        self.config = config
        self.setup = setup
        self.model = setup.model
        self.home = HomeDir(config.home)
        self.changes = ChangeFeed()
        self.identity: Identity | None = None
        self.mesh: Mesh | None = None
        self.host_id: str | None = None
        self.excluded: dict[str, str] = {}  # peer id → why it cannot serve with us
        self.join_error: str | None = None  # --standalone after every --join failed
        self.leaving = False
        self._stopping = False
        self._following = "starting"  # our state while another node hosts (or none does)
        self._remembered: list[tuple[str, list[str]]] = []
        self.file = FileClaim(setup.weights)
        self.worker = Worker(file=self.file, changes=self.changes, client=config.client,
                             elected=self.elected, on_change=self._local_changed)
        self.hosting = Hosting(spec=serve_spec(config, setup), logs=self.home.logs, file=self.file,
                               peer=self.peer, open_stream=self.open_stream,
                               changes=self.changes, announce=self._announce, spawn=self._spawn)
        # Many models in one mesh (issue #15): one slot per --model, the primary first.
        self.slots: list[ModelSlot] = []
        if setup.model is not None:
            self.slots.append(ModelSlot(setup, self.file, self.hosting, _offered(setup)))
        for extra in setup.extras:
            assert extra.model is not None
            file = FileClaim(extra.weights)
            hosting = Hosting(spec=serve_spec(config, extra), logs=self.home.logs, file=file,
                              peer=self.peer, open_stream=self.open_stream,
                              changes=self.changes, announce=self._announce, spawn=self._spawn,
                              log_name=f"llama-server-{model_stem(extra.model.name)}.log")
            self.slots.append(ModelSlot(extra, file, hosting, _offered(extra)))
        self.mesh_models = MeshModels(config.trust_hosts)
        self.left_out: dict[str, str] = {}  # our model name → why we give it nothing
        self.started_at = time.time()
        self._gossiped_counts: dict[str, int] = {}
        allowed = served_hosts(listen_all=config.listen_all, advertise=config.advertise)
        self.router = MeshRouter(self)
        self.api = ApiProxy(self.upstream, api_key=config.api_key, allowed=allowed,
                            changes=self.changes, router=self.router)
        # The console shows the invite token: it needs the API's key whenever there is one.
        self.console = Console(self.status, self.changes, self.api, api_key=config.api_key,
                               allowed=allowed)
        self._counts_task: asyncio.Task[None] | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, kept until done so shutdown can wait for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def prepare(self) -> None:
        """Take the home (one node per home) and our identity in it."""
        self.home.acquire()
        self.identity = Identity.load_or_create(self.home.path)
        log.info("node id: %s", self.identity.node_id)

    # --- what the API, the console and the roles read ---
    @property
    def node_id(self) -> str:
        return self.identity.node_id if self.identity else ""

    @property
    def state(self) -> str:
        if self._stopping:
            return "stopping"
        return self.hosting.state if self.hosting.active else self._following

    def role(self) -> str:
        if self.config.client:
            return "client"
        return "host" if self.host_id == self.node_id else "worker"

    @property
    def model_less(self) -> bool:
        """A worker without a model file: it serves whatever model the mesh's host serves."""
        return not self.config.client and self.model is None

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

    def route(self) -> Route:
        """Where an API request goes now (the status reads the same answer)."""
        return route(node_id=self.node_id, host_id=self.host_id, host=self.peer(self.host_id),
                     llama_port=self.hosting.serving_port(), held=self.hosting.held,
                     plan=self.hosting.plan, model=self.model.name if self.model else "",
                     model_less=self.model_less)

    def upstream(self) -> Upstream:
        where = self.route()
        if where.port is not None:
            return self.hosting.upstream(where.port)
        if where.peer is not None:
            opener = functools.partial(self.open_stream, where.peer, StreamType.HTTP_TUNNEL)
            return Upstream(stream_connect(opener), key=f"mesh {where.peer}")
        return Upstream(None, where.reason)

    def status(self) -> dict[str, Any]:
        return node_status(self)

    def _models(self) -> list[str]:
        """What we announce we serve: our file's model; without a file, the host's model
        (we lend our device to it), or nothing while there is no host."""
        if self.model is not None:
            return [self.model.name]
        group = self.mesh_models.group(self.mesh_models.joined) if self.model_less else None
        return [group.name] if group is not None and group.host is not None else []

    def _announcement(self) -> Announcement:
        hosting = self.host_id == self.node_id
        llama = self.hosting.llama
        ready = bool(llama and llama.ready and hosting and not self.hosting.held)
        return Announcement(
            self.node_id,
            plan=self.hosting.plan_json() if hosting else None,
            draft=self.hosting.draft_name() if hosting else None,
            role=self.role(),
            vram_bytes=0 if self.config.client else self.setup.vram_bytes,
            models=tuple(self._models()),
            model_file=self.model is not None,
            rpc_version=self.worker.rpc_version,
            version=__version__,
            ready=ready,
            rpc_ready=self.worker.rpc_ready,
            model_fingerprint=self.file.fingerprint,
            leaving=self.leaving,
            offers=tuple(Offer(s.offer.name, s.offer.fingerprint, s.offer.size_bytes)
                         for s in self.slots),
            hosted=self.hosted(),
            joined=self.mesh_models.joined,
            requests_per_min=tuple(self._gossiped_counts.items()),
            started_at=self.started_at,
        )

    def hosted(self) -> tuple[Hosted, ...]:
        """Every model we host, with its plan and whether its llama-server answers."""
        out = []
        for i, slot in enumerate(self.slots):
            hosting = slot.hosting
            if not (self.host_id == self.node_id if i == 0 else hosting.active):
                continue
            llama = hosting.llama
            ready = bool(llama and llama.ready and not hosting.held)
            out.append(Hosted(slot.key, hosting.plan_json(), ready))
        return tuple(out)

    def _announce(self) -> None:
        """Tell the mesh what we are now, and wake whatever waits for a change."""
        if self.mesh is not None:
            self.mesh.update_announcement(self._announcement())
        self.changes.bump()

    # --- lifecycle ---
    async def _serve(self, app: web.Application, port: int, what: str, flag: str) -> None:
        if not self._runners:
            raise_open_file_limit()  # every connection is a file descriptor
        runner = EdgeRunner(app, handler_cancellation=True, access_log=None,
                            shutdown_timeout=2.0)
        await runner.setup()
        self._runners.append(runner)
        try:
            await web.TCPSite(runner, self.config.listen_host, port).start()
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"{what} port {port} is already in use: stop what holds it "
                                f"or choose another with {flag}") from None
            raise UserError(f"cannot listen on {what} port {port}: {err.strerror}") from None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then leave the mesh and stop every child."""
        try:
            await self._serve(self.api.app(), self.config.api_port, "API", "--port")
            if self.config.console_port is not None:
                await self._serve(self.console.app(), self.config.console_port, "console",
                                  "--console PORT")
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
            raise UserError(_bind_problem(err, cfg.bind_host, cfg.bind_port)) from None
        self.mesh.on_addrs = functools.partial(self.home.save_addrs, self.node_id)
        self.mesh.on_addrs(self.mesh.addrs)  # and observed ones later, for `mesh-llm invite`
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
                            "model file)" if self.model_less else "serving alone (--standalone)")
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
                log.warning("%s", err)

    def _local_changed(self) -> None:
        """Our ggml-rpc-server came up or went down, or our file proved different: tell the
        mesh, and re-check who can split with us (our RPC version is known only now)."""
        if self.mesh is not None:
            self._reconcile()

    def _offers(self) -> list[NodeOffer]:
        """What every node brings to the mesh (ourselves first), for groups.py. We plan
        with ourselves while leaving (a host keeps serving while the peers, who plan
        without us, start the next one); our other models stand down (_converge_extras)."""
        me = NodeOffer(self.node_id, 0 if self.config.client else self.setup.vram_bytes,
                       models=tuple(s.offer for s in self.slots), file_less=self.model_less,
                       client=self.config.client, joined=self.mesh_models.joined,
                       requests_per_min=self.router.requests.counts(),
                       started_at=self.started_at)
        return [me, *(offer_of(p.announcement, p.rtt_ms) for p in self.connected_peers())]

    def _regroup(self) -> None:
        self.mesh_models.regroup(self._offers(), self.model_less)

    def _reconcile(self) -> None:
        """Converge on the current truth: who hosts, what runs here, what we announce."""
        if self._stopping:
            return  # peers leaving because we leave must not start a new plan
        self._regroup()
        me = None if self.config.client else NodeView(
            self.node_id, "worker", self.setup.vram_bytes, models=tuple(self._models()),
            model_file=self.model is not None, fingerprint=self.file.fingerprint,
            rpc_version=self.worker.rpc_version)
        views = [view_of(p) for p in self.connected_peers()]
        self.hosting.leaving_since = leaving_since(self.hosting.leaving_since, views,
                                                   asyncio.get_running_loop().time())
        outcome = elect_group(me, views, self._primary_group())
        self.excluded = dict(outcome.excluded)
        host_id = outcome.host_id
        if host_id != self.host_id:
            if host_id is None and self.model_less:
                log.warning("%s", WAITING_FOR_A_HOST)
            else:
                log.info("host: %s", "this node" if host_id == self.node_id else
                         (host_id[:12] if host_id else "none"))
            self.host_id = host_id
        # Leaving, a host keeps serving until the next host is ready; a node that does not
        # host yet never starts to on its way out.
        if outcome.me is not None and host_id == self.node_id \
                and (self.hosting.active or not self.leaving):
            self.hosting.converge(outcome.me, outcome.workers)
        else:  # no llama-server here; the API goes through a tunnel to the host
            self.hosting.stand_down()
            host = self.peer(host_id)
            ready = host is not None and (host.announcement.ready if not self.model_less else
                                          any(h.fingerprint == self.mesh_models.joined and h.ready
                                              for h in host.announcement.hosted))
            self._following = "running" if ready else "waiting"
        self._converge_extras(me, views)
        self._announce()

    def _primary_group(self) -> Group | None:
        """The group our primary election is about: our first --model's; a file-less
        worker's joined group; on a lite client the mesh's default model."""
        if self.slots:
            return self.mesh_models.group_of(self.slots[0].offer, self.node_id)
        return self.mesh_models.group(self.mesh_models.joined if self.model_less
                                 else self.mesh_models.default_key)

    def _converge_extras(self, me: NodeView | None, views: list[NodeView]) -> None:
        """Host each of our other models whose group elects us (the same group election
        as the primary's); a change in one group converges only that group's llama-server."""
        allocation = local_allocation(self.setup.vram_bytes, [s.offer for s in self.slots])
        self.left_out = {m.name: why for m, why in allocation.left_out}
        for slot in self.slots[1:]:
            hosting = slot.hosting
            hosting.leaving_since = self.hosting.leaving_since
            group = self.mesh_models.group_of(slot.offer, self.node_id)
            outcome = elect_group(
                None if me is None else replace(me, models=(slot.offer.name,),
                                                fingerprint=slot.file.fingerprint),
                views, group)
            if self.leaving or outcome.me is None or outcome.host_id != self.node_id:
                hosting.stand_down()
                continue
            hosting.converge(outcome.me, outcome.workers)

    async def _gossip_counts(self) -> None:
        """Tell the mesh our request counts when they change (at most every few seconds:
        a request must not cost a gossip round)."""
        while not self._stopping:
            await asyncio.sleep(COUNTS_EVERY_S)
            counts = self.router.requests.counts()
            if counts != self._gossiped_counts and not self._stopping:
                self._gossiped_counts = counts
                self._reconcile()  # our own counts count in our groups too; announces

    def _host_plan(self) -> object:
        """The serving plans that may use our ggml-rpc-server, as one: our host's (None
        when we host or there is none), and every other group's plan that names us."""
        host = self.peer(self.host_id) if self.host_id != self.node_id else None
        plan = host.announcement.plan if host is not None else None
        others = [h.plan for p in self.connected_peers() for h in p.announcement.hosted
                  if h.plan is not None and self.node_id in h.plan.get("workers", [])]
        if not others:
            return plan
        workers = [w for each in [plan, *others] if isinstance(each, dict)
                   for w in each.get("workers", [])]
        return {**(plan if isinstance(plan, dict) else {}), "workers": workers}

    async def shutdown(self) -> None:
        if not self._stopping and self.mesh is not None and not self.config.client:
            self.leaving = True  # say so, and wait (bounded) while the host still uses us
            self.mesh.update_announcement(self._announcement())
            await self.worker.wait_released(self.node_id, self._host_plan)
        self._stopping = self.hosting.stopping = True
        for slot in self.slots:
            slot.hosting.stopping = True
        if self._counts_task is not None:
            self._counts_task.cancel()
        if self.mesh is not None:
            await self.mesh.stop()
        for slot in self.slots[1:]:
            await slot.hosting.stop_serving()
        await self.hosting.stop_serving()
        await self.worker.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self.home.release()


def _bind_problem(err: OSError, host: str, port: int) -> str:
    """One line for a QUIC socket that cannot be bound."""
    if err.errno == errno.EADDRINUSE:
        return (f"UDP port {port} on {host} is already in use: stop what holds it or choose "
                "another --bind-port")
    if err.errno == errno.EADDRNOTAVAIL:
        return f"--bind-host {host} is not an address of this machine"
    return f"cannot listen for the mesh on UDP {host}:{port}: {err.strerror or err}"


def _offered(setup: Setup) -> OfferedModel:
    """What a --model of ours offers the mesh: its weights, name and size."""
    assert setup.model is not None
    fingerprint = setup.weights.fingerprint.hex() if setup.weights is not None else ""
    return OfferedModel(fingerprint, setup.model.name, setup.model.size_bytes)


async def run_node(config: NodeConfig) -> None:
    node = Node(config, check_setup(config))
    node.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)
