"""Hosting (inference/hosting.py) wired to fakes of what surrounds it: a fake llama-server
process, peers, mesh streams and the node's background tasks. Everything else is real:
plans, generations and their drains, the RPC tunnels' loopback listeners, the change feed.

The fake is what `LlamaServer` is to hosting (start, ready, port, pid, stop, the on-change
callback); a test says when it has loaded and awaits the events it records, never a sleep.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mesh_llm.changes import ChangeFeed
from mesh_llm.inference.election import Candidate
from mesh_llm.inference.engine import Engine
from mesh_llm.inference.hosting import Hosting
from mesh_llm.inference.llama import LlamaPlan
from mesh_llm.inference.service import ServeSpec
from mesh_llm.inference.worker import FileClaim
from mesh_llm.mesh.announcement import Announcement
from mesh_llm.mesh.peers import PeerInfo
from mesh_llm.mesh.protocol import StreamType
from mesh_llm.mesh.quic import Stream
from mesh_llm.models.resolve import ResolvedModel
from modelgen import tiny_gguf

GB = 10**9
WAIT_S = 10.0  # how long any awaited step may take before the test fails
LAYERS = 6  # the tiny model's repeating layers
HOST, B, C = "aa" * 32, "bb" * 32, "cc" * 32


def me(vram_gb: float = 16) -> Candidate:
    return Candidate(HOST, "host", int(vram_gb * GB))


def worker(node_id: str, vram_gb: float = 16) -> Candidate:
    return Candidate(node_id, "worker", int(vram_gb * GB), rtt_ms=1.0)


def listening(endpoint: str) -> bool:
    """Whether a server listens on `endpoint`, asked without connecting to it: binding the
    same port (SO_REUSEADDR, as the listener has) fails only while something listens."""
    host, _, port = endpoint.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return True
    return False


class FakeLlama:
    """A llama-server process as hosting sees one. Like the real one it picks its loopback
    port when started (a socket that accepts connections and never answers), connects to
    every `--rpc` endpoint at start, calls `before_start` first and tells `on_change` of
    every change of `ready`."""

    pids = itertools.count(1000)

    def __init__(self, plan: LlamaPlan, on_change: Callable[[], None],
                 before_start: Callable[[], None], launcher: Launcher) -> None:
        self.plan = plan
        self.port: int | None = None
        self.ready = False
        self.load_seconds: float | None = None
        self._on_change = on_change
        self._before_start = before_start
        self._launcher = launcher
        self._pid: int | None = None
        self._socket: socket.socket | None = None
        self.stopped = asyncio.Event()
        self.rpc_listening_at_stop: list[bool] = []

    @property
    def pid(self) -> int | None:
        return self._pid

    def start(self) -> None:
        self._before_start()
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._pid = next(self.pids)
        for endpoint in self.plan.rpc:  # llama-server aborts when one refuses
            host, _, port = endpoint.rpartition(":")
            socket.create_connection((host, int(port)), timeout=WAIT_S).close()
        self._launcher.started(self)

    def load(self) -> None:
        """The model is loaded: /health answers 200."""
        self.ready, self.load_seconds = True, 0.5
        self._on_change()

    def crash(self) -> None:
        """The process died (its supervisor will start it again)."""
        self.ready = False
        self._on_change()

    def restart(self) -> None:
        """Its supervisor starts it again after a crash (on a new port, as the real one)."""
        if self._socket is not None:
            self._socket.close()
        self.start()

    async def stop(self) -> None:
        self.rpc_listening_at_stop = [listening(e) for e in self.plan.rpc]
        if self._socket is not None:
            self._socket.close()
        self._pid, was_ready, self.ready = None, self.ready, False
        self._launcher.log.append(f"stop {'split' if self.plan.rpc else 'solo'}")
        self.stopped.set()
        if was_ready:
            self._on_change()


class Launcher:
    """Hosting's `launch`: makes FakeLlamas and hands each to the test once started."""

    def __init__(self) -> None:
        self.log: list[str] = []  # "start solo", "stop split", … in the order they happened
        self._started: asyncio.Queue[FakeLlama] = asyncio.Queue()

    def __call__(self, engine: Engine, plan: LlamaPlan, log_path: Path,
                 on_change: Callable[[], None], before_start: Callable[[], None]) -> FakeLlama:
        return FakeLlama(plan, on_change, before_start, self)

    def started(self, fake: FakeLlama) -> None:
        self.log.append(f"start {'split' if fake.plan.rpc else 'solo'}")
        self._started.put_nowait(fake)

    async def next(self) -> FakeLlama:
        return await asyncio.wait_for(self._started.get(), WAIT_S)

    def waiting(self) -> int:
        return self._started.qsize()


