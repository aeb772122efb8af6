"""The API relay on real sockets against upstreams that misbehave in ways llama-server
cannot be made to: a slow reader of a big stream, a stream cut off, garbage, silence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from mesh_llm.api.proxy import ApiProxy, Upstream

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


class Relay:
    """ApiProxy on 127.0.0.1 in front of `upstream`, plus a client session."""

    def __init__(self, upstream: Upstream) -> None:
        self.proxy = ApiProxy(lambda: upstream)
        self.runner = web.AppRunner(self.proxy.app(), handler_cancellation=True)
        self.session = aiohttp.ClientSession()
        self.url = ""

    async def start(self) -> Relay:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()


@pytest.fixture
async def relay() -> AsyncIterator[Callable[..., Awaitable[Relay]]]:
    made: list[Relay] = []
    runners: list[web.AppRunner] = []

    async def make(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Relay:
        app = web.Application()
        app.router.add_post(CHAT, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        made.append(await Relay(Upstream.tcp("127.0.0.1", runner.addresses[0][1])).start())
        return made[-1]

    yield make
    for r in made:
        await r.close()
    for runner in runners:
        await runner.cleanup()


async def raw_server(answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                      Awaitable[None]]) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_reader_that_stops_holds_the_upstream_back(relay) -> None:  # type: ignore[no-untyped-def]
    """A client that stops reading must stall the upstream (backpressure), not make the
    relay buffer the whole stream; once it reads again every byte arrives in order."""
    event = b"data: " + bytes(range(256)) * 4096 + b"\n\n"  # ~1 MiB per event
    blocked = asyncio.Event()
    written: list[bytes] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(256):  # up to 256 MiB if nothing held it back
            piece = b"%06d" % i + event
            write = asyncio.ensure_future(out.write(piece))
            done, _ = await asyncio.wait({write}, timeout=0.5)
            if not done:
                blocked.set()  # held back: finish this write once the client reads, then end
            await write
            written.append(piece)
            if blocked.is_set():
                break
        await out.write_eof()
        return out

    r = await relay(stream)
    async with r.session.post(r.url + CHAT, json=BODY) as resp:
        assert resp.status == 200
        first = await resp.content.readexactly(1024)
        await asyncio.wait_for(blocked.wait(), 30)
        held = sum(map(len, written))
        assert held < 64 * 1024 * 1024, f"{held} bytes went out before the upstream stalled"
        received = first + await resp.content.read()
    assert received == b"".join(written)
    assert r.proxy.in_flight == 0


async def test_a_stream_cut_off_ends_with_an_error_event(relay) -> None:  # type: ignore[no-untyped-def]
    async def cut(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        await out.write(b'data: {"choices": []}\n\n')
        assert request.transport is not None
        request.transport.abort()  # mid-body: no terminating chunk
        return out

    r = await relay(cut)
    async with r.session.post(r.url + CHAT, json=BODY) as resp:
        text = await resp.text()
    events = [e for e in text.split("\n\n") if e]
    assert events[0] == 'data: {"choices": []}'
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert "broke off" in error["message"] and error["type"] == "unavailable"


@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",                         # not HTTP
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 70_000,         # a head without end
    b"",                                                      # closed at once
])
async def test_garbage_from_upstream_is_a_502_json(reply: bytes) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server, port = await raw_server(answer)
    r = await Relay(Upstream.tcp("127.0.0.1", port)).start()
    try:
        async with r.session.post(r.url + CHAT, json={**BODY, "stream": False}) as resp:
            assert resp.status == 502
            body = await resp.json()
        assert body["error"]["type"] == "unavailable"
        assert r.proxy.in_flight == 0
    finally:
        await r.close()
        server.close()


async def test_no_upstream_listening_is_a_502_json() -> None:
    server, port = await raw_server(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()  # the port is free again: connecting is refused
    r = await Relay(Upstream.tcp("127.0.0.1", port)).start()
    try:
        async with r.session.post(r.url + CHAT, json=BODY) as resp:
            assert resp.status == 502
            assert "did not answer" in (await resp.json())["error"]["message"]
    finally:
        await r.close()


async def test_a_client_gone_mid_stream_closes_the_upstream(relay) -> None:  # type: ignore[no-untyped-def]
    closed = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        try:
            while True:
                await out.write(b"data: {}\n\n")
                await asyncio.sleep(0.005)
        except (ConnectionResetError, asyncio.CancelledError):
            closed.set()
            raise

    r = await relay(endless)
    async with r.session.post(r.url + CHAT, json=BODY) as resp:
        assert (await resp.content.readuntil(b"\n\n")) == b"data: {}\n\n"
        resp.close()
    await asyncio.wait_for(closed.wait(), 10)
    assert r.proxy.in_flight == 0
