"""A cable with a user-space delay: carries Ethernet frames between two interfaces of a
NAT lab namespace (tests/natlab.py, `home(..., wire=True)`), holding each for a fixed
one-way delay in each direction, so a link's RTT grows by twice that. These kernels have
no netem qdisc; this is the lab's stand-in for it.

    ip netns exec NS .venv/bin/python bench/wire.py [--one-way-ms 10] [--ends in,out]

It prints `carrying` once both ends are open, and runs until SIGTERM or SIGINT, then
prints what it carried. Frames are read one datagram each (the lab turns GSO off towards
the wire); an IPv4 UDP datagram's checksum is set to 0 ("none", RFC 768) on the way,
because a frame read from a veth may carry a checksum its sender left to be computed
later. Order is kept (bench/delay_proxy.py's DelayLine, one per direction); nothing is
throttled, and a direction holding over 32 MiB drops, like a full router queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delay_proxy import MAX_HELD_BYTES, SOCKET_BUFFER, DelayLine, Stats

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
FRAME_MAX = 65536


def clear_udp_checksum(frame: bytearray) -> None:
    """IPv4 UDP: checksum 0 (none); anything else is left as it is."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return
    udp = 14 + (frame[14] & 0x0F) * 4
    if len(frame) >= udp + 8:
        frame[udp + 6:udp + 8] = b"\x00\x00"


class End:
    """One interface, read and written whole frames at a time."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        with contextlib.suppress(OSError):
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)

    def read_all(self) -> list[bytearray]:
        frames = []
        while True:
            try:
                data, addr = self.sock.recvfrom(FRAME_MAX)
            except BlockingIOError:
                return frames
            if addr[2] == PACKET_OUTGOING:
                continue
            frame = bytearray(data)
            clear_udp_checksum(frame)
            frames.append(frame)

    def write(self, frames: list[bytearray], stats: Stats) -> None:
        for frame in frames:
            try:
                self.sock.send(frame)
            except OSError:
                stats.dropped += 1


class Wire:
    def __init__(self, ends: tuple[str, str], one_way_ms: float) -> None:
        self.ends = (End(ends[0]), End(ends[1]))
        self.stats = Stats()
        delay = one_way_ms / 1000
        self.lines = tuple(DelayLine(delay, lambda frames, to=to: to.write(frames, self.stats))
                           for to in (self.ends[1], self.ends[0]))
        loop = asyncio.get_running_loop()
        for end, line in zip(self.ends, self.lines, strict=True):
            loop.add_reader(end.sock.fileno(), self._carry, end, line)

    def _carry(self, end: End, line: DelayLine) -> None:
        frames = end.read_all()
        size = sum(len(f) for f in frames)
        if not frames:
            return
        if line.held + size > MAX_HELD_BYTES:
            self.stats.dropped += len(frames)
            return
        self.stats.datagrams += len(frames)
        self.stats.batches += 1
        self.stats.bytes += size
        line.put(frames, size)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for end, line in zip(self.ends, self.lines, strict=True):
            loop.remove_reader(end.sock.fileno())
            line.close()
            end.sock.close()


async def serve(ends: tuple[str, str], one_way_ms: float) -> None:
    wire = Wire(ends, one_way_ms)
    print("carrying", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    wire.close()
    s = wire.stats
    print(f"wire: {s.bytes} bytes, {s.datagrams} frames in {s.batches} reads, "
          f"{s.dropped} dropped", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one-way-ms", type=float, default=10.0,
                    help="delay each way (the RTT grows by twice it; default 10)")
    ap.add_argument("--ends", default="in,out", help="the two interfaces (default in,out)")
    args = ap.parse_args()
    first, _, second = args.ends.partition(",")
    asyncio.run(serve((first, second), args.one_way_ms))


if __name__ == "__main__":
    main()
