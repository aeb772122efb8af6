"""The API's own errors in the caller's dialect: Anthropic's shape on /v1/messages*, so the
`anthropic` SDK (and Claude Code) parse the mesh's reason; OpenAI's everywhere else; and
`x-api-key` taken like `Authorization: Bearer`. A real ApiProxy on 127.0.0.1, real SDKs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from mesh_llm.api.name_match import ApiError, ServedModel, models_listing, resolve
from mesh_llm.api.proxy import ApiProxy, Upstream
from mesh_llm.api.routes import POST_PATHS
from upstreams import serve_on_loopback, tcp_upstream

KEY = "sekrit"
MODELS = [ServedModel("Alpha-Coder", "fa", ready=True), ServedModel("Beta", "fb")]


class TwoModels:
    """A ModelRouter over a fixed mesh: Alpha-Coder at `upstream`, Beta not ready."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    def resolve(self, requested: object) -> ServedModel | ApiError:
        return resolve(requested, MODELS, "fa")

    def upstream_for(self, model: ServedModel) -> Upstream:
        return self._upstream

    def listing(self) -> dict[str, Any]:
        return models_listing(MODELS, "fa")

    def unhealthy(self) -> ApiError | None:
        return None

    def count(self, model: ServedModel) -> None:
        pass


async def fake_llama(request: web.Request) -> web.StreamResponse:
    """What llama-server answers: its own error for a bad body, else a short SSE stream."""
    body = await request.json()
    if body.get("max_tokens") == 0:
        return web.json_response({"error": {"code": 400, "message": "llama says no",
                                            "type": "invalid_request_error"}}, status=400)
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    if body.get("cut"):  # the host's llama-server goes away mid-stream
        await out.write(b'event: message_start\ndata: {"type": "message_start"}\n\n')
        assert request.transport is not None
        request.transport.abort()
        return out
    for kind in ("message_start", "content_block_start", "message_stop"):
        await out.write(f"event: {kind}\ndata: {json.dumps({'type': kind})}\n\n".encode())
    await out.write_eof()
    return out


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, ApiProxy]]:
    app = web.Application()
    for path in POST_PATHS:
        app.router.add_post(path, fake_llama)
    llama = await serve_on_loopback(app)
    proxy = ApiProxy(TwoModels(tcp_upstream("127.0.0.1", llama.addresses[0][1])), api_key=KEY)
    runner = await serve_on_loopback(proxy.app())
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", proxy
    await runner.cleanup()
    await llama.cleanup()


def claude(url: str, key: str = KEY, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=10, **kw)


def ask(client: anthropic.Anthropic, model: str = "Alpha-Coder", max_tokens: int = 4) -> Any:
    return client.messages.create(model=model, max_tokens=max_tokens,
                                  messages=[{"role": "user", "content": "hi"}])


async def status_error(call: Any) -> anthropic.APIStatusError:
    with pytest.raises(anthropic.APIStatusError) as caught:
        await asyncio.to_thread(call)
    return caught.value


@pytest.mark.parametrize(("case", "status", "kind", "says"), [
    ("wrong key", 401, "authentication_error", "missing or wrong API key"),
    ("unknown model", 404, "not_found_error", "models served: Alpha-Coder, Beta"),
    ("not ready", 503, "overloaded_error", "model Beta has no ready host"),
    ("foreign host", 403, "permission_error", "does not serve that Host"),
])
async def test_mesh_errors_parse_as_the_anthropic_sdks(api, case: str, status: int, kind: str,
                                                       says: str) -> None:
    url, _ = api
    client = claude(url, "wrong" if case == "wrong key" else KEY,
                    default_headers={"Host": "evil.example"} if case == "foreign host" else None)
    model = {"unknown model": "Gamma", "not ready": "Beta"}.get(case, "Alpha-Coder")
    err = await status_error(lambda: ask(client, model))
    assert err.status_code == status and says in err.message
    assert err.body == {"type": "error", "error": {"type": kind, "message": err.body["error"]
                                                   ["message"]}}
    err = await status_error(lambda: client.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "hi"}]))
    assert err.status_code == status and says in err.message


async def test_too_large_and_unknown_methods_in_anthropics_shape(api) -> None:
    url, _ = api
    async with aiohttp.ClientSession() as session:
        big = b'{"model": "' + b"x" * (9 * 1024 * 1024) + b'"}'
        async with session.post(url + "/v1/messages", data=big, headers={"x-api-key": KEY,
                                "Content-Type": "application/json"}) as resp:
            assert resp.status == 413
            body = await resp.json()
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
        async with session.get(url + "/v1/messages", headers={"x-api-key": KEY}) as resp:
            assert resp.status == 405 and "POST" in resp.headers["Allow"]
            assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_other_routes_keep_openais_shape_and_take_either_key(api) -> None:
    url, _ = api
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                               timeout=10, default_headers=headers)
        with pytest.raises(openai.APIStatusError) as caught:
            await asyncio.to_thread(lambda c=client: c.responses.create(model="Beta",
                                                                        input="hi"))
        assert caught.value.status_code == 503
        assert caught.value.body["type"] == "unavailable"  # type: ignore[index]
        assert "has no ready host" in caught.value.body["message"]  # type: ignore[index]
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        await asyncio.to_thread(lambda: bad.embeddings.create(model="Alpha-Coder", input="x"))


async def test_llama_servers_own_answers_pass_unchanged(api) -> None:
    url, proxy = api
    err = await status_error(lambda: ask(claude(url), max_tokens=0))
    assert err.status_code == 400 and err.body == {"error": {
        "code": 400, "message": "llama says no", "type": "invalid_request_error"}}
    async with aiohttp.ClientSession() as session, session.post(
            url + "/v1/messages?beta=true", headers={"x-api-key": KEY},
            json={"model": "Alpha-Coder", "max_tokens": 4, "stream": True,
                  "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        events = [line for line in (await resp.text()).splitlines()
                  if line.startswith("event: ")]
    assert events == ["event: message_start", "event: content_block_start",
                      "event: message_stop"]
    counts = proxy.requests.to_json()["Alpha-Coder"]
    assert counts["/v1/messages"] == 2


@pytest.mark.parametrize(("path", "anthropic_shape"), [("/v1/messages", True),
                                                       ("/v1/responses", False)])
async def test_a_stream_cut_off_ends_with_an_error_event_in_the_routes_dialect(
        api, path: str, anthropic_shape: bool) -> None:  # type: ignore[no-untyped-def]
    url, _ = api
    async with aiohttp.ClientSession() as session, session.post(
            url + path, headers={"x-api-key": KEY},
            json={"model": "Alpha-Coder", "stream": True, "cut": True}) as resp:
        events = [e for e in (await resp.text()).split("\n\n") if e]
    last = events[-1].splitlines()
    body = json.loads(last[-1].removeprefix("data: "))
    if anthropic_shape:
        assert last[0] == "event: error" and body["type"] == "error"
        assert body["error"]["type"] == "overloaded_error"
        assert "broke off" in body["error"]["message"]
    else:
        assert body["error"]["type"] == "unavailable" and "broke off" in body["error"]["message"]
