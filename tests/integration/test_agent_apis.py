"""Every API family llama-server speaks, through the mesh: Anthropic's messages (plain,
system prompt, tool definition, streamed, count_tokens), OpenAI's responses (plain and
streamed) and embeddings, each through a host and through a lite client, compared with
the same request straight to the host's llama-server. Real nodes, real llama.cpp, real
SmolLM2, the official SDKs, 127.0.0.1 only."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from nodes import NodeProcess, http_json

MODEL = "SmolLM2-135M-Instruct"
EMBEDDING_ARGS = ("--llama-arg=--embeddings", "--llama-arg=--pooling", "--llama-arg=mean")
TOOL = {"name": "get_weather", "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}
GREEDY = {"temperature": 0}  # this SDK has no `temperature` argument any more
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Base URLs: the host's API, a lite client's API, and the host's llama-server."""
    root = tmp_path_factory.mktemp("agents")
    host = NodeProcess(root / "host", *EMBEDDING_ARGS).start()
    nodes = [host]
    try:
        host.wait_ready()
        client = NodeProcess(root / "client", "--client", "--join", host.status()["token"])
        nodes.append(client.start())
        client.wait_ready()
        port = host.status()["llama_server"]["port"]
        yield {"host": host.api, "client": client.api, "direct": f"http://127.0.0.1:{port}",
               "host_console": host.console, "client_console": client.console}
    finally:
        for node in nodes:
            node.stop()


VIA = ("host", "client")


def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120)


def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def message(url: str, **kw: Any) -> tuple[Any, Any]:
    reply = claude(url).messages.create(model=MODEL, max_tokens=24, extra_body=GREEDY,
                                        messages=ASK, **kw)
    usage = reply.usage  # input_tokens counts only what the prompt cache did not hold
    prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0)
    return [b.model_dump(exclude={"id"}) for b in reply.content], \
        (prompt, usage.output_tokens, reply.stop_reason)


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("kw", [{}, {"system": "You are a geography teacher."},
                                {"tools": [TOOL]}], ids=["plain", "system", "tool"])
def test_messages_match_llama_server(mesh: dict[str, str], via: str, kw: dict) -> None:
    expected = message(mesh["direct"], **kw)
    assert expected[1][1] > 0
    assert message(mesh[via], **kw) == expected


def streamed(url: str) -> tuple[list[str], str, int]:
    with claude(url).messages.stream(model=MODEL, max_tokens=24, extra_body=GREEDY,
                                     messages=ASK) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    text = "".join(b.text for b in final.content if b.type == "text")
    return kinds, text, final.usage.output_tokens


@pytest.mark.parametrize("via", VIA)
def test_messages_stream_passes_every_event(mesh: dict[str, str], via: str) -> None:
    expected = streamed(mesh["direct"])
    assert expected[0][0] == "message_start" and expected[0][-1] == "message_stop"
    assert expected[1] and expected[2] > 0
    assert streamed(mesh[via]) == expected


@pytest.mark.parametrize("via", VIA)
def test_count_tokens_matches(mesh: dict[str, str], via: str) -> None:
    def count(url: str) -> int:
        return claude(url).messages.count_tokens(model=MODEL, messages=ASK,
                                                 system="Be brief.").input_tokens
    assert count(mesh[via]) == count(mesh["direct"]) > 5


def response(url: str) -> tuple[str, int, int]:
    reply = oai(url).responses.create(model=MODEL, input="What is the capital of France?",
                                      max_output_tokens=24, temperature=0)
    assert reply.usage is not None
    return reply.output_text, reply.usage.input_tokens, reply.usage.output_tokens


def response_stream(url: str) -> tuple[list[str], str]:
    events = list(oai(url).responses.create(model=MODEL, input="Name a colour.",
                                            max_output_tokens=16, temperature=0,
                                            stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    return [e.type for e in events], text


@pytest.mark.parametrize("via", VIA)
def test_responses_plain_and_streamed_match(mesh: dict[str, str], via: str) -> None:
    expected = response(mesh["direct"])
    assert expected[0] and expected[1] > 5
    assert response(mesh[via]) == expected
    kinds, text = response_stream(mesh["direct"])
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed" and text
    assert response_stream(mesh[via]) == (kinds, text)


@pytest.mark.parametrize("via", VIA)
def test_embeddings_match(mesh: dict[str, str], via: str) -> None:
    def embed(url: str) -> list[list[float]]:
        reply = oai(url).embeddings.create(model=MODEL, input=["the sea", "a mountain"])
        return [d.embedding for d in reply.data]
    expected = embed(mesh["direct"])
    assert len(expected) == 2 and len(expected[0]) > 100
    assert embed(mesh[via]) == expected


def test_rerank_on_a_chat_model_is_llama_servers_own_error(mesh: dict[str, str]) -> None:
    for via in VIA:
        with pytest.raises(openai.APIStatusError) as caught:
            oai(mesh[via]).post("/rerank", cast_to=object, body={
                "model": MODEL, "query": "sea", "documents": ["a", "b"]})
        assert caught.value.status_code == 501 and "--reranking" in caught.value.message


def counts(mesh: dict[str, str], node: str, which: str = "api_requests") -> dict[str, int]:
    return http_json(mesh[f"{node}_console"] + "/api/status")[1][which].get(MODEL, {})


def test_requests_are_counted_per_model_and_route(mesh: dict[str, str]) -> None:
    for via in VIA:
        was = counts(mesh, via)
        host_was = {"api_requests": counts(mesh, "host"),
                    "api_requests_tunnelled": counts(mesh, "host", "api_requests_tunnelled")}
        message(mesh[via])
        response(mesh[via])
        oai(mesh[via]).models.list()  # answered by the node itself: not a relayed request
        after = counts(mesh, via)
        # the host counts what a client tunnelled to it apart from what its own API got,
        # so adding every node's api_requests counts each request once
        tunnelled = counts(mesh, "host", "api_requests_tunnelled")
        host_now = counts(mesh, "host")
        for route in ("/v1/messages", "/v1/responses"):
            assert after[route] == was.get(route, 0) + 1, (via, route)
            grew = tunnelled.get(route, 0) - host_was["api_requests_tunnelled"].get(route, 0)
            assert grew == (1 if via == "client" else 0), (via, route)
            if via == "client":
                assert host_now.get(route, 0) == host_was["api_requests"].get(route, 0)
        assert "/v1/models" not in after and "/v1/models" not in tunnelled


def test_a_keyed_client_takes_x_api_key_and_refuses_in_anthropics_shape(
        mesh: dict[str, str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    token = http_json(mesh["host_console"] + "/api/status")[1]["token"]
    keyed = NodeProcess(tmp_path / "keyed", "--client", "--join", token, "--api-key", "k3y",
                        console=False).start()
    try:
        keyed.wait_for(lambda: http_json(keyed.api + "/v1/models")[0] == 401, "the API up")
        with pytest.raises(anthropic.AuthenticationError) as caught:
            claude(keyed.api).messages.create(model=MODEL, max_tokens=4, messages=ASK)
        assert "missing or wrong API key" in caught.value.message
        assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        right = anthropic.Anthropic(base_url=keyed.api, api_key="k3y", max_retries=0,
                                    timeout=120)
        keyed.wait_for(lambda: right.messages.count_tokens(model=MODEL, messages=ASK),
                       "the client to reach the host")
        reply = right.messages.create(model=MODEL, max_tokens=4, messages=ASK,
                                      extra_body=GREEDY)
        assert reply.usage.output_tokens > 0
    finally:
        keyed.stop()
