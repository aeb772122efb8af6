"""The host's side: serve the plan with llama-server, fed by RPC tunnels to the workers.

When this node is elected, `converge` turns the candidates into a plan (solo, split over
workers, or waiting for more memory) and serves it: RPC tunnels to the workers first, then
a llama-server generation. A re-plan loads the new generation while the old one keeps
answering where both fit (make before break), then drains the old one; on a CPU host new
requests are held while the old one finishes. The host also answers the API tunnel that
other nodes' requests arrive through, and counts what its RPC tunnels carry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api.proxy import Upstream
from ..api.tunnel_gate import ApiRequestGate, TunnelledRequest
from ..changes import ChangeFeed
from ..errors import UserError
from ..logutil import RateLimitedLog
from ..mesh.peers import PeerInfo
from ..mesh.protocol import StreamType
from ..mesh.quic import Stream
from ..mesh.tunnel import TunnelListener, relay_to_tcp
from ..models.gguf_info import block_count, trained_context
from ..models.split import model_stem
from .dedupe import CodecStats, DedupeEncoder
from .election import Candidate, Plan, make_plan, placement
from .generation import (
    DRAIN_S,
    Generation,
    LaunchLlama,
    LlamaProcess,
    counted_tcp_connect,
    overlap_refusal,
)
from .llama import LlamaPlan, LlamaServer, context_pool
from .rpc_wire import CommandCounts
from .service import ServeSpec
from .worker import LEAVE_WAIT_S, FileClaim

log = logging.getLogger("mesh_llm.hosting")
refusals = RateLimitedLog(log)  # what a peer can make us log at will

# An old llama-server that uses a leaving worker drains for less than the worker waits, so
# it is stopped (its last streams cut with an error) before the worker goes, not crashed.
LEAVING_DRAIN_S = LEAVE_WAIT_S - 5.0
# A CPU host: two llama-servers computing at once on the same cores slow each other far
# more than 2x (their thread pools spin; measured here 8 -> 0.7 tok/s per stream). So the
# new one takes requests once the old one has finished its streams, or after this long.
CPU_HOLD_S = 10.0

PeerLookup = Callable[[str], PeerInfo | None]  # a connected peer by id, else None
OpenPeerStream = Callable[[str, StreamType], Awaitable[Stream]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]  # run in the background, kept till done


@dataclass(frozen=True)
class EncoderFactory:
    """Per RPC connection to `worker`: references to the weights while the worker announces
    the same file (checked anew each time, so a restart after a mismatch sends real bytes);
    the real bytes to a worker with another file or none."""

    worker: str
    gen: Generation
    file: FileClaim
    peer: PeerLookup

    def __call__(self) -> DedupeEncoder:
        peer = self.peer(self.worker)
        ours = self.file.fingerprint
        same_file = bool(ours and peer is not None
                         and peer.announcement.model_fingerprint == ours)
        encoder = DedupeEncoder(self.file.weights, refs=same_file)
        self.gen.stats.append(encoder.stats)
        return encoder


async def read_tunnelled_request(stream: Stream, gate: ApiRequestGate) -> TunnelledRequest:
    """A peer's whole tunnelled request (head and body) as the gate lets it through, read
    before it is relayed, so that the node can choose the model's llama-server."""
    out = bytearray()
    while not gate.complete:
        data = await stream.read(65536)
        if not data:
            raise EOFError("the request ended before its body did")
        out += gate.feed(data)
    assert gate.head is not None  # complete implies the head passed
    return TunnelledRequest(gate.head, bytes(out))