class Request(asyncio.Protocol):
    """The relay's side of one connection to a llama-server (counted as an open request of
    its generation until it closes, as the API relay's connections are)."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def finish(self) -> None:
        assert self.transport is not None
        self.transport.close()

    async def cut(self) -> None:
        """Until the connection is closed (by whoever stops the llama-server)."""
        await asyncio.wait_for(asyncio.shield(self.lost), WAIT_S)


class Host:
    """A Hosting wired to fakes of what the node gives it: peers, streams, tasks."""

    def __init__(self, tmp: Path, **spec: Any) -> None:
        model = tiny_gguf(tmp / "tiny.gguf", tensors=LAYERS)[0]
        engine = Engine(tmp, tmp / "llama-server", None)
        serve = ServeSpec(model=ResolvedModel("tiny", model, 10 * GB), engine=engine,
                          **{"vram_bytes": 16 * GB, **spec})
        self.peers: dict[str, PeerInfo] = {}
        self.streams: asyncio.Queue[tuple[str, StreamType]] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.failures: list[BaseException] = []
        self.held_seen: list[bool] = []  # `held` at each announcement
        self.launcher = Launcher()
        self.changes = ChangeFeed()
        self.hosting = Hosting(spec=serve, logs=tmp, file=FileClaim(None), peer=self.peers.get,
                               open_stream=self._open_stream, changes=self.changes,
                               announce=self._announce,
                               spawn=self._spawn, launch=self.launcher)

    def _announce(self) -> None:
        """What the node does: tell the mesh (here: note `held`) and bump the change feed."""
        self.held_seen.append(self.hosting.held)
        self.changes.bump()

    async def _open_stream(self, peer: str, kind: StreamType) -> Stream:
        self.streams.put_nowait((peer, kind))
        raise ConnectionError("no mesh in this test")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.failures.append(task.exception())  # type: ignore[arg-type]

    def join(self, *workers: Candidate) -> None:
        for w in workers:
            self.peers[w.node_id] = PeerInfo(w.node_id, Announcement(w.node_id))

    def converge(self, host: Candidate, *workers: Candidate) -> None:
        self.join(*workers)
        self.hosting.converge(host, workers)

    async def settle(self) -> None:
        """Until every background task hosting started has finished."""
        while self.tasks:
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), WAIT_S)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        assert await self.changes.wait_until(condition, WAIT_S), what

    async def serving(self, host: Candidate, *workers: Candidate) -> FakeLlama:
        """Converge, let the new llama-server load, and return it."""
        self.converge(host, *workers)
        fake = await self.launcher.next()
        fake.load()
        return fake

    async def request(self) -> Request:
        """An API request relayed to the serving llama-server, open until it finishes."""
        port = self.hosting.serving_port()
        assert port is not None, "nothing serves"
        connect = self.hosting.upstream(port).connect
        assert connect is not None
        request = Request()
        await connect(request)
        return request

    def states(self) -> list[tuple[str, str, int]]:
        return [(g["state"], g["mode"], g["open_requests"])
                for g in self.hosting.generations_json()]
