"""Seed scenario 1: one node serves the real SmolLM2 model through the real openai client."""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from nodes import NodeProcess, http_json

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("solo") / "home").start()
    try:
        yield node.wait_ready()
    finally:
        node.stop()


@pytest.fixture
def client(solo: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=solo.api + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def chat(client: openai.OpenAI, **kw) -> str:  # type: ignore[no-untyped-def]
    resp = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=PROMPT,
                                          temperature=0, max_tokens=24, **kw)
    return resp.choices[0].message.content or ""


def test_chat_non_streamed_is_sensible_and_deterministic(client: openai.OpenAI) -> None:
    first = chat(client)
    assert "Paris" in first
    assert chat(client) == first


def test_chat_streamed_matches_non_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=PROMPT,
                                            temperature=0, max_tokens=24, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3, "tokens should arrive as separate chunks"
    assert "".join(pieces) == chat(client)


def test_completions_streamed_and_not(client: openai.OpenAI) -> None:
    kw = {"model": "SmolLM2-135M-Instruct", "prompt": "The capital of France is",
          "temperature": 0, "max_tokens": 8}
    whole = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
    assert whole and streamed == whole


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["SmolLM2-135M-Instruct"]


def test_timings_reach_the_client_unchanged(solo: NodeProcess) -> None:
    body = json.dumps({"messages": PROMPT, "max_tokens": 4, "temperature": 0}).encode()
    req = urllib.request.Request(solo.api + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        timings = json.load(resp)["timings"]
    assert timings["predicted_n"] == 4 and timings["predicted_per_second"] > 0


def test_health_and_status_describe_a_solo_host(solo: NodeProcess) -> None:
    assert http_json(solo.api + "/health") == (200, {"status": "ok"})
    s = solo.status()
    assert s["role"] == "host" and s["is_host"] is True and s["is_client"] is False
    assert s["peers"] == [] and s["llama_ready"] is True
    assert s["model"] == "SmolLM2-135M-Instruct" and s["api_port"] == solo.api_port
    assert s["vram_bytes"] > 0 and s["mesh_vram_bytes"] == s["vram_bytes"]
    assert s["plan"]["mode"] == "solo" and s["plan"]["rpc"] == []
    assert s["plan"]["host"] == s["node_id"] and len(s["node_id"]) == 64
    assert s["version"]


def test_console_serves_a_page(solo: NodeProcess) -> None:
    with urllib.request.urlopen(solo.console + "/", timeout=5) as resp:
        assert b"<title>mesh-llm</title>" in resp.read()


def test_unknown_route_is_a_json_404(solo: NodeProcess) -> None:
    code, body = http_json(solo.api + "/v1/nope")
    assert code == 404 and body["error"]["type"] == "not_found"


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_body_is_a_json_400_and_the_node_keeps_serving(
        solo: NodeProcess, client: openai.OpenAI, payload: bytes) -> None:
    req = urllib.request.Request(solo.api + "/v1/chat/completions", data=payload,
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    assert json.loads(info.value.read())["error"]["type"] == "invalid_request_error"
    assert "Paris" in chat(client)


def test_client_disconnecting_mid_stream_leaves_nothing_behind(
        solo: NodeProcess, client: openai.OpenAI) -> None:
    body = json.dumps({"messages": PROMPT, "max_tokens": 400, "stream": True,
                       "temperature": 0}).encode()
    with socket.create_connection(("127.0.0.1", solo.api_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(65536)
            assert chunk, "the stream ended before any token"
            received += chunk
    solo.wait_for(lambda: solo.status()["api_in_flight"] == 0, "the relay to finish", 30)
    assert "Paris" in chat(client)


async def test_back_to_back_streams_all_succeed(solo: NodeProcess) -> None:
    """Back-to-back streams on one pooled client connection, each on a fresh connection to
    llama-server: none may surface as a 502 or end short. A failure says everything: which
    stream, its status and body (or the client's exception), and the node's log tail."""
    body = {"messages": PROMPT, "max_tokens": 128, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as session:
        for n in range(6):
            try:
                async with session.post(solo.api + "/v1/chat/completions", json=body) as resp:
                    status, raw = resp.status, await resp.read()
            except aiohttp.ClientError as err:
                pytest.fail(f"stream {n + 1}: {err!r}\nnode log:\n{solo.output()[-3000:]}")
            text = raw.decode(errors="replace")
            context = (f"stream {n + 1}: status {status}, body {_ends(text)}\n"
                       f"node log:\n{solo.output()[-3000:]}")
            assert status == 200, context
            events = text.split("\n\n")
            assert events[-2] == "data: [DONE]", context
            usage = json.loads(events[-3].removeprefix("data: "))["usage"]
            assert usage["completion_tokens"] == 128, context


def _ends(text: str, keep: int = 1500) -> str:
    """A body for a failure message: whole when short, else its head and tail."""
    if len(text) <= 2 * keep:
        return repr(text)
    return f"{text[:keep]!r} ... ({len(text) - 2 * keep} chars) ... {text[-keep:]!r}"
