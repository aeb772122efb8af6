"""The UDP delay proxy the benches put between two nodes (bench/delay_proxy.py): a burst
crosses it whole, in order, and in a few batched receives rather than one Python callback
and syscall per datagram (which cost a 73 KiB decode step ~3 ms that the TCP proxy, moving
it in a few chunks, never paid: the mesh/direct comparison was skewed by the tool)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from mesh_llm.mesh.quic.qh3_adapter import BatchedDatagramProtocol, open_udp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from delay_proxy import UdpDelayProxy  # the bench owns the proxy

BURST = 62  # datagrams: a 73 KiB decode step in 1.2 KB packets
SIZE = 1200


class Endpoint(BatchedDatagramProtocol):
    """A node's side of the link: batched sends, and what arrived, in order."""

    def __init__(self, expect: int) -> None:
        super().__init__()
        self.expect = expect
        self.received: list[bytes] = []
        self.arrived = asyncio.Event()  # set once `expect` datagrams are in

    def datagrams_received(self, datagrams: list[bytes], addr: object) -> None:
        self.received.extend(datagrams)
        if len(self.received) >= self.expect:
            self.arrived.set()


class CountingProxy(UdpDelayProxy):
    """The proxy, counting the receive callbacks it gets (per datagram, or per batch)."""

    calls = 0

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.calls += 1
        super().datagram_received(data, addr)

    def datagrams_received(self, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        self.calls += 1
        super().datagrams_received(datagrams, addr)


async def endpoint(expect: int) -> tuple[Endpoint, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    ep = Endpoint(expect)
    await open_udp(ep, sock)
    return ep, sock.getsockname()[1]


async def test_a_burst_crosses_whole_in_order_and_batched() -> None:
    target, target_port = await endpoint(BURST)
    client, _ = await endpoint(1)
    proxy = CountingProxy(("127.0.0.1", target_port), one_way_ms=5)
    port = await proxy.start()
    try:
        burst = [i.to_bytes(2, "big") * (SIZE // 2) for i in range(BURST)]
        client.send_many(burst, ("127.0.0.1", port))
        async with asyncio.timeout(10):
            await target.arrived.wait()
        assert target.received == burst
        stats = proxy.stats
        assert (stats.datagrams, stats.bytes, stats.dropped) == (BURST, BURST * SIZE, 0)
        # One receive per datagram would be 62 Python callbacks and syscalls.
        assert proxy.calls <= 8 and stats.batches == proxy.calls, (proxy.calls, stats)
        target.send_many([b"reply"], ("127.0.0.1", port))  # the far end answers: back out
        async with asyncio.timeout(10):
            await client.arrived.wait()
        assert client.received == [b"reply"]
    finally:
        proxy.close()
        for ep in (target, client):
            assert ep.transport is not None
            ep.transport.close()
