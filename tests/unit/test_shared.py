"""Shared servers' pure parts (api/shared.py): the URL check, the model list as untrusted
input, the request the sharing node sends on, the merge of shared and GGUF models (names,
`/v1/models`), and the router and announcement around them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fakenode import GB, ME, FakeNode
from mesh_llm.api.name_match import ApiError, ServedModel, models_listing, resolve
from mesh_llm.api.shared import (
    MAX_LIST_BYTES,
    MAX_SHARED_MODELS,
    ShareUrlError,
    merge_served,
    parse_model_list,
    parse_share_url,
    server_request,
)
from mesh_llm.inference.groups import OfferedModel
from mesh_llm.mesh.announcement import Announcement, AnnouncementError, clamp_client
from mesh_llm.node.router import MODEL_HEADER, MeshRouter

PEER = "b" * 64
CHAT = OfferedModel("c1" * 8, "Chat-Q4_1", GB)


# --- the URL ---
@pytest.mark.parametrize("url", ["http://127.0.0.1:11434/v1", "http://localhost:1234/v1/",
                                 "http://[::1]:8000/v1", "https://127.0.0.2/openai/v1",
                                 "http://LOCALHOST:8080"])
def test_loopback_urls_are_accepted(url: str) -> None:
    target = parse_share_url(url)
    assert target.url == url.rstrip("/") and target.models_url == target.url + "/models"


@pytest.mark.parametrize("url", ["http://192.168.1.20:11434/v1", "http://gpu-box:8000/v1",
                                 "http://10.0.0.1/v1", "https://[2001:db8::1]/v1"])
def test_a_url_off_this_machine_needs_share_remote(url: str) -> None:
    with pytest.raises(ShareUrlError, match="--share-remote"):
        parse_share_url(url)
    assert parse_share_url(url, allow_remote=True).url == url


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://127.0.0.1/v1", "base URL"), ("127.0.0.1:11434", "base URL"),
    ("http://user:pw@127.0.0.1/v1", "no credentials"), ("http://127.0.0.1/v1?x=1", "query"),
    ("http://127.0.0.1:99999/v1", "--share"), ("http://127.0.0.1/v 1", "not a URL"),
    ("http://127.0.0.1/" + "a" * 3000, "not a URL")])
def test_a_bad_url_is_one_line(url: str, why: str) -> None:
    with pytest.raises(ShareUrlError, match=why) as err:
        parse_share_url(url, allow_remote=True)
    assert "\n" not in str(err.value) and "pw" not in str(err.value)


def test_routes_keep_the_base_path_and_the_key_is_not_in_the_repr() -> None:
    ollama = parse_share_url("http://127.0.0.1:11434/v1", "sk-secret")
    assert ollama.path_for("/v1/chat/completions") == "/v1/chat/completions"
    assert ollama.authority == "127.0.0.1:11434"
    assert "sk-secret" not in repr(ollama)
    bare = parse_share_url("https://[::1]/openai")
    assert bare.path_for("/v1/responses") == "/openai/responses"
    assert (bare.authority, bare.port) == ("[::1]", 443)


# --- the server's model list ---
def test_openai_and_ollama_lists_are_read() -> None:
    openai = {"object": "list", "data": [{"id": "qwen2.5-coder:7b", "object": "model"},
                                          {"id": "llama3.2:latest"}]}
    assert parse_model_list(json.dumps(openai).encode()) == ["qwen2.5-coder:7b",
                                                            "llama3.2:latest"]
    ollama = {"models": [{"name": "phi4:latest", "model": "phi4:latest"}]}
    assert parse_model_list(json.dumps(ollama).encode()) == ["phi4:latest"]


def test_a_list_is_untrusted_input() -> None:
    bad = [{"id": "ok"}, {"id": "ok"}, {"id": "x" * 257}, {"id": "tab\tname"}, {"id": ""},
           {"id": " padded "}, {"id": 7}, "string", {"id": "über"}, {"id": "m@shared"},
           {"no": "id"}]
    assert parse_model_list(json.dumps({"data": bad}).encode()) == ["ok"]
    many = {"data": [{"id": f"m{i}"} for i in range(500)]}
    assert len(parse_model_list(json.dumps(many).encode())) == MAX_SHARED_MODELS
    for body in (b"<html>", b"[]", b'{"data": {}}', b"[" * 100_000, b" " * (MAX_LIST_BYTES + 1)):
        with pytest.raises(ValueError):
            parse_model_list(body)


# --- the request the sharing node sends its server ---
def test_the_server_gets_a_fresh_head_its_key_and_its_own_model_name() -> None:
    target = parse_share_url("http://localhost:11434/v1", "sk-secret")
    raw = server_request(target, "/v1/chat/completions", "qwen:7b",
                         json.dumps({"model": "qwen:7b@shared", "stream": True}).encode(),
                         "text/event-stream\r\nX-Evil: 1")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert sorted(lines[1:]) == sorted([
        "Host: localhost:11434", "Connection: close", "Content-Type: application/json",
        "Accept: */*", "Authorization: Bearer sk-secret", f"Content-Length: {len(body)}"])
    assert json.loads(body) == {"model": "qwen:7b", "stream": True}
    keyless = server_request(parse_share_url("http://127.0.0.1:1/v1"), "/v1/completions",
                             "m", b'{"prompt": "hi"}')
    assert b"Authorization" not in keyless
    with pytest.raises(ValueError):
        server_request(target, "/v1/completions", "m", b"[1]")


# --- shared and GGUF models together ---
GGUF = ServedModel("SmolLM2-135M-Instruct-Q4_1", "ab" * 8, ready=True, mode="solo", host="h")


def test_a_shared_name_no_gguf_answers_to_is_listed_plain() -> None:
    models = merge_served([GGUF], {"qwen:7b": [PEER, ME]}, ME)
    shared = models[1]
    assert (shared.name, shared.aliases, shared.key, shared.kind) == (
        "qwen:7b", ("qwen:7b@shared",), "shared:qwen:7b", "shared")
    assert shared.host == ME and shared.nodes == tuple(sorted([PEER, ME])), "ours first"
    assert resolve("QWEN:7B", models) == shared
    assert resolve("qwen:7b@shared", models) == shared
    assert isinstance(resolve("qwen", models), ApiError), "shared names match exactly"
    assert resolve(None, models) == GGUF, "the GGUF model stays the default"


def test_a_name_both_shared_and_held_as_gguf_is_two_entries_the_gguf_its_default() -> None:
    models = merge_served([GGUF], {"SmolLM2-135M-Instruct": [PEER]}, ME)
    assert [m.name for m in models] == ["SmolLM2-135M-Instruct-Q4_1",
                                        "SmolLM2-135M-Instruct@shared"]
    assert resolve("SmolLM2-135M-Instruct", models) == GGUF
    assert resolve("smollm2-135m-instruct@SHARED", models) == models[1]
    listing = models_listing(models, GGUF.key)["data"]
    assert [(m["id"], m["meta"]["kind"], m["meta"]["fingerprint"], m["meta"]["default"])
            for m in listing] == [
        ("SmolLM2-135M-Instruct-Q4_1", "gguf", GGUF.key, True),
        ("SmolLM2-135M-Instruct@shared", "shared", None, False)]
    assert listing[1]["meta"]["host"] == PEER and listing[1]["meta"]["mode"] == "shared"


# --- the router and the gossip around them ---
def sharer(*names: str) -> Announcement:
    return Announcement(PEER, role="client", shared=names)


def test_a_peers_shared_model_goes_through_the_api_tunnel_with_its_key(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(sharer("qwen:7b"),))
    node.host(0, port=4100)
    router = MeshRouter(node)
    found = router.resolve("qwen:7b")
    assert isinstance(found, ServedModel) and found.kind == "shared"
    upstream = router.upstream_for(found)
    assert upstream.key == f"mesh {PEER} shared:qwen:7b"
    assert dict(upstream.headers) == {MODEL_HEADER: "shared:qwen:7b"}
    router.count(found)
    assert router.requests.counts() == {}, "shared models are not gossiped as counts"


def test_a_shared_model_that_left_stays_a_404_in_a_one_model_mesh(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(sharer("qwen:7b"),))
    node.host(0, port=4100)
    router = MeshRouter(node)
    found = router.resolve("qwen:7b")
    assert isinstance(found, ServedModel)
    node.peers[PEER] = type(node.peers[PEER])(PEER, sharer())
    node.regroup()
    gone = router.resolve("qwen:7b")
    assert isinstance(gone, ApiError) and gone.status == 404, gone
    assert router.upstream_for(found).connect is None, "a request in flight gets the 503"
    node.peers[PEER] = type(node.peers[PEER])(PEER, sharer("qwen:7b"))
    node.regroup()
    assert isinstance(router.resolve("qwen:7b"), ServedModel), "back when shared again"


def test_with_trust_hosts_only_trusted_nodes_shared_models_count(tmp_path: Path) -> None:
    node = FakeNode(tmp_path, CHAT, peers=(sharer("qwen:7b"),))
    node.config = replace(node.config, trust_hosts=frozenset([ME]))
    assert [m.name for m in MeshRouter(node).served()] == ["Chat-Q4_1"]


def test_the_announcement_carries_shared_names_only_when_there_are_some() -> None:
    ann = Announcement(PEER, shared=("qwen:7b", "llama3.2:latest"))
    assert ann.checked().shared == ann.shared
    assert "shared" not in Announcement(PEER).to_wire(), "peers that predate it see nothing new"
    assert Announcement.from_wire({"role": "worker"}, PEER).shared == ()
    assert clamp_client(ann).shared == (), "a client invite cannot share"
    for bad in (["a"] * 2, ["x" * 257], ["tab\t"], [7], "qwen", [f"m{i}" for i in range(65)]):
        with pytest.raises(AnnouncementError, match="shared"):
            Announcement.from_wire({"shared": bad}, PEER)



# --- reading a real server's list (aiohttp on loopback) ---
async def serve(handler) -> tuple[str, object]:  # type: ignore[no-untyped-def]
    from aiohttp import web

    from upstreams import serve_on_loopback

    app = web.Application()
    app.router.add_get("/v1/models", handler)
    runner = await serve_on_loopback(app)
    return f"http://127.0.0.1:{runner.addresses[0][1]}/v1", runner


async def test_a_servers_list_is_read_with_its_key_and_bounded() -> None:
    import asyncio

    from aiohttp import web

    from mesh_llm.api.share_client import ShareFetchError, fetch_models

    seen: list[str | None] = []
    mode = {"now": "ok"}

    async def models(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        if mode["now"] == "big":
            return web.Response(body=b'{"data": [' + b" " * (2 * MAX_LIST_BYTES) + b"]}")
        if mode["now"] == "redirect":
            raise web.HTTPFound("http://127.0.0.1:9/v1/models")
        if mode["now"] == "slow":
            await asyncio.sleep(1)
        return web.json_response({"data": [{"id": "qwen:7b"}]})

    url, runner = await serve(models)
    try:
        target = parse_share_url(url, "sk-secret")
        assert await fetch_models(target) == ["qwen:7b"]
        assert seen == ["Bearer sk-secret"]
        for now, why in (("big", "larger than"), ("redirect", "answered 302"),
                         ("slow", "no answer within")):
            mode["now"] = now
            with pytest.raises(ShareFetchError, match=why) as err:
                await fetch_models(target, timeout=0.2)
            assert "sk-secret" not in str(err.value)
    finally:
        await runner.cleanup()  # type: ignore[attr-defined]
    with pytest.raises(ShareFetchError, match=url.split("//")[1].split("/")[0]):
        await fetch_models(target)