class Hosting:
    """This node's llama-server generations and the plan they serve."""

    def __init__(self, *, spec: ServeSpec, logs: Path, file: FileClaim,
                 peer: PeerLookup, open_stream: OpenPeerStream, changes: ChangeFeed,
                 announce: Callable[[], None], spawn: Spawn,
                 log_name: str = "llama-server.log",
                 launch: LaunchLlama = LlamaServer) -> None:
        self.spec = spec
        self.log_path = logs / log_name
        self.file = file
        self._peer = peer
        self._open_stream = open_stream
        self.changes = changes
        self._announce = announce  # tell the mesh and the API what changed
        self._spawn = spawn
        self._launch = launch  # the llama-server process (a unit test's fake stands in)
        self.active = False  # elected: this node hosts
        self.state = "starting"  # "waiting" | "loading" | "running" while active
        self.stopping = False
        self.plan: Plan | None = None  # the plan we converge on
        self.current: Generation | None = None  # the llama-server requests go to
        self.next: Generation | None = None  # loading, to take over from `current`
        self.draining: set[Generation] = set()  # finishing their requests, then stopped
        self.held = False  # CPU host switching: new requests wait while the old drains
        self.leaving_since: Mapping[str, float] = {}  # peer → when we saw it announce leaving
        self._layers: int | None = None  # the model's repeating layers, read once
        self._pool: int | None = None  # the KV cells the slots share (-c), read once
        self._pool_read = False
        self._replan_lock = asyncio.Lock()
        # Since start, for the metrics: plans replaced by another, llama-server restarts
        # after a crash, and seconds without a llama-server taking requests once one had.
        self.plan_changes = 0
        self.restarts = 0
        self._stall_s = 0.0
        self._stalled_since: float | None = None
        self._served = False

    # --- what the API, the status and the announcement read ---
    @property
    def llama(self) -> LlamaProcess | None:
        """The llama-server that requests go to (while a new one loads: still the old)."""
        gen = self.current
        return gen.llama if gen is not None else None

    def serving_port(self) -> int | None:
        """Our llama-server's port while it answers requests, else None."""
        gen = self.current
        if gen is not None and gen.ready and gen.llama is not None:
            return gen.llama.port
        return None

    def upstream(self, port: int) -> Upstream:
        """The API relay's upstream: the serving llama-server on loopback `port`, its
        connections counted (for drains)."""
        assert self.current is not None
        return Upstream(counted_tcp_connect(self.current, port), key=f"tcp 127.0.0.1:{port}")

    def draft_name(self) -> str | None:
        draft = self.spec.draft
        return model_stem(draft.name) if draft is not None else None

    def plan_json(self) -> dict[str, Any] | None:
        """The plan that serves now (while a new one loads, the old one's)."""
        gen = self.current
        if gen is not None and gen.llama is not None:
            return gen.plan.to_json(gen.llama.plan.rpc)
        return self.plan.to_json() if self.plan is not None else None

    def llama_json(self) -> dict[str, Any] | None:
        llama = self.llama
        if llama is None:
            return None
        return {"pid": llama.pid, "port": llama.port, "load_seconds": llama.load_seconds}

    def generations_json(self) -> list[dict[str, Any]]:
        """Every llama-server of ours: the serving one, one loading, ones draining."""
        gens = [("serving", self.current), ("loading", self.next)]
        gens += [("draining", g) for g in self.draining]
        return [{"state": state, "pid": g.llama.pid if g.llama else None,
                 "port": g.llama.port if g.llama else None, "mode": g.plan.mode,
                 "workers": list(g.plan.workers), "open_requests": g.open_requests}
                for state, g in gens if g is not None]

    def rpc_tunnel_stats(self) -> dict[str, Any]:
        """What crossed the mesh to the workers since the current llama-server started, and
        the RPC commands behind it: by type, bytes each way, and round trips (commands whose
        reply llama-server waits for; each costs one link RTT)."""
        return tunnel_stats(self.current.stats if self.current is not None else [])

    # --- converging on a plan ---
    def converge(self, me: Candidate, workers: tuple[Candidate, ...]) -> None:
        """We host: plan over the workers that may serve with us, and serve that plan."""
        model = self.spec.model
        assert model is not None
        self.active = True
        plan = make_plan(me, workers, model.size_bytes, self.spec.split)
        for gen in self.draining:  # one that lost a worker is broken: nothing to wait for
            if not gen.stopped and any(self._peer(w) is None for w in gen.plan.workers):
                self._spawn(gen.stop())
        if plan == self.plan:
            return
        if self.plan is not None:
            self.plan_changes += 1
        self.plan = plan
        if plan.mode == "waiting":
            log.warning("%s", plan.reason, extra={"event": "plan: waiting"})
            self.state = "waiting"
            self._spawn(self.stop_serving())
            return
        if self.current is None or not self.current.ready:
            self.state = "loading"
        self._spawn(self._replan(plan))

    def stand_down(self) -> None:
        """Not the host (any more): no llama-server here."""
        self.active = False
        self._track_stall()
        if self.plan is not None or self.current is not None or self.next is not None:
            log.info("stopping llama-server (no longer the host)")
            self._spawn(self.stop_serving())
        self.plan = None

    async def _replan(self, plan: Plan) -> None:
        """Serve `plan`: a new llama-server while the old one keeps answering where both
        fit (make before break); else the old one finishes its requests, then the new
        one starts. Re-plans run one at a time; a superseded one does nothing."""
        async with self._replan_lock:
            if plan != self.plan or self.stopping:
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
                self.llama_changed(None)
                if old is not None:
                    if why:
                        log.info("re-plan: the old llama-server stops before the new one "
                                 "starts: %s", why)
                    await self._retire(old, drain=usable)
            if plan != self.plan or gen.stopped:
                return
            await self._start(gen)

    def _overlap_refusal(self, old: Generation, usable: bool, plan: Plan) -> str | None:
        assert self.spec.model is not None
        if not old.ready:
            return ""  # nothing serves: nothing to keep
        return overlap_refusal(old=old.plan, old_usable=usable, new=plan,
                               host_vram=self.spec.vram_bytes,
                               model_bytes=self.spec.model.size_bytes,
                               host_has_gpu=self.spec.has_gpu)

    async def _start(self, gen: Generation) -> None:
        """Start `gen`'s llama-server: tunnels to the workers first, then the server."""
        model, engine, spec = self.spec.model, self.spec.engine, self.spec
        assert model is not None and engine is not None
        plan = gen.plan
        endpoints = []
        for worker in plan.workers:
            tunnel = TunnelListener(
                functools.partial(self._open_stream, worker, StreamType.RPC_TUNNEL), worker,
                make_encoder=EncoderFactory(worker, gen, self.file, self._peer))
            gen.tunnels.append(tunnel)
            endpoints.append(f"127.0.0.1:{await tunnel.start()}")
        extra: dict[str, Any] = {}
        if plan.workers:
            if self._layers is None:  # reading GGUF metadata takes seconds: not on the loop
                self._layers = await asyncio.to_thread(block_count, model.path)
            where = placement(plan.tensor_split, self._layers, self.spec.has_gpu)
            extra = {"gpu_layers": where.gpu_layers, "tensor_split": where.tensor_split,
                     "overrides": where.overrides}
        if not self._pool_read:
            self._pool = await asyncio.to_thread(_context_pool, model.path)
            self._pool_read = True
        if gen.stopped:  # stopped while we set up: close what we opened meanwhile
            await gen.stop()
            return
        llama_plan = LlamaPlan(model=model.path, alias=model.name, rpc=tuple(endpoints),
                               draft=spec.draft, draft_max=spec.draft_max,
                               parallel=spec.parallel, ctx_size=self._pool,
                               extra=spec.llama_args, **extra)
        gen.llama = self._launch(engine, llama_plan, self.log_path,
                                 functools.partial(self.llama_changed, gen),
                                 functools.partial(self._before_start, gen))
        what = f"split over {len(plan.workers)} worker(s) {plan.tensor_split}" if plan.workers \
            else "solo"
        log.info("loading %s %s (llama-server log: %s)", model.name, what, self.log_path)
        gen.llama.start()
        self.changes.bump()

    async def _retire(self, gen: Generation, drain: bool, hold: bool = False) -> None:
        """Stop an old llama-server; with `drain`, once its open requests are done (bounded).
        With `hold`, new requests wait meanwhile (CPU_HOLD_S at most)."""
        self.draining.add(gen)
        self.changes.bump()
        try:
            if hold and gen.open_requests:
                self.held = True
                self.llama_changed(None)
                try:
                    await gen.drained(CPU_HOLD_S)
                finally:
                    self.held = False
                    self.llama_changed(None)
            if drain and gen.open_requests:
                # A leaving worker waits LEAVE_WAIT_S from its announcement: stop before.
                now = asyncio.get_running_loop().time()
                seen = [self.leaving_since[w] for w in gen.plan.workers
                        if w in self.leaving_since]
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
            self.draining.discard(gen)
            self.changes.bump()

    async def stop_serving(self) -> None:
        """Stop every llama-server of ours (each before the RPC tunnels that fed it)."""
        gens = [g for g in (self.next, self.current) if g is not None]
        gens += [g for g in self.draining if g not in gens]
        self.current = self.next = None
        for gen in gens:
            await gen.stop()

    def _before_start(self, gen: Generation) -> None:
        """A llama-server (re)starts: a restart after a crash counts; its tunnels' counts
        start afresh."""
        if gen.starts:
            self.restarts += 1
        gen.starts += 1
        gen.stats.clear()

    def stall_seconds(self) -> float:
        """Seconds, since start, that this model's requests had no llama-server here to go
        to (a re-plan that stops before it starts, a CPU hold, a crash) after one served."""
        since = self._stalled_since
        return self._stall_s + (time.monotonic() - since if since is not None else 0.0)

    def _track_stall(self) -> None:
        """Called on every change of what serves: opens or closes a stall."""
        serving = self.serving_port() is not None and not self.held
        if serving:
            self._served = True
        if self._stalled_since is not None and (serving or not self.active):
            self._stall_s += time.monotonic() - self._stalled_since
            self._stalled_since = None
        elif self._served and self.active and not serving and self._stalled_since is None:
            self._stalled_since = time.monotonic()

    def llama_changed(self, gen: Generation | None) -> None:
        """A llama-server became ready or stopped being ready (None: we switched)."""
        if gen is not None and gen is self.next and gen.ready:
            old, self.current, self.next = self.current, gen, None
            if old is not None:
                hold = not self.spec.has_gpu and old.open_requests > 0
                log.info("re-plan: requests now go to the new llama-server%s", (
                    " once the old one has finished its streams (a CPU host)" if hold else ""))
                self._spawn(self._retire(old, drain=True, hold=hold))
        if gen is not None and gen is self.current and not self.stopping:
            self.state = "running" if gen.ready else "loading"
            if gen.ready and self.spec.model is not None:
                log.info("ready: %s answers on http://127.0.0.1:%d/v1", self.spec.model.name,
                         self.spec.api_port)
        self._track_stall()
        self._announce()

    # --- the API tunnel other nodes' requests arrive through (node/router.py) ---
    async def relay_tunnel(self, peer_id: str, stream: Stream, gate: ApiRequestGate,
                           preface: bytes = b"") -> None:
        """Relay a peer's API request to our serving llama-server through `gate`;
        `preface` is what the gate already let through (read before choosing a model)."""
        gen = self.current
        if gen is None or not gen.ready or gen.llama is None or gen.llama.port is None:
            stream.abort()
            return
        gen.acquire()
        transport: asyncio.BaseTransport | None = None
        transport = await relay_to_tcp(
            stream, "127.0.0.1", gen.llama.port, decoder=gate,
            on_decode_error=lambda err: refusals.warning(
                f"gate {peer_id}", "refused a tunnelled request from %s: %s", peer_id[:12], err),
            on_closed=lambda: gen.release(transport), preface=preface)
        if transport is not None:
            gen.track(transport)


def tunnel_stats(stats: Sequence[CodecStats]) -> dict[str, Any]:
    """What RPC tunnels carried (a node that hosts nothing: zeros), in the status's shape."""
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


def _context_pool(path: Path) -> int | None:
    """The `-c` for this model file; llama-server's own default when its header says nothing."""
    try:
        return context_pool(trained_context(path))
    except UserError as err:
        log.warning("%s; llama-server sizes its context itself", err)
        return None
