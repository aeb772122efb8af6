"""One mesh-llm node: wires home, mesh, election, engine, API and console together.

The node reacts to one thing: "something changed" (a peer came or went, llama-server
became ready or died). Each time it recomputes who hosts (a pure function of the
gossiped state) and converges: the host runs llama-server, every other node points its
API at a tunnel to the host.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__
from .api.localnet import served_hosts
from .api.proxy import ApiProxy, Upstream
from .api.serving import EdgeRunner, raise_open_file_limit
from .api.tunnel_gate import ApiRequestGate
from .changes import ChangeFeed
from .config import NodeConfig
from .console.server import Console
from .errors import UserError
from .home import HomeDir
from .identity import Identity, is_node_id
from .inference.backend import Device, backend_of, list_devices, offered_memory
from .inference.dedupe import CodecStats, DedupeDecoder, DedupeEncoder
from .inference.election import (
    Candidate,
    NodeView,
    Plan,
    elect_host,
    make_plan,
    placement,
    serving_candidates,
)
from .inference.engine import Engine, find_engine
from .inference.generation import DRAIN_S, Generation, counted_tcp_connect, overlap_refusal
from .inference.llama import LlamaPlan, LlamaServer
from .inference.rpc import RpcServer
from .inference.rpc_wire import CommandCounts
from .logutil import RateLimitedLog
from .mesh.announcement import Announcement
from .mesh.mesh import Mesh, MeshJoinError
from .mesh.peers import PeerEvent, PeerInfo
from .mesh.protocol import StreamType
from .mesh.quic import Stream
from .mesh.tunnel import TunnelListener, relay_to_tcp, stream_connect
from .models import hardware
from .models.download import ensure as ensure_downloaded
from .models.draft import find_draft
from .models.gguf_info import block_count
from .models.resolve import ResolvedModel, resolve_model
from .models.split import model_stem
from .models.weights import ModelWeights
from .status import build_status, plan_json

log = logging.getLogger("mesh_llm.node")
refusals = RateLimitedLog(log)  # what a peer can make us log at will

JOIN_TIMEOUT_S = 15.0
HOST_AGREEMENT_S = 5.0  # an RPC tunnel from a peer we do not (yet) see as host waits this long
LEAVE_WAIT_S = 30.0  # a leaving worker waits this long for its host to plan without it
# An old llama-server that uses a leaving worker drains for less than the worker waits, so
# it is stopped (its last streams cut with an error) before the worker goes, not crashed.
LEAVING_DRAIN_S = LEAVE_WAIT_S - 5.0
# A CPU host: two llama-servers computing at once on the same cores slow each other far
# more than 2x (their thread pools spin; measured here 8 -> 0.7 tok/s per stream). So the
# new one takes requests once the old one has finished its streams, or after this long.
CPU_HOLD_S = 10.0
WAITING_FOR_A_HOST = ("no host is ready: this node has no model file (no --model) and waits "
                      "for a node that has one to host the model")


class Node:
    """The node's state and its lifecycle; decisions live in election.py, I/O in the parts."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.home = HomeDir(config.home)
        self.changes = ChangeFeed()
        self.identity: Identity | None = None
        self.mesh: Mesh | None = None
        self.model: ResolvedModel | None = None
        self.engine: Engine | None = None
        self.vram_bytes = 0
        self.has_gpu = False
        self.backend = "none"  # the engine's: cpu, cuda, rocm, metal, vulkan ("none": client)
        self.devices: list[Device] = []  # what llama-server --list-devices lists
        self.draft: Path | None = None
        self._layers: int | None = None  # the model's repeating layers, read once
        self.weights: ModelWeights | None = None  # our model file, indexed for RPC dedupe
        self.fingerprint = ""  # announced while our file has matched every reference
        self.rpc: RpcServer | None = None
        self.host_id: str | None = None
        self.plan: Plan | None = None  # the plan we converge on (the host's)
        self.current: Generation | None = None  # the llama-server requests go to
        self.next: Generation | None = None  # loading, to take over from `current`
        self._draining: set[Generation] = set()  # finishing their requests, then stopped
        self.leaving = False
        self._held = False  # CPU host switching: new requests wait while the old drains
        self._leaving_since: dict[str, float] = {}  # peer → when we saw it announce leaving
        self._rpc_connections = 0  # worker: the host's llama-servers connected to us
        self.state = "starting"
        self.excluded: dict[str, str] = {}  # peer id → why it cannot serve with us
        self.join_error: str | None = None  # --standalone after every --join failed
        self._remembered: list[tuple[str, list[str]]] = []
        allowed = served_hosts(listen_all=config.listen_all, advertise=config.advertise)
        self.api = ApiProxy(self.upstream, api_key=config.api_key, allowed=allowed,
                            changes=self.changes)
        # The console shows the invite token: it needs the API's key whenever there is one.
        self.console = Console(self.status, self.changes, self.api, api_key=config.api_key,
                               allowed=allowed)
        self._replan_lock = asyncio.Lock()
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        """Run `coro` in the background, kept until done so shutdown can wait for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- start-up checks: everything that can fail fast, before any process starts ---
    def prepare(self) -> None:
        cfg = self.config
        if not cfg.client:  # before any download: a missing engine is a one-line error now
            self.engine = find_engine(cfg.bin_dir)
            self.devices = list_devices(self.engine.llama_server)
            self.backend = backend_of(self.devices)
            shown = ", ".join(f"{d.name} {d.description}" for d in self.devices) or "CPU only"
            log.info("engine: %s (%s build: %s)", self.engine.bin_dir, self.backend, shown)
            detected, source = hardware.detect_vram()
            offered, source, warning = offered_memory(detected, source, self.devices,
                                                      hardware.available_ram())
            if warning is not None:
                log.warning("%s", warning)
            self.vram_bytes = hardware.capped(offered, cfg.max_vram_gb)
            self.has_gpu = source != "available RAM"
            capped = " (capped by --max-vram)" if self.vram_bytes < offered else ""
            log.info("memory for models: %.1f GB from %s%s", self.vram_bytes / 1e9, source,
                     capped)
        if not cfg.client and cfg.model:
            # a model not on this machine is fetched first (and its draft, if we may use one)
            ensure_downloaded(cfg.model, with_draft=not cfg.no_draft and cfg.draft is None)
            self.model = resolve_model(cfg.model)
            parts = f", {len(self.model.paths)} parts" if len(self.model.paths) > 1 else ""
            log.info("model: %s (%s, %.0f MB%s)", self.model.name, self.model.path,
                     self.model.size_bytes / 1e6, parts)
            self.draft = find_draft(self.model, cfg.draft, cfg.no_draft)
            if self.draft is not None:
                log.info("draft: %s (speculative decoding, up to %d tokens)", self.draft.name,
                         cfg.draft_max)
            self.weights = ModelWeights.open(self.model.paths)
            self.fingerprint = self.weights.fingerprint.hex()
        elif not cfg.client:
            log.info("no --model: a worker without a model file; it serves the model of the "
                     "mesh's host, whose weights come over the mesh")
        self.home.acquire()
        self.identity = Identity.load_or_create(self.home.path)
        log.info("node id: %s", self.identity.node_id)

    # --- what the API and console read ---
    @property
    def node_id(self) -> str:
        return self.identity.node_id if self.identity else ""

    def role(self) -> str:
        if self.config.client:
            return "client"
        return "host" if self.host_id == self.node_id else "worker"

    @property
    def model_less(self) -> bool:
        """A worker without a model file: it serves whatever model the mesh's host serves."""
        return not self.config.client and self.model is None

    @property
    def llama(self) -> LlamaServer | None:
        """The llama-server that requests go to (while a new one loads: still the old)."""
        gen = self.current
        return gen.llama if gen is not None else None

    @property
    def rpc_stats(self) -> list[CodecStats]:
        return self.current.stats if self.current is not None else []

    def upstream(self) -> Upstream:
        if self.host_id == self.node_id:
            if self._held:
                return Upstream(None, "switching to the new llama-server: the old one "
                                      "finishes its streams first")
            gen = self.current
            if gen is not None and gen.ready and gen.llama is not None \
                    and gen.llama.port is not None:
                port = gen.llama.port
                return Upstream(counted_tcp_connect(gen, port), key=f"tcp 127.0.0.1:{port}")
            if self.plan is not None and self.plan.mode == "waiting":
                return Upstream(None, self.plan.reason)
            return Upstream(None, f"the model {self._model_name()} is still loading")
        host = self._peer(self.host_id)
        if host is None and self.model_less:
            return Upstream(None, WAITING_FOR_A_HOST)
        if host is None:
            return Upstream(None, "no host is ready: waiting for a node that serves a model")
        if not host.announcement.ready:
            return Upstream(None, f"the host {host.node_id[:12]} is still loading its model")
        return Upstream(stream_connect(self._opener(host.node_id, StreamType.HTTP_TUNNEL)),
                        key=f"mesh {host.node_id}")

    def _model_name(self) -> str:
        return self.model.name if self.model else ""

    def _shown_model(self, host: PeerInfo | None) -> str | None:
        """The model's name as the host calls it: one model, one name, whatever our file's."""
        if host is not None and host.models:
            return host.models[0]
        return self.model.name if self.model else None

    def _models(self) -> list[str]:
        """What we announce we serve: our file's model; without a file, the host's model
        (we lend our device to it), or nothing while there is no host."""
        if self.model is not None:
            return [self.model.name]
        host = self._peer(self.host_id) if self.model_less else None
        return host.models[:1] if host is not None else []

    def _peer(self, peer_id: str | None) -> PeerInfo | None:
        if peer_id is None or self.mesh is None:
            return None
        peer = self.mesh.peers.get(peer_id)
        return peer if peer is not None and peer.connected else None

    def _connected_peers(self) -> list[PeerInfo]:
        if self.mesh is None:
            return []
        return [p for p in self.mesh.peers.values() if p.connected]

    def status(self) -> dict[str, Any]:
        llama = self.llama
        host = self._peer(self.host_id)
        if self.host_id == self.node_id:
            plan = self._plan_json()
        else:
            plan = host.announcement.plan if host else None
        upstream = self.upstream()
        token = self.mesh.token() if self.mesh is not None else ""
        reason = None if upstream.connect else upstream.reason
        if self.join_error is not None:
            reason = f"serving alone (--standalone): {self.join_error}"
        return build_status(
            node_id=self.node_id,
            token=token,
            role=self.role(),
            host_id=self.host_id,
            llama_ready=bool(llama and llama.ready) or bool(
                host and host.announcement.ready),
            model=self._shown_model(host),
            draft=self._draft_name() if self.host_id == self.node_id else (
                host.announcement.draft if host else None),
            api_port=self.config.api_port,
            console_port=self.config.console_port,
            vram_bytes=self.vram_bytes,
            peers=[p.to_status() for p in self._connected_peers()],
            plan=plan,
            state=self.state,
            extra={
                "model_file": str(self.model.path) if self.model else None,
                "model_bytes": self.model.size_bytes if self.model else None,
                "model_files": [str(p) for p in self.model.paths] if self.model else [],
                "reason": reason,
                "invites": {"worker": token or None,
                            "client": (self.mesh.invite("client") or None)
                            if self.mesh is not None else None},
                "trusted_hosts": sorted(self.config.trust_hosts)
                if self.config.trust_hosts is not None else None,
                "engine": {"backend": self.backend, "devices": [
                    {"name": d.name, "description": d.description,
                     "total_bytes": d.total_bytes} for d in self.devices]},
                "llama_server": {"pid": llama.pid, "port": llama.port,
                                 "load_seconds": llama.load_seconds} if llama else None,
                "api_tunnel": None if self.host_id in (None, self.node_id) else {
                    "host": self.host_id, "label": "QUIC · HTTP", "description": "API tunnel"},
                "rpc_server": {"pid": self.rpc.pid, "port": self.rpc.port,
                               "ready": self.rpc.ready} if self.rpc else None,
                "rpc_tunnel": self._rpc_tunnel_stats(),
                "excluded_peers": dict(self.excluded),
                "api_in_flight": self.api.in_flight,
                "api_queued": self.api.queued,
                "llama_servers": self._generations_json(),
                "leaving": self.leaving,
                "console_streams": self.console.open_streams,
            },
        )

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
            log.info("API: http://127.0.0.1:%d/v1", self.config.api_port)
            if self.config.console_port is not None:
                log.info("console: http://127.0.0.1:%d", self.config.console_port)
            await stop.wait()
        finally:
            await self.shutdown()

    def _rpc_version(self) -> str:
        """Our ggml-rpc-server's protocol version ("" until it has answered)."""
        version = self.rpc.version if self.rpc is not None else None
        return str(version) if version is not None else ""

    def _draft_name(self) -> str | None:
        return model_stem(self.draft.name) if self.draft is not None else None

    def _plan_json(self) -> dict[str, Any] | None:
        """The plan that serves now (while a new one loads, the old one's)."""
        gen = self.current
        if gen is not None and gen.llama is not None:
            return plan_json(gen.plan, list(gen.llama.plan.rpc))
        return plan_json(self.plan, [])

    def _generations_json(self) -> list[dict[str, Any]]:
        """Every llama-server of ours: the serving one, one loading, ones draining."""
        gens = [("serving", self.current), ("loading", self.next)]
        gens += [("draining", g) for g in self._draining]
        return [{"state": state, "pid": g.llama.pid if g.llama else None,
                 "port": g.llama.port if g.llama else None, "mode": g.plan.mode,
                 "workers": list(g.plan.workers), "open_requests": g.open_requests}
                for state, g in gens if g is not None]

    def _announcement(self) -> Announcement:
        hosting = self.host_id == self.node_id
        ready = bool(self.llama and self.llama.ready and hosting and not self._held)
        return Announcement(
            self.node_id,
            plan=self._plan_json() if hosting else None,
            draft=self._draft_name() if hosting else None,
            role=self.role(),
            vram_bytes=0 if self.config.client else self.vram_bytes,
            models=tuple(self._models()),
            model_file=self.model is not None,
            rpc_version=self._rpc_version(),
            version=__version__,
            ready=ready,
            rpc_ready=bool(self.rpc and self.rpc.ready),
            model_fingerprint=self.fingerprint,
            leaving=self.leaving,
        )

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
        self.mesh.add_stream_handler(StreamType.RPC_TUNNEL, self._serve_rpc_tunnel)
        if self.engine is not None:
            self.rpc = RpcServer(self.engine, self.home.logs / "ggml-rpc-server.log",
                                 self._local_changed, cfg.device)
            self.rpc.start()
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
        if self.mesh is None or self.state == "stopping":
            return
        members = sorted(self.mesh.member_hints())
        if members and members != self._remembered:
            self._remembered = members
            try:
                self.home.save_peers(members)
            except UserError as err:
                log.warning("%s", err)

    def _reconcile(self) -> None:
        """Converge on the current truth: who hosts, what runs here, what we announce."""
        if self.state == "stopping":
            return  # peers leaving because we leave must not start a new plan
        view = None if self.config.client else NodeView(
            self.node_id, "worker", self.vram_bytes, models=tuple(self._models()),
            model_file=self.model is not None, fingerprint=self.fingerprint,
            rpc_version=self._rpc_version())
        views = [_view_of(p) for p in self._connected_peers()]
        now = asyncio.get_running_loop().time()
        self._leaving_since = {v.node_id: self._leaving_since.get(v.node_id, now)
                               for v in views if v.leaving}
        candidates, self.excluded = serving_candidates(view, views, self.config.trust_hosts)
        me = candidates[0] if view is not None and candidates else None
        host_id = elect_host(candidates)
        if host_id != self.host_id:
            if host_id is None and self.model_less:
                log.warning("%s", WAITING_FOR_A_HOST)
            else:
                log.info("host: %s", "this node" if host_id == self.node_id else
                         (host_id[:12] if host_id else "none"))
            self.host_id = host_id
        if me is not None and host_id == self.node_id:
            self._host(me, [c for c in candidates if c.node_id != self.node_id])
        else:
            self._follow(host_id)
        if self.mesh is not None:
            self.mesh.update_announcement(self._announcement())
        self.changes.bump()

    def _host(self, me: Candidate, others: list[Candidate]) -> None:
        assert self.model is not None
        workers = [c for c in others if (peer := self._peer(c.node_id)) is not None
                   and peer.announcement.rpc_ready]
        plan = make_plan(me, workers, self.model.size_bytes, self.config.split)
        for gen in self._draining:  # one that lost a worker is broken: nothing to wait for
            if not gen.stopped and any(self._peer(w) is None for w in gen.plan.workers):
                self._spawn(gen.stop())
        if plan == self.plan:
            return
        self.plan = plan
        if plan.mode == "waiting":
            log.warning("%s", plan.reason)
            self.state = "waiting"
            self._spawn(self._stop_serving())
            return
        if self.current is None or not self.current.ready:
            self.state = "loading"
        self._spawn(self._replan(plan))

    async def _replan(self, plan: Plan) -> None:
        """Serve `plan`: a new llama-server while the old one keeps answering where both
        fit (make before break); else the old one finishes its requests, then the new
        one starts. Re-plans run one at a time; a superseded one does nothing."""
        async with self._replan_lock:
            if plan != self.plan or self.state == "stopping":
                return
            if self.next is not None:  # a newer plan replaces one still loading
                loading, self.next = self.next, None
                await loading.stop()
            old, gen = self.current, Generation(plan)
            usable = old is not None and old.ready and all(
                self._peer(worker) is not None for worker in old.plan.workers)
            why = self._overlap_refusal(old, usable, plan) if old is not None else ""
            if old is not None and why is None:
                log.info("re-plan: the new llama-server loads while the old one serves")
                self.next = gen
            else:
                self.current = gen  # not ready yet: requests wait for it
                self.state = "loading"
                self._llama_changed(None)
                if old is not None:
                    if why:
                        log.info("re-plan: the old llama-server stops before the new one "
                                 "starts: %s", why)
                    await self._retire(old, drain=usable)
            if plan != self.plan or gen.stopped:
                return
            await self._start(gen)

    def _overlap_refusal(self, old: Generation, usable: bool, plan: Plan) -> str | None:
        assert self.model is not None
        if not old.ready:
            return ""  # nothing serves: nothing to keep
        return overlap_refusal(old=old.plan, old_usable=usable, new=plan,
                               host_vram=self.vram_bytes, model_bytes=self.model.size_bytes,
                               host_has_gpu=self.has_gpu)

    async def _start(self, gen: Generation) -> None:
        """Start `gen`'s llama-server: tunnels to the workers first, then the server."""
        assert self.model is not None and self.engine is not None
        plan = gen.plan
        endpoints = []
        for worker in plan.workers:
            tunnel = TunnelListener(self._opener(worker, StreamType.RPC_TUNNEL), worker,
                                    make_encoder=self._encoder_for(worker, gen))
            gen.tunnels.append(tunnel)
            endpoints.append(f"127.0.0.1:{await tunnel.start()}")
        extra: dict[str, Any] = {}
        if plan.workers:
            if self._layers is None:  # reading GGUF metadata takes seconds: not on the loop
                self._layers = await asyncio.to_thread(block_count, self.model.path)
            where = placement(plan.tensor_split, self._layers, self.has_gpu)
            extra = {"gpu_layers": where.gpu_layers, "tensor_split": where.tensor_split,
                     "overrides": where.overrides}
        if gen.stopped:  # stopped while we set up: close what we opened meanwhile
            await gen.stop()
            return
        llama_plan = LlamaPlan(model=self.model.path, alias=self.model.name, rpc=tuple(endpoints),
                               draft=self.draft, draft_max=self.config.draft_max,
                               parallel=self.config.parallel, extra=self.config.llama_args,
                               **extra)
        gen.llama = LlamaServer(self.engine, llama_plan, self.home.logs / "llama-server.log",
                                lambda: self._llama_changed(gen), before_start=gen.stats.clear)
        what = f"split over {len(plan.workers)} worker(s) {plan.tensor_split}" if plan.workers \
            else "solo"
        log.info("loading %s %s (llama-server log: %s)", self.model.name, what,
                 self.home.logs / "llama-server.log")
        gen.llama.start()
        self.changes.bump()

    async def _retire(self, gen: Generation, drain: bool, hold: bool = False) -> None:
        """Stop an old llama-server; with `drain`, once its open requests are done (bounded).
        With `hold`, new requests wait meanwhile (CPU_HOLD_S at most)."""
        self._draining.add(gen)
        self.changes.bump()
        try:
            if hold and gen.open_requests:
                self._held = True
                self._llama_changed(None)
                try:
                    await gen.drained(CPU_HOLD_S)
                finally:
                    self._held = False
                    self._llama_changed(None)
            if drain and gen.open_requests:
                # A leaving worker waits LEAVE_WAIT_S from its announcement: stop before.
                now = asyncio.get_running_loop().time()
                seen = [self._leaving_since[w] for w in gen.plan.workers
                        if w in self._leaving_since]
                bound = min([DRAIN_S] + [max(1.0, t + LEAVING_DRAIN_S - now) for t in seen])
                log.info("the old llama-server finishes %d open request(s) first (at most "
                         "%.0f s)", gen.open_requests, bound)
                if not await gen.drained(bound):
                    log.warning("the old llama-server still had %d open request(s) after "
                                "%.0f s; stopping it", gen.open_requests, bound)
            pid = gen.llama.pid if gen.llama else None
            await gen.stop()
            if pid is not None:
                log.info("stopped the old llama-server (pid %d)", pid)
        finally:
            self._draining.discard(gen)
            self.changes.bump()

    def _encoder_for(self, worker: str, gen: Generation):  # type: ignore[no-untyped-def]
        """Per connection: references to the weights while the worker announces the same
        file (checked anew each time, so a restart after a mismatch sends real bytes); the
        real bytes to a worker with another file or none."""

        def make() -> DedupeEncoder:
            peer = self._peer(worker)
            same_file = bool(self.fingerprint and peer is not None
                             and peer.announcement.model_fingerprint == self.fingerprint)
            encoder = DedupeEncoder(self.weights, refs=same_file)
            gen.stats.append(encoder.stats)
            return encoder
        return make

    def _rpc_tunnel_stats(self) -> dict[str, Any]:
        """What crossed the mesh to the workers since the current llama-server started, and
        the RPC commands behind it: by type, bytes each way, and round trips (commands whose
        reply llama-server waits for; each costs one link RTT)."""
        stats = self.rpc_stats
        counts = CommandCounts()
        for s in stats:
            counts.add(s.commands)
        return {
            "bytes_in": sum(s.in_bytes for s in stats),  # what llama-server wrote
            "bytes_out": sum(s.out_bytes for s in stats),  # what went over the mesh
            "weight_bytes": sum(s.weight_bytes for s in stats),
            "weight_bytes_sent": sum(s.weight_bytes - s.ref_bytes for s in stats),
            "weight_bytes_referenced": sum(s.ref_bytes for s in stats),
            "connections": len(stats),
            "commands": counts.commands,
            "round_trips": counts.round_trips,
            "by_command": counts.as_dict(),
        }

    async def _stop_serving(self) -> None:
        """Stop every llama-server of ours (each before the RPC tunnels that fed it)."""
        gens = [g for g in (self.next, self.current) if g is not None]
        gens += [g for g in self._draining if g not in gens]
        self.current = self.next = None
        for gen in gens:
            await gen.stop()

    def _follow(self, host_id: str | None) -> None:
        """Not the host: no llama-server here; the API goes through a tunnel to the host."""
        if self.plan is not None or self.current is not None or self.next is not None:
            log.info("stopping llama-server (no longer the host)")
            self._spawn(self._stop_serving())
        self.plan = None
        host = self._peer(host_id)
        self.state = "running" if host and host.announcement.ready else "waiting"

    def _opener(self, peer_id: str, kind: StreamType):  # type: ignore[no-untyped-def]
        async def open_stream() -> Stream:
            assert self.mesh is not None
            return await self.mesh.open_stream(peer_id, kind)
        return open_stream

    async def _serve_http_tunnel(self, peer_id: str, stream: Stream) -> None:
        """A peer's API request for our llama-server: only while we host, and only for the
        API's routes (llama-server's other endpoints are not the mesh's to hand out)."""
        if self.host_id != self.node_id:
            refusals.warning(f"http {peer_id}", "refused an API tunnel from %s: this node is "
                             "not the host", peer_id[:12])
            stream.abort()
            return
        gen = self.current
        if gen is None or not gen.ready or gen.llama is None or gen.llama.port is None:
            stream.abort()
            return
        gen.acquire()
        transport: asyncio.BaseTransport | None = None
        transport = await relay_to_tcp(
            stream, "127.0.0.1", gen.llama.port, decoder=ApiRequestGate(),
            on_decode_error=lambda err: refusals.warning(
                f"gate {peer_id}", "refused a tunnelled request from %s: %s", peer_id[:12], err),
            on_closed=lambda: gen.release(transport))
        if transport is not None:
            gen.track(transport)

    async def _serve_rpc_tunnel(self, peer_id: str, stream: Stream) -> None:
        """The host's llama-server reaching our ggml-rpc-server: only the node that we too
        elect as host may (ggml-rpc-server has no authentication of its own)."""
        if not await self._agrees_host(peer_id):
            refusals.warning(f"rpc {peer_id}", "refused an RPC tunnel from %s: it is not the "
                             "host of this node's plan", peer_id[:12])
            stream.abort()
            return
        if self.rpc is None or not self.rpc.ready or self.rpc.port is None:
            stream.abort()
            return
        log.debug("RPC tunnel from host %s", peer_id[:12])
        decoder = DedupeDecoder(self.weights if self.fingerprint else None)
        self._rpc_connections += 1
        await relay_to_tcp(stream, "127.0.0.1", self.rpc.port, decoder=decoder,
                           on_decode_error=self._weights_differ,
                           on_closed=self._rpc_connection_closed)

    def _rpc_connection_closed(self) -> None:
        self._rpc_connections -= 1
        self.changes.bump()

    async def _agrees_host(self, peer_id: str) -> bool:
        """Whether we elect `peer_id` as host, waiting briefly: its tunnel can arrive a moment
        before the gossip that makes it host here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOST_AGREEMENT_S
        while self.host_id != peer_id or self.config.client:
            seen = self.changes.version
            remaining = deadline - loop.time()
            if remaining <= 0 or self.config.client:
                return False
            await self.changes.wait_newer(seen, remaining)
        return True

    def _weights_differ(self, err: ValueError) -> None:
        """The host referenced bytes our file does not have: stop claiming the same file,
        so the host re-plans and sends the real bytes."""
        if self.fingerprint:
            log.warning("our model file differs from the host's (%s): asking for the real "
                        "bytes", err)
            self.fingerprint = ""
            self._local_changed()

    def _local_changed(self) -> None:
        """Our ggml-rpc-server came up or went down, or our file proved different: tell the
        mesh, and re-check who can split with us (our RPC version is known only now)."""
        if self.mesh is not None:
            self._reconcile()

    def _llama_changed(self, gen: Generation | None) -> None:
        """A llama-server became ready or stopped being ready (None: we switched)."""
        if gen is not None and gen is self.next and gen.ready:
            old, self.current, self.next = self.current, gen, None
            if old is not None:
                hold = not self.has_gpu and old.open_requests > 0
                log.info("re-plan: requests now go to the new llama-server%s", (
                    " once the old one has finished its streams (a CPU host)" if hold else ""))
                self._spawn(self._retire(old, drain=True, hold=hold))
        if gen is not None and gen is self.current and self.state != "stopping":
            self.state = "running" if gen.ready else "loading"
            if gen.ready:
                log.info("ready: %s answers on http://127.0.0.1:%d/v1", self._model_name(),
                         self.config.api_port)
        if self.mesh is not None:
            self.mesh.update_announcement(self._announcement())
        self.changes.bump()

    async def _leave(self) -> None:
        """Say we are leaving; if the host's llama-server uses us, wait (bounded) until it
        serves without us and its old llama-server has let go of our ggml-rpc-server."""
        assert self.mesh is not None
        self.leaving = True
        self.mesh.update_announcement(self._announcement())
        if not self._host_needs_us():
            return
        log.info("leaving: waiting for the host to serve without this node (at most %.0f s)",
                 LEAVE_WAIT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEAVE_WAIT_S
        while True:
            seen = self.changes.version
            if not self._host_needs_us():
                log.info("leaving: the host serves without this node")
                return
            left = deadline - loop.time()
            if left <= 0:
                log.warning("leaving: the host still used this node after %.0f s; leaving "
                            "anyway", LEAVE_WAIT_S)
                return
            await self.changes.wait_newer(seen, left)

    def _host_needs_us(self) -> bool:
        """Whether the host's serving plan has us, or one of its llama-servers still
        holds a connection to our ggml-rpc-server."""
        if self._rpc_connections > 0:
            return True
        host = self._peer(self.host_id) if self.host_id != self.node_id else None
        plan = host.announcement.plan if host is not None else None
        return plan is not None and self.node_id in plan["workers"]

    async def shutdown(self) -> None:
        if self.state != "stopping" and self.mesh is not None and not self.config.client:
            await self._leave()
        self.state = "stopping"
        if self.mesh is not None:
            await self.mesh.stop()
        await self._stop_serving()
        if self.rpc is not None:
            await self.rpc.stop()
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


def _view_of(peer: PeerInfo) -> NodeView:
    """What the election needs from a peer's announcement."""
    ann = peer.announcement
    return NodeView(peer.node_id, peer.role, peer.vram_bytes, peer.rtt_ms,
                    models=tuple(peer.models), model_file=peer.model_file,
                    fingerprint=ann.model_fingerprint, rpc_version=ann.rpc_version,
                    leaving=ann.leaving)


async def run_node(config: NodeConfig) -> None:
    node = Node(config)
    node.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)
