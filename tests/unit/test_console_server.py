"""The console server on a real socket: status JSON, SSE (connect, change, heartbeat, no
leaks, shutdown), the chat relay's input checks, the login a networked console needs, and
the server's edges (Host check, JSON errors, idle and per-address connection bounds), with a
fake status and a real ChangeFeed."""

from __future__ import annotations

import asyncio
import json
import re
import resource
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mesh_llm.api.proxy import ApiProxy, Upstream
from mesh_llm.api.serving import EdgeRunner, raise_open_file_limit
from mesh_llm.changes import ChangeFeed
from mesh_llm.console.auth import COOKIE
from mesh_llm.console.server import MAX_CHAT_BYTES, STATIC, Console
from mesh_llm.inference.election import Plan
from mesh_llm.node.status import build_status
from upstreams import OneUpstream, serve_on_loopback, tcp_upstream
from waiting import wait_until_async

HOST, WORKER, CLIENT = "a" * 64, "b" * 64, "c" * 64
NO_HOST = Upstream(None, "no host is ready")


def contract_status(**fields: Any) -> dict[str, Any]:
    """The node's own builder, for a host that splits over one worker and serves a client."""
    plan = Plan("split", HOST, (WORKER,), (0.67, 0.33))
    status = build_status(
        node_id=HOST, token="tok", role="host", host_id=HOST, llama_ready=True,
        model="SmolLM2-135M-Instruct", draft=None, api_port=9337, console_port=3131,
        vram_bytes=2_000_000_000,
        peers=[{"id": WORKER, "role": "worker", "vram_bytes": 1_000_000_000,
                "models": ["SmolLM2-135M-Instruct"], "rtt_ms": 1.5, "ready": False},
               {"id": CLIENT, "role": "client", "vram_bytes": 8_000_000_000, "models": [],
                "rtt_ms": None, "ready": False}],
        plan=plan.to_json(["127.0.0.1:5000"]), state="running",
        extra={"console_streams": 0})
    return {**status, **fields}


class Harness:
    """A Console on 127.0.0.1 with a status the test changes, plus a client session."""

    def __init__(self, upstream: Upstream, heartbeat_s: float, api_key: str | None = None,
                 bind: str = "127.0.0.1", **runner_kw: Any) -> None:
        self.state = contract_status()
        self.changes = ChangeFeed()
        self.upstream = upstream
        self.listing: dict[str, Any] | None = None  # /v1/models (None: the one model)
        self.console = Console(lambda: self.state, self.changes,
                               ApiProxy(OneUpstream(lambda: self.upstream,
                                                  listing=lambda: self.listing)),
                               heartbeat_s=heartbeat_s,
                               api_key=api_key)
        self.runner = EdgeRunner(self.console.app(), handler_cancellation=True,
                                 access_log=None, **runner_kw)
        self.session = aiohttp.ClientSession()
        self.bind = bind
        self.url = ""
        self.port = 0

    async def start(self) -> Harness:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.bind, 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def stop(self) -> None:
        if self.runner.server is not None:
            await self.runner.cleanup()

    async def close(self) -> None:
        await self.session.close()
        await self.stop()

    def change(self, **fields: Any) -> None:
        self.state = {**self.state, **fields}
        self.changes.bump()

    async def post_chat(self, data: bytes | str,
                        headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(self.url + "/api/chat", data=data, headers={
                "Content-Type": "application/json", **(headers or {})}) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Any]]:
    made: list[Harness] = []

    async def make(upstream: Upstream = NO_HOST, heartbeat_s: float = 15.0,
                   **options: Any) -> Harness:
        made.append(await Harness(upstream, heartbeat_s, **options).start())
        return made[-1]

    yield make
    for h in made:
        await h.close()


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """The next SSE block as (event name, data), or ("comment", text) for a comment."""
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), 5)
        assert raw, "the event stream ended"
        line = raw.decode().rstrip("\r\n")
        if line:
            lines.append(line)
            continue
        if not lines:
            continue
        if all(line.startswith(":") for line in lines):
            return "comment", "\n".join(line[1:].strip() for line in lines)
        fields = dict(line.split(": ", 1) for line in lines if not line.startswith(":"))
        if "event" in fields or "data" in fields:
            return fields.get("event", "message"), fields.get("data", "")
        lines = []  # a `retry:` block: not an event


