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
model; a one-model mesh is one group and behaves as it always did. The node is the API's
router (api/proxy.py ModelRouter): a request's `model` picks the group, and the group's
ready host serves it, here or through the API tunnel (whose host end reads the request to
pick the model).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import logging
import signal
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from . import __version__
from .api.localnet import served_hosts
from .api.model_names import (
    ApiError,
    ServedModel,
    models_listing,
    resolve,
    resolve_in_mesh,
)
from .api.proxy import ApiProxy, Upstream
from .api.request_counts import RequestCounter
from .api.routing import WAITING_FOR_A_HOST, Route, route
from .api.serving import EdgeRunner, raise_open_file_limit
from .api.tunnel_gate import ApiRequestGate
from .changes import ChangeFeed
from .config import NodeConfig
from .console.server import Console
from .errors import UserError
from .home import HomeDir
from .identity import Identity, is_node_id
from .inference.candidates import NodeView, elect_group, leaving_since, view_of
from .inference.groups import (
    Group,
    NodeOffer,
    OfferedModel,
    choose_group,
    group_key,
    local_allocation,
    mesh_default,
    model_groups,
)
from .inference.hosting import Hosting, read_tunnelled_request, refusals
from .inference.offers import offer_of, ready_host, served_models
from .inference.worker import FileClaim, Worker
from .mesh.announcement import Announcement, Hosted, Offer
from .mesh.mesh import Mesh, MeshJoinError
from .mesh.peers import PeerEvent, PeerInfo
from .mesh.protocol import StreamType
from .mesh.quic import Stream
from .mesh.tunnel import stream_connect
from .models.split import model_stem
from .startup import Setup, check_setup
from .status import node_status

log = logging.getLogger("mesh_llm.node")

