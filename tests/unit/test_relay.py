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
from upstreams import OneUpstream, serve_on_loopback, tcp_upstream

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


class Relay:
    """ApiProxy on 127.0.0.1 in front of `upstream`, plus a client session."""

    def __init__(self, upstream: Upstream) -> None:
        self.proxy = ApiProxy(OneUpstream(lambda: upstream))
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
        runner = await serve_on_loopback(app)
        runners.append(runner)
        made.append(await Relay(tcp_upstream("127.0.0.1", runner.addresses[0][1])).start())
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
    r = await Relay(tcp_upstream("127.0.0.1", port)).start()
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
    r = await Relay(tcp_upstream("127.0.0.1", port)).start()
    try:
        async with r.session.post(r.url + CHAT, json=BODY) as resp:
            assert resp.status == 502
            assert "did not answer" in (await resp.json())["error"]["message"]
    finally:
        await r.close()


STREAM_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                 b"10\r\ndata: {\"n\": 1}\n\n\r\n" b"e\r\ndata: [DONE]\n\n\r\n" b"0\r\n\r\n")


async def test_a_connection_closed_before_any_answer_is_sent_again_at_once() -> None:
    """The race of a connection closed under us just as the request goes out (a keep-alive
    connection the server drops, a server that closes what it accepted): not one byte came
    back, so the relay sends the request again on a fresh connection instead of a 502."""
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        if len(requests) > 1:  # the first connection closes without a byte
            writer.write(STREAM_ANSWER)
            await writer.drain()
        writer.close()

    server, port = await raw_server(answer)
    r = await Relay(tcp_upstream("127.0.0.1", port)).start()
    try:
        async with r.session.post(r.url + CHAT, json=BODY) as resp:
            status, text = resp.status, await resp.text()
        assert status == 200, text
        assert text == 'data: {"n": 1}\n\ndata: [DONE]\n\n'
        assert len(requests) == 2 and requests[0] == requests[1]
        assert r.proxy.in_flight == 0
    finally:
        await r.close()
        server.close()


async def test_back_to_back_streams_through_an_upstream_that_closes_after_each(relay) -> None:  # type: ignore[no-untyped-def]
    """The solo test's pattern on both hops: a pooled client connection to the relay, an
    upstream that closes its connection after every answer; every stream arrives whole."""
    async def stream(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                          "Connection": "close"})
        out.force_close()
        await out.prepare(request)
        for i in range(20):
            await out.write(f"data: {i}\n\n".encode())
        await out.write(b"data: [DONE]\n\n")
        await out.write_eof()
        return out

    r = await relay(stream)
    expected = "".join(f"data: {i}\n\n" for i in range(20)) + "data: [DONE]\n\n"
    for n in range(6):
        async with r.session.post(r.url + CHAT, json=BODY) as resp:
            status, text = resp.status, await resp.text()
        assert (status, text) == (200, expected), f"stream {n + 1}"
    assert r.proxy.in_flight == 0


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


# ---------- the API's own edges: body checks, HEAD, Host and Origin ----------

async def _models_upstream() -> web.AppRunner:
    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    return await serve_on_loopback(app)


@pytest.mark.parametrize(("data", "fragment"), [
    (b"[" * 2048, "nested too deeply"),            # RecursionError in the decoder
    (b'{"a": ' * 2048 + b"1" + b"}" * 2048, "nested too deeply"),
    (b"\xff\xfe{}", "not valid JSON"),
    ('{"messages": []}'.encode("utf-16"), "not valid JSON"),  # json.loads would guess it
    (b'{"temperature": NaN}', "not valid JSON"),
    (b'{"a": 1', "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
])
async def test_bad_bodies_are_400_json_and_never_relayed(relay, data: bytes,  # type: ignore[no-untyped-def]
                                                         fragment: str) -> None:
    calls: list[bytes] = []

    async def record(request: web.Request) -> web.Response:
        calls.append(await request.read())
        return web.json_response({})

    r = await relay(record)
    async with r.session.post(r.url + CHAT, data=data,
                              headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"].startswith("application/json")
        error = (await resp.json())["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"] == 400
    assert calls == []


async def test_head_on_models_is_a_405_json_not_a_502() -> None:
    upstream = await _models_upstream()
    r = await Relay(tcp_upstream("127.0.0.1", upstream.addresses[0][1])).start()
    try:
        async with r.session.head(r.url + "/v1/models") as resp:
            assert resp.status == 405
            assert resp.headers["Content-Type"].startswith("application/json")
            assert "GET" in resp.headers["Allow"]
        async with r.session.get(r.url + "/v1/models") as resp:
            assert resp.status == 200 and (await resp.json())["data"][0]["id"] == "m"
        async with r.session.head(r.url + "/health") as resp:
            assert resp.status == 200  # a real HEAD answer: the GET's head, no body
        async with r.session.put(r.url + "/v1/models") as resp:
            assert resp.status == 405 and (await resp.json())["error"]["code"] == 405
    finally:
        await r.close()
        await upstream.cleanup()


async def test_foreign_host_and_origin_are_403_json() -> None:
    upstream = await _models_upstream()
    r = await Relay(tcp_upstream("127.0.0.1", upstream.addresses[0][1])).start()
    port = r.url.rsplit(":", 1)[1]
    try:
        for path in ("/health", "/v1/models"):
            for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io"):
                async with r.session.get(r.url + path, headers={"Host": host}) as resp:
                    assert resp.status == 403, (path, host)
                    assert (await resp.json())["error"]["type"] == "permission_error"
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}",
                         f"LOCALHOST:{port}"):
                async with r.session.get(r.url + path, headers={"Host": host}) as resp:
                    assert resp.status == 200, (path, host)
        for origin in ("http://attacker.example", "null", f"http://attacker.example:{port}"):
            async with r.session.post(r.url + CHAT, json=BODY,
                                      headers={"Origin": origin}) as resp:
                assert resp.status == 403, origin
                assert "cross-origin" in (await resp.json())["error"]["message"]
        async with r.session.post(r.url + CHAT, json=BODY,
                                  headers={"Origin": f"http://localhost:{port}"}) as resp:
            assert resp.status != 403  # our own page: let through (no chat upstream: 404)
    finally:
        await r.close()
        await upstream.cleanup()
