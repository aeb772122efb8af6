"""What leaves when, over real QUIC on 127.0.0.1 with the bench's UDP proxy (0 ms) between
the ends, which sees every datagram: corked writes (`write_nowait(more=True)`) leave with the
rest of their message, or within cork_s, or past cork_max_bytes; the ACK of a small message
rides on the reply instead of an ACK-only packet, while a bulk transfer is acknowledged at
once and an unanswered message still within ACK_HOLD_S."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh_llm.mesh.quic import Connection, QuicTransport, Stream, TransportSettings
from mesh_llm.mesh.quic.settings import ACK_HOLD_S
from mesh_llm.mesh.quic.timers import ConnectionTimers

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from delay_proxy import UdpDelayProxy  # the bench owns the proxy

ServerHook = Callable[[Stream, bytes], None]
NEVER = 600.0  # a cork that only the rest of the message (or the byte limit) can lift
ACK_ONLY = 100  # bytes: an ACK-only datagram is ~30-50; one with stream data is larger


class WatchingProxy(UdpDelayProxy):
    """The proxy at 0 ms, keeping the sizes of the datagrams the server sends back."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target, 0.0)
        self.from_server: list[int] = []
        self.server_sent = asyncio.Event()

    async def quiet(self) -> None:
        """Until nothing has crossed for 3 × ACK_HOLD_S. After the handshake qh3 probes the
        path MTU (each probe sent when the last one's ACK arrives, and an ACK may wait
        ACK_HOLD_S), and ends may still hold ACKs of the last packets; there is no event for
        "both ends have nothing to send", so the link is watched until it is silent. From
        then on only the test's writes, the cork, the ACK hold and the keepalive (10 s)
        make a transmit."""
        async with asyncio.timeout(30):
            while True:
                seen = self.stats.datagrams
                await asyncio.sleep(3 * ACK_HOLD_S)
                if self.stats.datagrams == seen:
                    return

    def datagrams_received(self, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        if addr[:2] == self.target:
            self.from_server += [len(d) for d in datagrams]
            self.server_sent.set()
        super().datagrams_received(datagrams, addr)


@dataclass
class Link:
    conn: Connection
    stream: Stream
    proxy: WatchingProxy
    got: asyncio.Queue[bytes]  # what the server side receives, one item per delivery
    on_server_data: list[ServerHook]  # each is called with every delivery

    async def received(self, n: int) -> bytes:
        data = b""
        async with asyncio.timeout(10):
            while len(data) < n:
                data += await self.got.get()
        return data


@pytest.fixture
async def link(request: pytest.FixtureRequest) -> AsyncIterator[Link]:
    settings = TransportSettings(**getattr(request, "param", {}))
    got: asyncio.Queue[bytes] = asyncio.Queue()
    server, client = QuicTransport(settings), QuicTransport(settings)
    streams: list[Stream] = []
    hooks: list[ServerHook] = []

    def on_data(data: bytes) -> None:
        got.put_nowait(data)
        for hook in hooks:
            hook(streams[0], data)

    def accepted(conn: Connection) -> None:
        def on_stream(stream: Stream) -> None:
            streams.append(stream)
            stream.set_receiver(on_data)
        conn.on_stream = on_stream

    server.on_connection = accepted
    proxy: WatchingProxy | None = None
    try:
        proxy = WatchingProxy(("127.0.0.1", await server.listen("127.0.0.1", 0)))
        conn = await client.connect("127.0.0.1", await proxy.start(), timeout=10)
        stream = await conn.open_stream()
        stream.write_nowait(b"hi")
        assert await got.get() == b"hi"
        assert await conn.ping(10)
        await proxy.quiet()
        yield Link(conn, stream, proxy, got, hooks)
    finally:
        await client.close()
        await server.close()
        if proxy is not None:
            proxy.close()


@pytest.mark.parametrize("link", [{"cork_s": NEVER}], indirect=True)
async def test_the_pieces_of_a_message_leave_together_when_its_end_is_written(
        link: Link) -> None:
    link.stream.write_nowait(b"a" * 300, more=True)
    link.stream.write_nowait(b"b" * 300, more=True)
    for _ in range(50):  # loop passes: a write that was sent would be read back by now
        await asyncio.sleep(0)
    assert link.got.empty()
    link.stream.write_nowait(b"c" * 300)
    async with asyncio.timeout(10):
        assert await link.got.get() == b"a" * 300 + b"b" * 300 + b"c" * 300


@pytest.mark.parametrize("link", [{"cork_s": NEVER, "cork_max_bytes": 8192}], indirect=True)
async def test_a_cork_holds_no_more_than_cork_max_bytes(link: Link) -> None:
    link.stream.write_nowait(b"x" * 4096, more=True)
    for _ in range(50):
        await asyncio.sleep(0)
    assert link.got.empty()
    link.stream.write_nowait(b"y" * 8192, more=True)  # past the limit: it all goes now
    assert await link.received(4096 + 8192) == b"x" * 4096 + b"y" * 8192


async def test_a_corked_write_with_nothing_after_it_still_leaves(link: Link) -> None:
    link.stream.write_nowait(b"z" * 100, more=True)
    assert await link.received(100) == b"z" * 100


async def test_the_ack_of_a_small_message_rides_on_the_reply(link: Link) -> None:
    """A split's decode step: a few packets out, a reply some milliseconds later. The
    server's ACK of the request goes in the reply's packets, not in one of its own."""
    loop = asyncio.get_running_loop()
    request = 3000  # bytes, 3 packets: qh3 alone would acknowledge them at once
    seen = 0

    def reply_when_whole(stream: Stream, data: bytes) -> None:
        nonlocal seen
        seen += len(data)
        if seen == request:
            loop.call_later(0.003, stream.write_nowait, b"R" * 2000)

    link.on_server_data.append(reply_when_whole)
    link.proxy.from_server.clear()
    link.stream.write_nowait(b"r" * request)
    async with asyncio.timeout(10):
        assert await link.stream.readexactly(2000) == b"R" * 2000
    assert link.proxy.from_server, "the reply crossed the proxy"
    assert min(link.proxy.from_server) > ACK_ONLY, link.proxy.from_server


async def test_a_bulk_transfer_is_acknowledged_at_once(link: Link) -> None:
    link.proxy.from_server.clear()
    link.proxy.server_sent.clear()
    link.stream.write_nowait(b"b" * 64 * 1024)  # ~50 packets, and no reply
    await link.received(64 * 1024)
    async with asyncio.timeout(10):
        await link.proxy.server_sent.wait()
    assert min(link.proxy.from_server) <= ACK_ONLY  # ACK-only packets, before any hold


async def test_an_unanswered_small_message_is_still_acknowledged(link: Link) -> None:
    link.proxy.from_server.clear()
    link.proxy.server_sent.clear()
    link.stream.write_nowait(b"s" * 3000)
    await link.received(3000)
    async with asyncio.timeout(10):  # the hold ends: the ACK goes alone
        await link.proxy.server_sent.wait()
    assert link.proxy.from_server and max(link.proxy.from_server) <= ACK_ONLY


async def test_the_cork_timer_fires_once_and_a_transmit_lifts_it() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    done = asyncio.Event()

    def transmit() -> None:
        timers.transmitting()
        fired.append(loop.time())
        done.set()

    timers = ConnectionTimers(loop, transmit=transmit, on_deadline=lambda _now: None,
                              keepalive=lambda: None, keepalive_s=0, cork_s=0.05)
    timers.transmit_corked()
    timers.transmit_corked()  # one timer, however many corked writes
    async with asyncio.timeout(10):
        await done.wait()
    assert len(fired) == 1
    done.clear()
    timers.transmit_corked()
    timers.transmit_soon()  # the rest of the message: at once, and the cork is lifted
    async with asyncio.timeout(10):
        await done.wait()
    await asyncio.sleep(0.2)  # past the cork's time: it must not fire as well
    assert len(fired) == 2
    timers.stop()