JOIN_TIMEOUT_S = 15.0
TUNNEL_REQUEST_S = 30.0  # a tunnelled request's head and body must arrive within this
COUNTS_EVERY_S = 5.0  # request counts are gossiped at most this often
MODEL_HEADER = "X-Mesh-Model"  # names the model (its group key) in a tunnelled request
MAX_DEPARTED = 256


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
        self.hosting = Hosting(config=config, setup=setup, logs=self.home.logs, file=self.file,
                               peer=self.peer, open_stream=self.open_stream,
                               changes=self.changes, announce=self._announce, spawn=self._spawn)
        # Many models in one mesh (issue #15): one slot per --model, the primary first.
        self.slots: list[ModelSlot] = []
        if setup.model is not None:
            self.slots.append(ModelSlot(setup, self.file, self.hosting, _offered(setup)))
        for extra in setup.extras:
            assert extra.model is not None
            file = FileClaim(extra.weights)
            hosting = Hosting(config=config, setup=extra, logs=self.home.logs, file=file,
                              peer=self.peer, open_stream=self.open_stream,
                              changes=self.changes, announce=self._announce, spawn=self._spawn,
                              log_name=f"llama-server-{model_stem(extra.model.name)}.log")
            self.slots.append(ModelSlot(extra, file, hosting, _offered(extra)))
        self.groups: list[Group] = []
        self.default_key: str | None = None
        self.joined = ""  # a file-less worker's group key
        self.joined_reason = ""
        self.left_out: dict[str, str] = {}  # our model name → why we give it nothing
        self.started_at = time.time()
        self.requests = RequestCounter()
        self._gossiped_counts: dict[str, int] = {}
        self._departed: dict[str, str] = {}  # group key → name, of models that left the mesh
        allowed = served_hosts(listen_all=config.listen_all, advertise=config.advertise)
        self.api = ApiProxy(self.upstream, api_key=config.api_key, allowed=allowed,
                            changes=self.changes, router=self)
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
        hosts.update(g.host for g in self.groups
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
            return Upstream(self.hosting.connect(where.port), key=f"tcp 127.0.0.1:{where.port}")
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
        group = self.group(self.joined) if self.model_less else None
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
            hosted=self._hosted(),
            joined=self.joined,
            requests_per_min=tuple(self._gossiped_counts.items()),
            started_at=self.started_at,
        )

    def _hosted(self) -> tuple[Hosted, ...]:
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
                         advertise=list(cfg.advertise))
        self.mesh.on_secret = self.home.save_secret  # joined another mesh: keep its secret
        try:
            await self.mesh.start()
        except OSError as err:
            raise UserError(_bind_problem(err, cfg.bind_host, cfg.bind_port)) from None
        self.home.save_node_info({"node_id": self.node_id, "addrs": self.mesh.addrs})
        self.mesh.peers.add_listener(self._on_peer_event)
        # A lite client needs the API tunnel and nothing else; serving is for members.
        self.mesh.add_stream_handler(StreamType.HTTP_TUNNEL, self._serve_http_tunnel,
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
                       client=self.config.client, joined=self.joined,
                       requests_per_min=self.requests.counts(), started_at=self.started_at)
        return [me, *(offer_of(p.announcement, p.rtt_ms) for p in self.connected_peers())]

    def group(self, key: str | None) -> Group | None:
        return next((g for g in self.groups if g.key == key), None) if key else None

    def _regroup(self) -> None:
        """The mesh's models as groups (issue #15); a file-less worker picks its group."""
        offers = self._offers()
        before = {g.key: g.name for g in self.groups}
        self.groups = model_groups(offers, self.config.trust_hosts)
        if self.model_less:
            key, why = choose_group(offers[0], self.groups, current=self.joined)
            if (key or "") != self.joined:
                log.info("%s", why)
                self.joined = key or ""
                offers[0] = replace(offers[0], joined=self.joined)
                self.groups = model_groups(offers, self.config.trust_hosts)
            self.joined_reason = why if key else ""
        self.default_key = mesh_default(offers, self.groups)
        now = {g.key for g in self.groups}
        for key, name in before.items():
            if key not in now:
                log.info("model %s left the mesh", name)
                self._departed[key] = name
        for key in now:
            self._departed.pop(key, None)
        while len(self._departed) > MAX_DEPARTED:
            del self._departed[next(iter(self._departed))]

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
        if outcome.me is not None and host_id == self.node_id:
            self.hosting.converge(outcome.me, outcome.workers)
        else:  # no llama-server here; the API goes through a tunnel to the host
            self.hosting.stand_down()
            host = self.peer(host_id)
            ready = host is not None and (host.announcement.ready if not self.model_less else
                                          any(h.fingerprint == self.joined and h.ready
                                              for h in host.announcement.hosted))
            self._following = "running" if ready else "waiting"
        self._converge_extras(me, views)
        self._announce()

    def _group_of(self, slot: ModelSlot) -> Group | None:
        """The group a --model of ours is in: by its key, or (its fingerprint failed) the
        group that counts us under its name."""
        group = self.group(slot.key)
        if group is not None or slot.offer.fingerprint:
            return group
        name = slot.offer.name.casefold()
        return next((g for g in self.groups if self.node_id in g.nodes
                     and name in (a.casefold() for a in g.aliases)), None)

    def _primary_group(self) -> Group | None:
        """The group our primary election is about: our first --model's; a file-less
        worker's joined group; on a lite client the mesh's default model."""
        if self.slots:
            return self._group_of(self.slots[0])
        return self.group(self.joined if self.model_less else self.default_key)

    def _converge_extras(self, me: NodeView | None, views: list[NodeView]) -> None:
        """Host each of our other models whose group elects us (the same group election
        as the primary's); a change in one group converges only that group's llama-server."""
        allocation = local_allocation(self.setup.vram_bytes, [s.offer for s in self.slots])
        self.left_out = {m.name: why for m, why in allocation.left_out}
        for slot in self.slots[1:]:
            hosting = slot.hosting
            hosting.leaving_since = self.hosting.leaving_since
            group = self._group_of(slot)
            outcome = elect_group(
                None if me is None else replace(me, models=(slot.offer.name,),
                                                fingerprint=slot.file.fingerprint),
                views, group)
            if self.leaving or outcome.me is None or outcome.host_id != self.node_id:
                hosting.stand_down()
                continue
            hosting.converge(outcome.me, outcome.workers)

    # --- many models: the API's router (api/proxy.py ModelRouter) ---
    def hosted_by(self) -> dict[str, dict[str, Hosted]]:
        """Node id → group key → what it announces hosting (ourselves included)."""
        out = {p.node_id: {h.fingerprint: h for h in p.announcement.hosted}
               for p in self.connected_peers()}
        out[self.node_id] = {h.fingerprint: h for h in self._hosted()}
        return out

    def served(self) -> list[ServedModel]:
        """Every model of the mesh as the API sees it now."""
        return served_models(self.groups, self.hosted_by(), self.config.split)

    def resolve(self, requested: object) -> ServedModel | ApiError:
        return resolve_in_mesh(requested, self.served(), self.default_key,
                               self._departed.values())

    def upstream_for(self, model: ServedModel) -> Upstream:
        key = model.fingerprint
        slot = next((s for s in self.slots if s.key == key), None)
        if slot is not None and slot is self.slots[0]:
            if self.host_id == self.node_id:
                where = self.route()
                if where.port is not None:
                    return Upstream(self.hosting.connect(where.port),
                                    key=f"tcp 127.0.0.1:{where.port}")
                return Upstream(None, where.reason)
        elif slot is not None and slot.hosting.active:
            port = slot.hosting.serving_port()
            if port is not None and not slot.hosting.held:
                return Upstream(slot.hosting.connect(port), key=f"tcp 127.0.0.1:{port}")
            return Upstream(None, f"model {model.name} is still loading on this node")
        group = self.group(key)
        peer = ready_host(group, self.hosted_by()) if group is not None else None
        if peer is None or peer == self.node_id or self.peer(peer) is None:
            now = next((m for m in self.served() if m.fingerprint == key), None)
            why = now.why_not_ready if now is not None else "it left the mesh"
            return Upstream(None, f"model {model.name} has no ready host: {why}")
        opener = functools.partial(self.open_stream, peer, StreamType.HTTP_TUNNEL)
        return Upstream(stream_connect(opener), key=f"mesh {peer} {key}",
                        headers={MODEL_HEADER: key})

    def listing(self) -> dict[str, Any]:
        return models_listing(self.served(), self.default_key, int(self.started_at))

    def count(self, model: ServedModel) -> None:
        self.requests.add(model.fingerprint)

    async def _gossip_counts(self) -> None:
        """Tell the mesh our request counts when they change (at most every few seconds:
        a request must not cost a gossip round)."""
        while not self._stopping:
            await asyncio.sleep(COUNTS_EVERY_S)
            counts = self.requests.counts()
            if counts != self._gossiped_counts and not self._stopping:
                self._gossiped_counts = counts
                self._reconcile()  # our own counts count in our groups too; announces

    async def _serve_http_tunnel(self, peer_id: str, stream: Stream) -> None:
        """A peer's API request: read it (through the gate), then relay it to the
        llama-server of the model it names (its X-Mesh-Model key, else its `model`)."""
        hosting = [s for s in self.slots if s.hosting.active]
        if len(self.slots) <= 1 or not hosting:
            await self.hosting.serve_http_tunnel(peer_id, stream)  # one model: as ever
            return
        gate = ApiRequestGate()
        try:
            preface = await asyncio.wait_for(read_tunnelled_request(stream, gate),
                                             TUNNEL_REQUEST_S)
        except (ValueError, OSError, TimeoutError, EOFError) as err:
            refusals.warning(f"gate {peer_id}", "refused a tunnelled request from %s: %s",
                             peer_id[:12], err or "timeout")
            stream.abort()
            return
        slot = self._slot_for(preface, hosting)
        if slot is None:  # sent for a model we no longer host: the relay tries again
            stream.abort()
            return
        await slot.hosting.relay_tunnel(peer_id, stream, gate, preface)

    def _slot_for(self, request: bytes, hosting: list[ModelSlot]) -> ModelSlot | None:
        """The model a tunnelled request is for: by its key header (None when we do not
        host that one), else its `model` field among the models we host, else our first
        hosted model."""
        head, _, body = request.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == MODEL_HEADER.lower().encode():
                key = value.strip().decode("latin-1")
                return next((s for s in hosting if s.key == key), None)
        try:
            requested = json.loads(body).get("model") if body else None
        except (ValueError, AttributeError, RecursionError):
            requested = None
        if isinstance(requested, str):
            ours = [m for m in self.served() if any(s.key == m.fingerprint for s in hosting)]
            found_model = resolve(requested, [replace(m, ready=True) for m in ours])
            if isinstance(found_model, ServedModel):
                return next(s for s in hosting if s.key == found_model.fingerprint)
        return hosting[0]

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
