"""A decode step's traffic in isolation: a burst of KiB out, a small reply back, over an RTT.

A split's decode step for 8 streams sends ~73 KiB host → worker and waits for a small reply,
then the link idles while the host computes. This bench does exactly that, without
llama.cpp, on the split's own path: a TCP client (llama-server's place) writes a --kib
message into the host's RPC tunnel (TunnelListener, a Mesh node), which carries it on a QUIC
stream to the worker (a Mesh node in a child process that joined the host through the UDP
delay proxy, as bench/splitmesh.py does), which relays it to a TCP server (ggml-rpc-server's
place) that answers --reply bytes; then the link idles --gap-ms. The direct path: the same
client and server through the TCP delay proxy. Both in the same run, alternating; both
processes on uvloop, as nodes run. Each exchange's time is reported in ms and in added RTTs,
with the host's QUIC congestion window before the burst (qh3's native core).

    .venv/bin/python bench/burst_rtt.py [--rtt-ms 20] [--kib 73] [--reply 100] [--gap-ms 80]
                                        [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import far_end
from delay_proxy import Spawned
from mesh_llm.mesh import Announcement, Mesh, Stream, StreamType
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.invites import InviteToken, decode_token, encode_token, new_secret, parse_addr
from mesh_llm.mesh.tunnel import TunnelListener, relay_to_tcp

HEADER = struct.Struct(">II")  # request size, reply size


# ---------------------------------------------------------------------------- far end


async def _answer(read_exactly: Any, write: Any) -> None:
    """Serve requests (their size and the reply's, then the bytes) until the stream ends."""
    while True:
        try:
            size, reply = HEADER.unpack(await read_exactly(HEADER.size))
            await read_exactly(size)
        except asyncio.IncompleteReadError:
            return
        await write(bytes(reply))


async def _tcp_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    await _answer(reader.readexactly, write)
    writer.close()


async def _far_end(pipe: Pipe) -> None:
    identity = Identity.generate()
    mesh = Mesh(identity, new_secret(), Announcement(identity.node_id, role="worker"),
                bind_host="127.0.0.1")
    await mesh.start()
    server = await asyncio.start_server(_tcp_worker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def relay(peer_id: str, stream: Stream) -> None:  # as a worker relays to its rpc
        await relay_to_tcp(stream, "127.0.0.1", port)

    mesh.add_stream_handler(StreamType.RPC_TUNNEL, relay)
    loop = asyncio.get_running_loop()
    token = await loop.run_in_executor(None, pipe.recv)  # the host's, naming the proxy
    await mesh.join([token], timeout=15)
    pipe.send(port)
    await loop.run_in_executor(None, pipe.recv)  # until the benchmark says stop
    server.close()
    await mesh.stop()


def _far_end_main(pipe: Pipe) -> None:
    uvloop.run(_far_end(pipe))  # as a node runs (cli.py)


# ---------------------------------------------------------------------------- near end


def _quic_state(mesh: Mesh, peer: str) -> tuple[int, int]:
    """(congestion window, bytes in flight) of the host's connection, 0s if unknown."""
    conn: Any = mesh.connections_to(peer)[-1]
    core = getattr(getattr(conn, "_quic", None), "_core", None)
    return (int(getattr(core, "congestion_window", 0) or 0),
            int(getattr(core, "bytes_in_flight", 0) or 0))


async def _connected_peer(mesh: Mesh, timeout: float = 15.0) -> str:
    """The worker's node id, once the host holds a connection to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node_id, info in mesh.peers.items():
            if info.connected and mesh.connections_to(node_id):
                return node_id
        await asyncio.sleep(0.05)
    raise RuntimeError("the worker did not connect")


async def _exchange(writer: asyncio.StreamWriter, reader: asyncio.StreamReader,
                    payload: bytes, reply: int) -> float:
    start = time.perf_counter()
    writer.write(HEADER.pack(len(payload), reply) + payload)
    await writer.drain()
    await reader.readexactly(reply)
    return (time.perf_counter() - start) * 1e3


async def run(args: argparse.Namespace, pipe: Pipe) -> dict[str, Any]:
    identity = Identity.generate()
    mesh = Mesh(identity, new_secret(), Announcement(identity.node_id, role="host"),
                bind_host="127.0.0.1")
    await mesh.start()
    tok = decode_token(mesh.token())
    proxied = args.rtt_ms > 0  # 0: no proxies at all, both paths straight over loopback
    udp = Spawned("udp", parse_addr(tok.addrs[0]), args.rtt_ms) if proxied else None
    tcp: Spawned | None = None
    try:
        addr = f"127.0.0.1:{udp.port}" if udp is not None else tok.addrs[0]
        pipe.send(encode_token(InviteToken(tok.node_id, [addr], tok.secret)))
        loop = asyncio.get_running_loop()
        tcp_port = await loop.run_in_executor(None, pipe.recv)
        if proxied:
            tcp = Spawned("tcp", ("127.0.0.1", tcp_port), args.rtt_ms)
            tcp_port = tcp.port
        peer = await _connected_peer(mesh)
        tunnel = TunnelListener(lambda: mesh.open_stream(peer, StreamType.RPC_TUNNEL), "bench")
        quic_reader, quic_writer = await asyncio.open_connection(
            "127.0.0.1", await tunnel.start())
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)

        payload = bytes(args.kib * 1024)
        rows: dict[str, list[float]] = {"quic": [], "tcp": []}
        cwnd: list[tuple[int, int]] = []
        for i in range(args.rounds + 3):  # the first three warm up
            state = _quic_state(mesh, peer)
            quic_ms = await _exchange(quic_writer, quic_reader, payload, args.reply)
            await asyncio.sleep(args.gap_ms / 1000)  # the host computing: the link idles
            tcp_ms = await _exchange(writer, reader, payload, args.reply)
            await asyncio.sleep(args.gap_ms / 1000)
            if i >= 3:
                rows["quic"].append(quic_ms)
                rows["tcp"].append(tcp_ms)
                cwnd.append(state)
        quic_writer.close()
        writer.close()
        await tunnel.stop()
        conn = mesh.connections_to(peer)[-1]
        return {"rows": rows, "cwnd": cwnd, "quic_srtt_ms": conn.rtt_ms}
    finally:
        await mesh.stop()
        if udp is not None:
            print(f"  ({udp.stop()})")
        if tcp is not None:
            print(f"  ({tcp.stop()})")


def _stats(samples: list[float], rtt_ms: float) -> dict[str, float]:
    ordered = sorted(samples)
    med = statistics.median(ordered)
    return {"median_ms": med, "p90_ms": ordered[int(len(ordered) * 0.9) - 1],
            "min_ms": ordered[0], "rtts": med / rtt_ms if rtt_ms > 0 else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt-ms", type=float, default=20.0,
                    help="added RTT (default 20; 0: no proxies)")
    ap.add_argument("--kib", type=int, default=73, help="request size in KiB (default 73)")
    ap.add_argument("--reply", type=int, default=100, help="reply size in bytes (default 100)")
    ap.add_argument("--gap-ms", type=float, default=80.0, help="idle between exchanges")
    ap.add_argument("--rounds", type=int, default=40, help="timed exchanges per path")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)

    with far_end(_far_end_main) as here:
        result = uvloop.run(run(args, here))
    quic = _stats(result["rows"]["quic"], args.rtt_ms)
    tcp = _stats(result["rows"]["tcp"], args.rtt_ms)
    cwnds = sorted(c for c, _ in result["cwnd"])
    summary = {"quic": quic, "tcp": tcp, "quic_over_tcp": quic["median_ms"] / tcp["median_ms"],
               "cwnd_median": statistics.median(cwnds) if cwnds else 0,
               "quic_srtt_ms": result["quic_srtt_ms"], "args": vars(args)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.kib} KiB out, {args.reply} B back, {args.gap_ms:g} ms idle between, "
          f"+{args.rtt_ms:g} ms RTT, {args.rounds} exchanges each (medians)")
    print(f"{'':6}{'median':>10}{'p90':>10}{'min':>10}{'RTTs':>7}")
    for name, row in (("QUIC", quic), ("TCP", tcp)):
        print(f"{name:6}{row['median_ms']:>7.1f} ms{row['p90_ms']:>7.1f} ms"
              f"{row['min_ms']:>7.1f} ms{row['rtts']:>7.2f}")
    print(f"QUIC/TCP {summary['quic_over_tcp']:.2f}; host cwnd before a burst: median "
          f"{summary['cwnd_median']} B (min {cwnds[0] if cwnds else 0}, max "
          f"{cwnds[-1] if cwnds else 0}); QUIC srtt {result['quic_srtt_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
