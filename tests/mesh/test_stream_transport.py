"""StreamTransport over real QUIC: a protocol runs on a mesh stream as on a socket, and a
paused reader cannot make it hold an unbounded amount of what the peer sends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from mesh_llm.mesh import Mesh, tunnel
from mesh_llm.mesh.protocol import StreamType
from mesh_llm.mesh.quic import Stream
from mesh_llm.mesh.tunnel import stream_connect

MakeMesh = Callable[..., Awaitable[Mesh]]  # the make_mesh fixture, from conftest.py

CHUNK = b"x" * 16384


class Recorder(asyncio.Protocol):
    def __init__(self, pause: bool) -> None:
        self.pause = pause
        self.data = bytearray()
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pause:
            self.transport.pause_reading()
        self.transport.write(b"ping")

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def pair(make_mesh: MakeMesh, chunks: int):  # type: ignore[no-untyped-def]
    a = await make_mesh(role="host")
    b = await make_mesh()
    await b.join([a.token()])
    sent = asyncio.Event()

    async def serve(_peer: str, stream: Stream) -> None:
        assert await stream.readexactly(4) == b"ping"
        try:
            for _ in range(chunks):
                await stream.write(CHUNK)
            stream.write_eof()
            sent.set()
        except ConnectionError:
            pass  # reset by the reader's side

    a.add_stream_handler(StreamType.HTTP_TUNNEL, serve)
    return stream_connect(lambda: b.open_stream(a.node_id, StreamType.HTTP_TUNNEL)), sent


async def test_a_protocol_runs_on_a_mesh_stream(make_mesh: MakeMesh) -> None:
    connect, _ = await pair(make_mesh, 64)
    reader = Recorder(pause=False)
    await connect(reader)
    assert await asyncio.wait_for(reader.lost, 10) is None
    assert bytes(reader.data) == CHUNK * 64


async def test_paused_then_resumed_gets_everything_in_order(make_mesh: MakeMesh) -> None:
    connect, sent = await pair(make_mesh, 64)
    reader = Recorder(pause=True)
    await connect(reader)
    await asyncio.wait_for(sent.wait(), 10)  # all of it sent while we hold it unread
    assert not reader.data and not reader.lost.done()
    assert reader.transport is not None
    reader.transport.resume_reading()
    assert await asyncio.wait_for(reader.lost, 10) is None
    assert bytes(reader.data) == CHUNK * 64


async def test_a_paused_reader_is_cut_off_at_the_bound(make_mesh: MakeMesh,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnel, "MAX_HELD_BYTES", 256 * 1024)
    connect, _ = await pair(make_mesh, 1024)  # 16 MiB offered
    reader = Recorder(pause=True)
    await connect(reader)
    exc = await asyncio.wait_for(reader.lost, 10)
    assert isinstance(exc, ConnectionError) and "nobody read" in str(exc)
    assert not reader.data
