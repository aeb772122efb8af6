"""Mesh transport benchmark: one authenticated QUIC connection vs plain TCP, on loopback.

The far end (a Mesh node plus a TCP server) runs in a child process, as it would on another
machine. Measures, for both paths in the same run:

  * small-message round trip: a 64-byte message echoed back, one at a time (median, p99)
  * bulk throughput: N MiB written into one stream/socket until the far end acks receipt

    .venv/bin/python bench/mesh_transport.py [--rounds 2000] [--bulk-mib 64] [--json]

Targets (DESIGN.md): QUIC RTT median <= 0.3 ms, QUIC bulk >= 30 MiB/s.
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
from typing import Any

from common import far_end
from mesh_llm.mesh import Announcement, Mesh, Stream, StreamType
from mesh_llm.mesh.identity import Identity
from mesh_llm.mesh.invites import new_secret

MiB = 1024 * 1024
MSG = 64
CHUNK = 64 * 1024
RTT_TARGET_MS = 0.3
BULK_TARGET_MIBS = 30.0


# ---------------------------------------------------------------------------- far end


async def _quic_echo(peer_id: str, stream: Stream) -> None:
    while data := await stream.read():
        await stream.write(data)
    stream.close()


async def _quic_sink(peer_id: str, stream: Stream) -> None:
    total = 0
    while data := await stream.read():
        total += len(data)
    await stream.write(struct.pack(">Q", total))
    stream.close()


async def _tcp_serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    mode = await reader.readexactly(1)
    if mode == b"e":
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    else:
        total = 0
        while data := await reader.read(CHUNK):
            total += len(data)
        writer.write(struct.pack(">Q", total))
        await writer.drain()
    writer.close()


async def _far_end(pipe: Pipe) -> None:
    identity = Identity.generate()
    mesh = Mesh(identity, new_secret(), Announcement(identity.node_id, role="worker"),
                bind_host="127.0.0.1")
    await mesh.start()
    mesh.add_stream_handler(StreamType.RPC_TUNNEL, _quic_echo)
    mesh.add_stream_handler(StreamType.HTTP_TUNNEL, _quic_sink)
    server = await asyncio.start_server(_tcp_serve, "127.0.0.1", 0)
    tcp_port = server.sockets[0].getsockname()[1]
    pipe.send((mesh.token(), tcp_port))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # until the benchmark says stop
    server.close()
    await mesh.stop()


def _far_end_main(pipe: Pipe) -> None:
    asyncio.run(_far_end(pipe))


# ---------------------------------------------------------------------------- near end


async def _rtt(write: Any, readexactly: Any, rounds: int) -> list[float]:
    payload = b"x" * MSG
    samples = []
    for i in range(rounds + rounds // 10):
        start = time.perf_counter()
        await write(payload)
        await readexactly(MSG)
        if i >= rounds // 10:  # the first tenth warms up
            samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


async def _bulk(write: Any, finish: Any, total: int) -> float:
    chunk = b"\x5a" * CHUNK
    start = time.perf_counter()
    sent = 0
    while sent < total:
        await write(chunk)
        sent += len(chunk)
    received = await finish()
    elapsed = time.perf_counter() - start
    if received != total:
        raise RuntimeError(f"far end received {received} of {total} bytes")
    return total / MiB / elapsed


async def _bench_quic(token: str, rounds: int, total: int) -> dict[str, Any]:
    identity = Identity.generate()
    mesh = Mesh(identity, new_secret(), Announcement(identity.node_id, role="client"),
                bind_host="127.0.0.1")
    await mesh.start()
    try:
        peer = await mesh.join([token], timeout=10)
        assert peer is not None
        echo = await mesh.open_stream(peer, StreamType.RPC_TUNNEL)
        rtt = _summary(await _rtt(echo.write, echo.readexactly, rounds))
        echo.write_eof()
        echo.close()

        sink = await mesh.open_stream(peer, StreamType.HTTP_TUNNEL)

        async def finish() -> int:
            sink.write_eof()
            return int(struct.unpack(">Q", await sink.readexactly(8))[0])

        bulk = await _bulk(sink.write, finish, total)
        sink.close()
        conn = mesh.connections_to(peer)[0]
        return {**rtt, "bulk_mibs": bulk, "quic_srtt_ms": conn.rtt_ms}
    finally:
        await mesh.stop()


async def _bench_tcp(port: int, rounds: int, total: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"e")

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    rtt = _summary(await _rtt(write, reader.readexactly, rounds))
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"s")

    async def finish() -> int:
        writer.write_eof()
        return int(struct.unpack(">Q", await reader.readexactly(8))[0])

    bulk = await _bulk(write, finish, total)
    writer.close()
    return {**rtt, "bulk_mibs": bulk}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000, help="round trips to time")
    parser.add_argument("--bulk-mib", type=int, default=64, help="MiB for the bulk test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    with far_end(_far_end_main) as here:
        if not here.poll(30):
            raise RuntimeError("far end did not start")
        token, tcp_port = here.recv()
        total = args.bulk_mib * MiB
        quic = asyncio.run(_bench_quic(token, args.rounds, total))
        tcp = asyncio.run(_bench_tcp(tcp_port, args.rounds, total))

    ratios = {
        "rtt_median_quic_over_tcp": quic["median_ms"] / tcp["median_ms"],
        "rtt_p99_quic_over_tcp": quic["p99_ms"] / tcp["p99_ms"],
        "bulk_quic_over_tcp": quic["bulk_mibs"] / tcp["bulk_mibs"],
    }
    ok = quic["median_ms"] <= RTT_TARGET_MS and quic["bulk_mibs"] >= BULK_TARGET_MIBS
    result = {"quic": quic, "tcp": tcp, "ratios": ratios, "targets_met": ok,
              "rounds": args.rounds, "bulk_mib": args.bulk_mib}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"mesh transport on loopback ({args.rounds} round trips of {MSG} B, "
          f"{args.bulk_mib} MiB bulk; far end in a child process)")
    print(f"{'':8}{'RTT median':>12}{'RTT p99':>12}{'bulk':>14}")
    for name, row in (("QUIC", quic), ("TCP", tcp)):
        print(f"{name:8}{row['median_ms']:>9.3f} ms{row['p99_ms']:>9.3f} ms"
              f"{row['bulk_mibs']:>9.1f} MiB/s")
    print(f"{'QUIC/TCP':8}{ratios['rtt_median_quic_over_tcp']:>11.2f}x"
          f"{ratios['rtt_p99_quic_over_tcp']:>11.2f}x{ratios['bulk_quic_over_tcp']:>13.2f}x")
    srtt = quic["quic_srtt_ms"]
    print(f"QUIC's own smoothed RTT after the bulk run: "
          f"{'n/a' if srtt is None else f'{srtt:.3f} ms'} (queueing and ACK delay included)")
    print(f"targets (QUIC RTT median <= {RTT_TARGET_MS} ms, bulk >= {BULK_TARGET_MIBS:g} "
          f"MiB/s): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
