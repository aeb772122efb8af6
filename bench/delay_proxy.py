"""Userspace delay proxies for 127.0.0.1: added latency without netem.

`UdpDelayProxy` forwards datagrams between one client and a target (QUIC between two
nodes) and `TcpDelayProxy` forwards TCP connections (llama-server → ggml-rpc-server); both
hold every datagram or chunk for a fixed one-way delay in each direction, so the RTT grows by
twice that. Order is kept (one FIFO per direction, sends scheduled with loop.call_later) and
nothing is throttled. Bounds: bytes held per direction (UDP drops beyond it, like a full
router queue; TCP stops reading until it drains) and the number of TCP connections.

    .venv/bin/python bench/delay_proxy.py udp --target 127.0.0.1:PORT [--rtt-ms 20] [--port P]
    .venv/bin/python bench/delay_proxy.py tcp --target 127.0.0.1:PORT [--rtt-ms 20] [--port P]

Standalone it prints `listening 127.0.0.1:PORT` on its first line and runs until SIGTERM or
SIGINT, then prints what it forwarded. `Spawned` runs it as a child process that way.
`check` measures both proxies against echo servers: RTT without and with the proxy, and
TCP bulk throughput (everything in one process).

    .venv/bin/python bench/delay_proxy.py check [--rtt-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh_llm.mesh.quic.qh3_adapter import BatchedDatagramProtocol, open_udp

HOST = "127.0.0.1"
MAX_HELD_BYTES = 32 * 1024 * 1024  # per direction
MAX_TCP_CONNECTIONS = 64
SOCKET_BUFFER = 4 * 1024 * 1024
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass
class Stats:
    datagrams: int = 0
    batches: int = 0  # UDP: receive calls that brought the datagrams (recvmmsg/GRO)
    bytes: int = 0
    dropped: int = 0  # UDP: over MAX_HELD_BYTES, or from a second client
    connections: int = 0


class DelayLine:
    """A FIFO that hands each item to `deliver` `delay` seconds after it was put in."""

    def __init__(self, delay: float, deliver: Callable[[Any], None],
                 on_drained: Callable[[], None] | None = None) -> None:
        self.delay = delay
        self.deliver = deliver
        self.on_drained = on_drained
        self.held = 0  # bytes
        self._queue: collections.deque[tuple[float, Any, int]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def put(self, item: Any, size: int) -> None:
        self._queue.append((self._loop.time() + self.delay, item, size))
        self.held += size
        if self._timer is None:
            self._timer = self._loop.call_later(self.delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self._loop.time()
        while self._queue and self._queue[0][0] <= now + 0.0002:
            _, item, size = self._queue.popleft()
            self.held -= size
            self.deliver(item)
        if self._queue:
            self._timer = self._loop.call_later(max(0.0, self._queue[0][0] - now), self._flush)
        elif self.on_drained is not None:
            self.on_drained()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()
        self.held = 0


# ---------------------------------------------------------------------------- UDP


class UdpDelayProxy(BatchedDatagramProtocol):
    """127.0.0.1:port ⇄ target. The first sender that is not the target becomes the client;
    datagrams from any other address are dropped.

    Batched I/O, as the nodes' own sockets (recvmmsg/GRO in, GSO out, through qh3's
    transport): a plain asyncio socket costs a Python callback and a syscall per datagram,
    which on a loaded machine adds milliseconds to a burst that a router forwards in
    microseconds, and that the TCP proxy, moving a burst in a few large chunks, never pays."""

    def __init__(self, target: tuple[str, int], one_way_ms: float, port: int = 0) -> None:
        super().__init__()
        check_loopback(target[0])
        self.target = (HOST if target[0] == "localhost" else target[0], target[1])
        self.one_way_ms = one_way_ms
        self.port = port
        self.client: tuple[str, int] | None = None
        self.stats = Stats()
        self._to_target: DelayLine | None = None
        self._to_client: DelayLine | None = None

    async def start(self) -> int:
        delay = self.one_way_ms / 1000
        self._to_target = DelayLine(delay, lambda batch: self.send_many(batch, self.target))
        self._to_client = DelayLine(delay, self._send_to_client)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):  # as large as the nodes' own
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((HOST, self.port))
        sock.setblocking(False)
        await open_udp(self, sock)
        self.port = sock.getsockname()[1]
        return self.port

    def datagrams_received(self, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        if addr[:2] == self.target:
            line = self._to_client
        else:
            if self.client is None:
                self.client = addr[:2]
            line = self._to_target if addr[:2] == self.client else None
        size = sum(len(d) for d in datagrams)
        if line is None or line.held + size > MAX_HELD_BYTES:
            self.stats.dropped += len(datagrams)
            return
        self.stats.datagrams += len(datagrams)
        self.stats.batches += 1
        self.stats.bytes += size
        line.put(datagrams, size)

    def _send_to_client(self, batch: list[bytes]) -> None:
        if self.client is not None:
            self.send_many(batch, self.client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while a node restarts: the datagram is simply lost

    def close(self) -> None:
        for line in (self._to_target, self._to_client):
            if line is not None:
                line.close()
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------------- TCP


class _Side(asyncio.Protocol):
    """One socket of a proxied TCP connection; `other` is where its bytes go."""

    def __init__(self, delay: float, stats: Stats,
                 on_made: Callable[[_Side], None] | None = None) -> None:
        self.delay = delay
        self.stats = stats
        self.on_made = on_made  # the accepted side: connect upstream, reading paused meanwhile
        self.other: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.outbox: DelayLine | None = None  # bytes waiting to be written to this socket
        self.closed = False
        self._write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.outbox = DelayLine(self.delay, self._write, self._maybe_resume_other)
        if self.on_made is not None:
            self.transport.pause_reading()
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.outbox is None:
            return
        self.stats.bytes += len(data)
        other.outbox.put(data, len(data))
        if other.outbox.held > MAX_HELD_BYTES and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # close; connection_lost passes the close on, after the delay

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.outbox is not None:
            self.outbox.close()
        other = self.other
        if other is not None and other.outbox is not None and not other.closed:
            other.outbox.put(None, 0)  # close the other side once what precedes is written

    def _write(self, data: bytes | None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if data is None:
            self.transport.close()
        else:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._maybe_resume_other()

    def _maybe_resume_other(self) -> None:
        other = self.other
        if (other is not None and other.transport is not None and not other.closed
                and not self._write_paused and self.outbox is not None
                and self.outbox.held <= MAX_HELD_BYTES // 2):
            other.transport.resume_reading()


class TcpDelayProxy:
    """127.0.0.1:port → target for each accepted connection, delayed both ways."""

    def __init__(self, target: tuple[str, int], one_way_ms: float, port: int = 0) -> None:
        check_loopback(target[0])
        self.target = target
        self.one_way_ms = one_way_ms
        self.port = port
        self.stats = Stats()
        self._server: asyncio.Server | None = None
        self._sides: set[_Side] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accepted, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def _accepted(self) -> _Side:
        return _Side(self.one_way_ms / 1000, self.stats, self._spawn_connect)

    def _spawn_connect(self, down: _Side) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(down))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, down: _Side) -> None:
        assert down.transport is not None
        self._sides.difference_update([s for s in self._sides if s.closed])
        if len(self._sides) // 2 >= MAX_TCP_CONNECTIONS:
            down.transport.close()
            return
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(
                lambda: _Side(self.one_way_ms / 1000, self.stats), *self.target)
        except OSError:
            down.transport.close()
            return
        down.other, up.other = up, down
        self._sides.update((down, up))
        self.stats.connections += 1
        if down.closed:
            up.transport.close()  # type: ignore[union-attr]
        else:
            down.transport.resume_reading()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for side in self._sides:
            if side.transport is not None:
                side.transport.close()
        for task in self._tasks:
            task.cancel()


# ---------------------------------------------------------------------------- helpers


def check_loopback(host: str) -> None:
    if host not in LOOPBACK and not host.startswith("127."):
        raise ValueError(f"delay proxies stay on this machine: {host} is not a loopback host")


def parse_target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    check_loopback(host)
    return host, int(port)


class Spawned:
    """A proxy running as a child process (its CPU is not the benchmark client's)."""

    def __init__(self, kind: str, target: tuple[str, int], rtt_ms: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), kind, "--target",
             f"{target[0]}:{target[1]}", "--rtt-ms", str(rtt_ms)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.proc.kill()
            raise RuntimeError(f"{kind} delay proxy did not start: {line}")
        self.port = int(line[1].rpartition(":")[2])
        self.stats = ""

    def stop(self) -> str:
        """SIGTERM; returns its closing line (what it forwarded)."""
        if self.proc.poll() is None:
            self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            out, _ = self.proc.communicate(timeout=5)
            self.stats = out.strip()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self.stats


async def serve(kind: str, target: tuple[str, int], rtt_ms: float, port: int) -> None:
    proxy: UdpDelayProxy | TcpDelayProxy
    cls = UdpDelayProxy if kind == "udp" else TcpDelayProxy
    proxy = cls(target, rtt_ms / 2, port)
    bound = await proxy.start()
    print(f"listening {HOST}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    proxy.close()
    s = proxy.stats
    print(f"{kind} proxy: {s.bytes} bytes, {s.datagrams} datagrams in {s.batches} batches, "
          f"{s.dropped} dropped, {s.connections} connections", flush=True)


# ---------------------------------------------------------------------------- check


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


async def _tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


def _summary(rtts: list[float]) -> tuple[float, float]:
    rtts = sorted(rtts)
    return statistics.median(rtts), rtts[int(len(rtts) * 0.99) - 1]


async def _udp_rtts(port: int, n: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_UdpClient,
                                                            remote_addr=(HOST, port))
    rtts = []
    for i in range(n):
        start = time.perf_counter()
        transport.sendto(i.to_bytes(8, "little") * 8)
        await asyncio.wait_for(client.replies.get(), 5)
        rtts.append((time.perf_counter() - start) * 1e3)
    transport.close()
    return _summary(rtts)


async def _tcp_rtts_bulk(port: int, n: int, bulk: int) -> tuple[float, float, float]:
    reader, writer = await asyncio.open_connection(HOST, port)
    rtts = []
    for _ in range(n):
        start = time.perf_counter()
        writer.write(bytes(64))
        await reader.readexactly(64)
        rtts.append((time.perf_counter() - start) * 1e3)
    blob = bytes(bulk)
    start = time.perf_counter()

    async def send() -> None:
        writer.write(blob)
        await writer.drain()

    sender = asyncio.create_task(send())
    await reader.readexactly(bulk)
    await sender
    mib_s = bulk / (1 << 20) / (time.perf_counter() - start)
    writer.close()
    return (*_summary(rtts), mib_s)


async def check(rtt_ms: float, n: int = 200, bulk: int = 64 << 20) -> None:
    """RTT (median, p99) and TCP echo bulk throughput, without and with each proxy."""
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=(HOST, 0))
    echo_port = echo.get_extra_info("sockname")[1]
    udp = UdpDelayProxy((HOST, echo_port), rtt_ms / 2)
    udp_base, udp_via = await _udp_rtts(echo_port, n), await _udp_rtts(await udp.start(), n)
    server = await asyncio.start_server(_tcp_echo, HOST, 0)
    tcp_port = server.sockets[0].getsockname()[1]
    tcp = TcpDelayProxy((HOST, tcp_port), rtt_ms / 2)
    tcp_base = await _tcp_rtts_bulk(tcp_port, n, bulk)
    tcp_via = await _tcp_rtts_bulk(await tcp.start(), n, bulk)
    for closing in (udp, tcp, echo):
        closing.close()
    await asyncio.sleep(0.2)  # the echo handlers see their clients' EOF and end
    server.close()
    await server.wait_closed()
    print(f"asked for +{rtt_ms:g} ms RTT; {n} round trips of 64 B, {bulk >> 20} MiB echoed")
    print("| | RTT median | p99 | added (median) | TCP echo bulk |")
    print("|---|---|---|---|---|")
    rows = [("UDP direct", udp_base, None), ("UDP via proxy", udp_via, None),
            ("TCP direct", tcp_base[:2], tcp_base[2]), ("TCP via proxy", tcp_via[:2], tcp_via[2])]
    for name, (med, p99), mib_s in rows:
        base = udp_base[0] if name.startswith("UDP") else tcp_base[0]
        bulk_text = f"{mib_s:.0f} MiB/s" if mib_s is not None else "–"
        print(f"| {name} | {med:.3f} ms | {p99:.3f} ms | {med - base:+.3f} ms | {bulk_text} |")
    print(f"TCP bulk via proxy / direct: {tcp_via[2] / tcp_base[2]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=("udp", "tcp", "check"))
    ap.add_argument("--target", type=parse_target, metavar="127.0.0.1:PORT")
    ap.add_argument("--rtt-ms", type=float, default=20.0,
                    help="added round-trip time (half of it each way; default 20)")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: any)")
    args = ap.parse_args()
    if args.kind == "check":
        asyncio.run(check(args.rtt_ms))
        return
    if args.target is None:
        ap.error(f"{args.kind} needs --target 127.0.0.1:PORT")
    asyncio.run(serve(args.kind, args.target, args.rtt_ms, args.port))


if __name__ == "__main__":
    main()