# ---------- the status JSON ----------

STATUS_CONTRACT = {  # DESIGN.md section 8, plus what the page reads
    "node_id": str, "token": str, "role": str, "is_host": bool, "is_client": bool,
    "llama_ready": bool, "model": (str, type(None)), "draft": (str, type(None)),
    "api_port": int, "vram_bytes": int, "mesh_vram_bytes": int, "peers": list,
    "plan": (dict, type(None)), "version": str, "state": str, "host": (str, type(None)),
}


def test_built_status_keeps_the_contract() -> None:
    status = contract_status()
    for field, kind in STATUS_CONTRACT.items():
        assert isinstance(status[field], kind), field
    assert status["role"] in ("host", "worker", "client")
    assert status["mesh_vram_bytes"] == 3_000_000_000, "clients' memory is not the mesh's"
    for peer in status["peers"]:
        assert set(peer) >= {"id", "role", "vram_bytes", "models", "rtt_ms"}
    plan = status["plan"]
    assert plan["mode"] in ("solo", "split", "waiting")
    assert len(plan["tensor_split"]) == 1 + len(plan["workers"]), "host first, then workers"
    assert plan["host"] == status["host"]
    json.dumps(status)  # it must go over the wire as it is


async def test_status_is_served_as_built(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    async with h.session.get(h.url + "/api/status") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert await resp.json() == h.state


# ---------- SSE ----------

async def test_events_send_the_status_on_connect(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    async with h.session.get(h.url + "/api/events") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        retry = await resp.content.readline()
        assert re.fullmatch(rb"retry: \d+\n", retry), retry
        name, data = await next_event(resp)
        assert name == "status"
        assert json.loads(data) == h.state
        assert h.console.open_streams == 1


async def test_events_follow_every_change(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    async with h.session.get(h.url + "/api/events") as resp:
        assert (await next_event(resp))[0] == "status"
        h.change(peers=[], mesh_vram_bytes=2_000_000_000)  # both peers left
        name, data = await next_event(resp)
        assert name == "status" and json.loads(data)["peers"] == []
        h.change(role="worker", is_host=False, host=WORKER)
        name, data = await next_event(resp)
        assert json.loads(data)["role"] == "worker"


async def test_events_carry_heartbeat_comments(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(heartbeat_s=0.05)
    async with h.session.get(h.url + "/api/events") as resp:
        assert (await next_event(resp))[0] == "status"
        assert await next_event(resp) == ("comment", "keep-alive")
        assert await next_event(resp) == ("comment", "keep-alive")
        h.change(state="loading")
        name, data = await next_event(resp)
        while name == "comment":
            name, data = await next_event(resp)
        assert json.loads(data)["state"] == "loading"


async def test_dropped_streams_do_not_leak(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    responses = []
    for _ in range(100):
        resp = await h.session.get(h.url + "/api/events")
        assert (await next_event(resp))[0] == "status"
        responses.append(resp)
    assert h.console.open_streams == 100
    for resp in responses:
        resp.close()  # drops the connection, as a closed tab does
    await wait_until_async(lambda: h.console.open_streams == 0, "the event streams to end", 5)


async def test_shutdown_ends_open_streams(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    resp = await h.session.get(h.url + "/api/events")
    assert (await next_event(resp))[0] == "status"
    await asyncio.wait_for(h.stop(), 5)  # the node's SIGTERM path must not hang on it
    assert h.console.open_streams == 0
    resp.close()


# ---------- chat ----------

async def test_chat_without_a_host_says_why(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(Upstream(None, "waiting for more VRAM: need 2.2 GB, mesh has 1.0 GB"))
    code, body = await h.post_chat(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert code == 503
    assert body["error"]["message"] == "waiting for more VRAM: need 2.2 GB, mesh has 1.0 GB"
    assert body["error"]["type"] == "unavailable"


@pytest.mark.parametrize(("data", "fragment"), [
    ("{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ("{}", "`messages`"),
    ('{"messages": []}', "non-empty"),
    ('{"messages": "hello"}', "non-empty list"),
    ('{"messages": ["hello"]}', "messages[0]"),
    ('{"messages": [{"content": "hi"}]}', "`role`"),
    ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "`stream`"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": 7}', "`model`"),
    ('{"messages": [{"role": "user", "content": "hi"}], "model": ["a"]}', "`model`"),
])
async def test_chat_rejects_bad_bodies(harness, data, fragment) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    code, body = await h.post_chat(data)
    assert code == 400
    assert fragment in body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"


async def test_chat_refuses_a_body_over_the_limit(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    content = "x" * MAX_CHAT_BYTES
    code, body = await h.post_chat(json.dumps({"messages": [{"role": "user",
                                                             "content": content}]}))
    assert code == 413
    assert body["error"]["message"] == "request body too large"
    async with h.session.get(h.url + "/api/status") as resp:
        assert resp.status == 200  # the server carries on


async def test_chat_refuses_other_sites(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    code, body = await h.post_chat(good, {"Origin": "http://evil.example"})
    assert code == 403 and "cross-origin" in body["error"]["message"]
    code, _ = await h.post_chat(good, {"Origin": h.url})
    assert code == 503  # same origin: accepted, then told there is no host


async def test_chat_is_relayed_to_chat_completions(harness) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[str, dict[str, Any]]] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, await request.json()))
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for piece in ("Par", "is"):
            chunk = {"choices": [{"delta": {"content": piece}}]}
            await out.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await out.write(b"data: [DONE]\n\n")
        return out

    upstream_app = web.Application()
    upstream_app.router.add_post("/v1/chat/completions", completions)
    runner = await serve_on_loopback(upstream_app)
    try:
        h = await harness(tcp_upstream("127.0.0.1", runner.addresses[0][1]))
        message = {"role": "user", "content": "Capital of France?"}
        async with h.session.post(h.url + "/api/chat", json={"messages": [message]}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            text = await resp.text()
        assert text.count("data: ") == 3 and text.endswith("data: [DONE]\n\n")
        assert seen == [("/v1/chat/completions", {"messages": [message], "stream": True})]

        async with h.session.post(h.url + "/api/chat",
                                  json={"messages": [message], "stream": False}) as resp:
            await resp.read()
        assert seen[-1][1]["stream"] is False  # an explicit choice is kept

        async with h.session.post(h.url + "/api/chat",
                                  json={"messages": [message], "model": "Coder-F16"}) as resp:
            await resp.read()
        assert seen[-1][1]["model"] == "Coder-F16"  # the picker's choice reaches the API
    finally:
        await runner.cleanup()


# ---------- a multi-model mesh: the status's groups and the chat's model list ----------

TWO_MODELS = {
    "models": [
        {"name": "SmolLM2-135M-Instruct", "fingerprint": "f" * 16, "host": HOST,
         "plan": {"mode": "split", "host": HOST, "workers": [WORKER], "rpc": ["127.0.0.1:5000"],
                  "tensor_split": [0.67, 0.33], "reason": ""},
         "ready": True, "nodes": [HOST, WORKER], "requests_per_min": 12},
        {"name": "Coder-F16", "fingerprint": "e" * 16, "host": WORKER,
         "plan": {"mode": "solo", "host": WORKER, "workers": [], "rpc": [],
                  "tensor_split": [1.0], "reason": ""},
         "ready": False, "nodes": [WORKER], "requests_per_min": 0},
    ],
    "default_model": "SmolLM2-135M-Instruct",
}


async def test_a_multi_model_status_reaches_the_page_as_built(harness) -> None:  # type: ignore[no-untyped-def]
    """The page draws a group per model from `models`: the console passes it untouched."""
    h = await harness()
    h.change(**TWO_MODELS)
    async with h.session.get(h.url + "/api/status") as resp:
        assert (await resp.json())["models"] == TWO_MODELS["models"]
    async with h.session.get(h.url + "/api/events") as resp:
        name, data = await next_event(resp)
        assert name == "status"
        sent = json.loads(data)
        assert sent["models"] == TWO_MODELS["models"]
        assert sent["default_model"] == "SmolLM2-135M-Instruct"
        h.change(models=TWO_MODELS["models"][:1])  # one group left
        assert json.loads((await next_event(resp))[1])["models"] == TWO_MODELS["models"][:1]


async def test_the_model_list_is_what_the_api_answers(harness) -> None:  # type: ignore[no-untyped-def]
    listing = {"object": "list", "data": [{"id": "SmolLM2-135M-Instruct", "object": "model",
                                           "owned_by": "mesh-llm", "created": 1}]}
    h = await harness()
    h.listing = listing
    async with h.session.get(h.url + "/api/models") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert await resp.json() == listing
    async with h.session.post(h.url + "/api/models", json={}) as resp:
        assert resp.status == 405 and (await resp.json())["error"]["message"]


async def test_the_model_list_without_a_host_lists_the_model_not_ready(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(Upstream(None, "waiting for more VRAM: need 2.2 GB, mesh has 1.0 GB"))
    async with h.session.get(h.url + "/api/models") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert [(m["id"], m["meta"]["ready"]) for m in body["data"]] == [("m", False)]


async def test_the_model_list_needs_the_key_on_a_networked_console(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(api_key=KEY)
    h.listing = {"object": "list", "data": []}
    async with h.session.get(h.url + "/api/models") as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["type"] == "authentication_error"
    async with h.session.get(h.url + "/api/models",
                             headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200 and (await resp.json())["data"] == []


# ---------- the page ----------

async def test_page_and_assets_are_served_and_self_contained(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    for path, kind in (("/", "text/html"), ("/static/app.js", "javascript"),
                       ("/static/style.css", "text/css")):
        async with h.session.get(h.url + path) as resp:
            assert resp.status == 200, path
            assert kind in resp.headers["Content-Type"], path
            text = await resp.text()
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import", text), path
        assert "EventSource" in text or path != "/static/app.js"
    assert {p.name for p in STATIC.iterdir()} >= {"index.html", "app.js", "style.css"}
    app_js = (STATIC / "app.js").read_text()
    assert "setInterval" not in app_js and "/api/status" not in app_js, "no polling"


async def test_unknown_routes_are_json_404(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness()
    async with h.session.get(h.url + "/api/nothing") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "not_found"


# ---------- a console on the network: the API key, as a Bearer header or a login ----------

KEY = "k3y-for-the-console"
INVITE = "INVITE-TOKEN-FOR-THE-MESH"


async def test_a_console_with_a_key_refuses_viewers_without_it(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(api_key=KEY)
    h.change(token=INVITE)
    for path in ("/api/status", "/api/events", "/api/session", "/static/app.js", "/nothing"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Cookie": f"{COOKIE}={KEY}"}):
            async with h.session.get(h.url + path, headers=headers) as resp:
                assert resp.status == 401, (path, headers)
                assert resp.headers["Content-Type"].startswith("application/json")
                text = await resp.text()
            assert json.loads(text)["error"]["type"] == "authentication_error"
            assert INVITE not in text
    code, body = await h.post_chat(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert code == 401 and body["error"]["type"] == "authentication_error"
    async with h.session.get(h.url + "/") as resp:  # the page is the login form
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/html")
        page = await resp.text()
    assert 'action="/login"' in page and 'name="key"' in page and INVITE not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "self-contained"
    async with h.session.get(h.url + "/api/status",
                             headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200 and (await resp.json())["token"] == INVITE


async def test_the_login_form_sets_a_session_cookie_that_is_not_the_key(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(api_key=KEY)
    h.change(token=INVITE)

    async def login(key: str, accept: str = "*/*") -> aiohttp.ClientResponse:
        return await h.session.post(h.url + "/login", data={"key": key}, allow_redirects=False,
                                    headers={"Accept": accept})

    async with await login("wrong", "text/html,*/*") as resp:  # a browser: the form again
        assert resp.status == 401 and "Set-Cookie" not in resp.headers
        assert "Wrong key" in await resp.text()
    async with await login(KEY[:-1]) as resp:  # a tool: JSON
        assert resp.status == 401 and (await resp.json())["error"]["code"] == 401
    async with await login(KEY) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/"
        set_cookie = resp.headers["Set-Cookie"]
    name, _, rest = set_cookie.partition("=")
    value, *attributes = [part.strip() for part in rest.split(";")]
    assert name == COOKIE and value and KEY not in set_cookie
    assert {"HttpOnly", "Path=/", "SameSite=Strict"} <= set(attributes)
    cookie = {"Cookie": f"{COOKIE}={value}"}
    async with h.session.get(h.url + "/api/status", headers=cookie) as resp:
        assert resp.status == 200 and (await resp.json())["token"] == INVITE
    async with h.session.get(h.url + "/api/events", headers=cookie) as resp:
        assert resp.status == 200 and (await next_event(resp))[0] == "status"
    async with h.session.get(h.url + "/", headers=cookie) as resp:
        assert "/static/app.js" in await resp.text()  # the console itself
    code, _ = await h.post_chat(json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
                                cookie)
    assert code == 503  # let in; no host yet
    other = await harness(api_key=KEY)  # another node (or this one restarted): a new salt
    async with other.session.get(other.url + "/api/status", headers=cookie) as resp:
        assert resp.status == 401


async def test_the_page_reloads_to_the_login_form_when_its_session_lapses() -> None:
    app_js = (STATIC / "app.js").read_text()
    assert "/api/session" in app_js and "location.reload()" in app_js


# ---------- the server's edges ----------

@pytest.mark.parametrize("raw", [
    b"GE T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n",
    b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 418-teapot\r\n\r\n",
    b"HEAD /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2048\r\n\r\n" + b"[" * 2048,
    b"GET /api/status HTTP/1.1\r\nHost: attacker.example\r\n\r\n",
])
async def test_malformed_requests_get_json_errors_and_no_traceback(  # type: ignore[no-untyped-def]
        harness, caplog, raw: bytes) -> None:
    h = await harness()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, head
    assert b"\r\nContent-Type: application/json" in head, head
    if not raw.startswith(b"HEAD"):
        length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
        error = json.loads(await reader.readexactly(length))["error"]
        assert error["code"] == status and error["message"] and error["type"]
    writer.close()
    assert not [r for r in caplog.records if "Error handling request" in r.getMessage()
                or (r.exc_info and r.levelno >= 30)]


async def test_idle_and_half_sent_connections_are_closed(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(head_timeout_s=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    writer.write(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 10)  # answered, then closed when idle
    assert reply.startswith(b"HTTP/1.1 200 ")
    writer.close()


async def _connect_from(source: str, port: int) -> tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def test_one_address_cannot_hold_more_than_its_share(harness) -> None:  # type: ignore[no-untyped-def]
    h = await harness(max_per_ip=4)
    held = [await _connect_from("127.0.0.2", h.port) for _ in range(4)]
    for _, writer in held:
        writer.write(b"GET /api/status HTTP/1.1\r\n")  # half-sent, held open
    reader, writer = await _connect_from("127.0.0.2", h.port)
    writer.write(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        refused = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        refused = b""
    assert refused == b"", "the fifth connection from 127.0.0.2 was served"
    writer.close()
    async with h.session.get(h.url + "/api/status") as resp:  # everyone else: served
        assert resp.status == 200
    held.pop()[1].close()  # one fewer: 127.0.0.2 may connect again

    async def served_again() -> bool:
        reader, writer = await _connect_from("127.0.0.2", h.port)
        writer.write(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        try:
            return (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
        except ConnectionResetError:
            return False
        finally:
            writer.close()

    await wait_until_async(served_again, "a closed connection to be counted out", 10, 0.02)
    for _, writer in held:
        writer.close()


def test_the_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard > 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # as a stingy shell leaves it
    now = raise_open_file_limit()
    assert now == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if hard != resource.RLIM_INFINITY:
        assert now == hard
    assert now >= min(soft, hard)
