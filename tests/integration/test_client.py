"""Seed scenario 3: a lite client with no model tunnels the API to the host over QUIC."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nodes import NodeProcess, greedy, openai_client, post_chat

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def host_and_client(make_node) -> tuple[NodeProcess, NodeProcess]:
    host = make_node("host").wait_ready()
    client = make_node("client", "--client", "--join", host.status()["token"]).wait_ready()
    return host, client


def test_client_answers_exactly_like_the_host(host_and_client) -> None:
    host, client = host_and_client
    expected = greedy(host, PROMPT, 24)
    assert "Paris" in expected
    assert greedy(client, PROMPT, 24) == expected
    assert greedy(client, PROMPT, 24, stream=True) == expected
    reply = openai_client(client).chat.completions.create(
        model="x", messages=PROMPT, max_tokens=3, temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    assert [m.id for m in openai_client(client).models.list()] == ["SmolLM2-135M-Instruct"]


def test_client_status_and_it_changes_nothing_on_the_host(make_node) -> None:
    host = make_node("host").wait_ready()
    before = host.status()
    client = make_node("client", "--client", "--join", before["token"]).wait_ready()
    cs = client.status()
    assert (cs["role"], cs["is_client"], cs["is_host"]) == ("client", True, False)
    assert cs["host"] == before["node_id"] and cs["vram_bytes"] == 0
    assert cs["llama_server"] is None and cs["rpc_server"] is None
    assert cs["plan"] == before["plan"], "a client shows the host's plan"
    assert cs["model"] == "SmolLM2-135M-Instruct"
    host.wait_for(lambda: [p["role"] for p in host.status()["peers"]] == ["client"],
                  "the client in the host's peers", 10)
    during = host.status()
    assert during["mesh_vram_bytes"] == before["mesh_vram_bytes"] == cs["mesh_vram_bytes"]
    assert client.stop() == 0
    host.wait_for(lambda: host.status()["peers"] == [], "the client's goodbye", 10)
    after = host.status()
    pid = before["llama_server"]["pid"]
    assert during["llama_server"]["pid"] == after["llama_server"]["pid"] == pid
    assert after["plan"]["mode"] == "solo" and after["mesh_vram_bytes"] == \
        before["mesh_vram_bytes"]


def test_sixteen_concurrent_streams_through_one_client(host_and_client) -> None:
    _, client = host_and_client
    api = openai_client(client)

    def one(i: int) -> int:
        chunks = api.chat.completions.create(
            model="x", messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=16, temperature=0, stream=True,
            extra_body={"ignore_eos": True}, stream_options={"include_usage": True})
        usage = [c.usage.completion_tokens for c in chunks if c.usage]
        return usage[-1]

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(16))) == [16] * 16


def test_client_follows_a_new_host_without_restart(make_node) -> None:
    a = make_node("a").wait_ready()
    client = make_node("client", "--client", "--join", a.status()["token"]).wait_ready()
    expected = greedy(client, PROMPT, 24)
    a.proc.kill()
    # Until the silence is noticed a request fails with a JSON 502; then no host: 503.
    _, body = client.wait_for(lambda: (r := post_chat(client, PROMPT, 4))[0] == 503 and r,
                              "a 503 while no host is ready", 60)
    assert body["error"]["type"] == "unavailable" and "no host" in body["error"]["message"]
    b = make_node("b", "--model", "SmolLM2-135M-Instruct", "--join",
                  client.status()["token"]).wait_ready()
    client.wait_for(lambda: post_chat(client, PROMPT, 4)[0] == 200, "the new host to serve", 120)
    assert client.status()["host"] == b.status()["node_id"] == b.status()["host"]
    assert greedy(client, PROMPT, 24) == expected


def test_client_with_model_says_it_is_ignored(host_and_client, make_node) -> None:
    host, _ = host_and_client
    other = make_node("c2", "--client", "--model", "SmolLM2-135M-Instruct", "--join",
                      host.status()["token"]).wait_ready()
    assert "ignored: a client serves no model" in other.output()


def test_unreachable_mesh_fails_within_the_join_timeout(make_node, tmp_path: Path) -> None:
    host = make_node("host").wait_ready()
    token = host.status()["token"]
    host.stop()
    result = subprocess.run(
        [sys.executable, "-m", "mesh_llm", "--home", str(tmp_path / "c"), "--port", "0",
         "--bind-host", "127.0.0.1", "--client", "--join", token],
        capture_output=True, text=True, timeout=45)  # the join gives up after 15 s
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mesh-llm: could not join") and "127.0.0.1:" in last
