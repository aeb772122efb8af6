"""One llama-server with the RPC tunnels that feed it, and when two may overlap.

A re-plan starts a new generation while the old one keeps answering ("make before
break"), switches new requests to the new one once it is healthy, and stops the old one
when the requests it is answering are done. Whether the two may overlap is a pure
decision (`overlap_refusal`); the counting of open requests is the generation's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..mesh.tunnel import TunnelListener
from .dedupe import CodecStats
from .election import HEADROOM, Plan
from .engine import Engine
from .llama import LlamaPlan

DRAIN_S = 120.0  # an old llama-server finishes what it runs for at most this long


class LlamaProcess(Protocol):
    """What hosting uses of one llama-server (`LlamaServer`; a test's fake process)."""

    plan: LlamaPlan
    port: int | None  # its loopback port once started
    ready: bool
    load_seconds: float | None

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


# Makes a llama-server that is started later: (engine, plan, log path, on_change: told on
# every change of `ready`, before_start: called before each (re)start).
LaunchLlama = Callable[[Engine, LlamaPlan, Path, Callable[[], None], Callable[[], None]],
                       LlamaProcess]


@dataclass(eq=False)
class Generation:
    """A llama-server, its plan and its RPC tunnels: they start and stop together."""

    plan: Plan
    llama: LlamaProcess | None = None
    tunnels: list[TunnelListener] = field(default_factory=list)
    stats: list[CodecStats] = field(default_factory=list)  # one per RPC tunnel connection
    open_requests: int = 0  # API requests it is answering, ours and tunnelled ones
    starts: int = 0  # its llama-server's starts (more than one: it crashed and restarted)
    stopped: bool = False
    connections: set[asyncio.BaseTransport] = field(default_factory=set)  # to llama-server
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.llama is not None and self.llama.ready and not self.stopped

    def acquire(self) -> None:
        self.open_requests += 1
        self._idle.clear()

    def track(self, transport: asyncio.BaseTransport) -> None:
        """A connection to our llama-server, cut when it stops (see `stop`)."""
        if not transport.is_closing():
            self.connections.add(transport)

    def release(self, transport: asyncio.BaseTransport | None = None) -> None:
        self.connections.discard(transport)  # type: ignore[arg-type]
        self.open_requests -= 1
        if self.open_requests <= 0:
            self.open_requests = 0
            self._idle.set()

    async def drained(self, timeout: float = DRAIN_S) -> bool:
        """Until no request is open on it (True), or `timeout` passed (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """llama-server first, then its tunnels: a tunnel closed under a running
        llama-server makes it abort with a backtrace.

        Requests still open are cut first: llama-server's HTTP threads wait for their
        clients to hang up, so with a stream open it took seconds to honour SIGTERM
        (measured: 0.3 s idle, up to 30 s with a stream whose client kept reading)."""
        self.stopped = True
        for transport in list(self.connections):
            transport.abort()
        if self.llama is not None:
            await self.llama.stop()
        for tunnel in self.tunnels:
            await tunnel.stop()


class _Counted(asyncio.Protocol):
    """Passes everything to `inner`; tells `done` once when the connection ends."""

    def __init__(self, inner: asyncio.Protocol,
                 done: Callable[[asyncio.BaseTransport | None], None]) -> None:
        self._inner = inner
        self._done: Callable[[asyncio.BaseTransport | None], None] | None = done
        self.transport: asyncio.BaseTransport | None = None

    def never_connected(self) -> None:
        """The connection failed before it was made: count it as done."""
        done, self._done = self._done, None
        if done is not None:
            done(None)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        done, self._done = self._done, None
        try:
            self._inner.connection_lost(exc)
        finally:
            if done is not None:
                done(self.transport)


def counted_tcp_connect(gen: Generation, port: int) -> Callable[[asyncio.Protocol],
                                                                  Awaitable[None]]:
    """The API relay's connector to `gen`'s llama-server: each connection counts as an
    open request of `gen` until it closes, so a drain knows when it is done."""

    async def connect(protocol: asyncio.Protocol) -> None:
        gen.acquire()
        counted = _Counted(protocol, gen.release)
        try:
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: counted, "127.0.0.1", port)
        except BaseException:
            counted.never_connected()
            raise
        gen.track(transport)

    return connect


def overlap_refusal(*, old: Plan, old_usable: bool, new: Plan, host_vram: int,
                    model_bytes: int, host_has_gpu: bool) -> str | None:
    """Why the new llama-server cannot load while the old one serves, or None when it can.

    - The old one must still work: a plan that lost a worker without a word has a broken
      llama-server, and nothing to keep.
    - A worker in both plans cannot serve both: ggml-rpc-server takes one connection at
      a time, so the new llama-server would wait for the old one to let go.
    - The host must hold both shares. A GPU host holds each server's weights apart; a CPU
      host maps the same file into both, so the weights are shared and only the buffers
      (the headroom) are counted twice.
    """
    if not old_usable:
        return "the old llama-server lost a worker"
    shared = sorted(set(old.workers) & set(new.workers))
    if shared:
        names = ", ".join(w[:12] for w in shared)
        return (f"worker {names} is in both plans and its ggml-rpc-server serves one "
                "llama-server at a time")
    old_share, new_share = _host_share(old), _host_share(new)
    buffers = model_bytes * (HEADROOM - 1) * 2
    weights = model_bytes * (old_share + new_share if host_has_gpu else max(old_share,
                                                                             new_share))
    need = weights + buffers
    if need > host_vram:
        return (f"this host cannot hold both llama-servers (needs {need / 1e9:.1f} GB, has "
                f"{host_vram / 1e9:.1f} GB)")
    return None


def _host_share(plan: Plan) -> float:
    shares: Sequence[float] = plan.tensor_split or (1.0,)
    return float(shares[0])
