"""Seed scenario 2: the model runs across two nodes through llama.cpp RPC over the mesh."""

from __future__ import annotations

import re

import openai
import pytest

from nodes import NodeProcess

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]


def greedy(node: NodeProcess, stream: bool = False) -> str:
    api = openai.OpenAI(base_url=node.api + "/v1", api_key="unused", max_retries=0, timeout=120)
    kw = {"model": "SmolLM2-135M-Instruct", "messages": PROMPT, "temperature": 0,
          "max_tokens": 40}
    if not stream:
        return api.chat.completions.create(**kw).choices[0].message.content or ""
    chunks = api.chat.completions.create(stream=True, **kw)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def is_split(node: NodeProcess) -> bool:
    s = node.status()
    return bool(s["llama_ready"] and s["plan"] and s["plan"]["mode"] == "split")


@pytest.fixture(scope="module")
def solo_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    node = NodeProcess(tmp_path_factory.mktemp("solo") / "home").start()
    try:
        return greedy(node.wait_ready())
    finally:
        node.stop()


def test_two_node_split_matches_solo_from_both_nodes(make_node, solo_text: str) -> None:
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    worker = make_node("b", "--max-vram", "1", "--join", host.status()["token"]).wait_ready()
    host.wait_for(lambda: is_split(host), "the split plan to be loaded", 120)

    hs, ws = host.status(), worker.status()
    assert (hs["role"], ws["role"]) == ("host", "worker")
    assert hs["host"] == ws["host"] == hs["node_id"]
    plan = hs["plan"]
    assert plan["workers"] == [ws["node_id"]] and plan["tensor_split"] == [0.67, 0.33]
    assert len(plan["rpc"]) == 1 and plan["rpc"][0].startswith("127.0.0.1:")
    assert ws["plan"] == plan, "the worker shows the host's plan from gossip"
    assert hs["rpc_bytes_sent"] > 0, "weights and compute went through the mesh tunnel"

    log = (host.home / "logs" / "llama-server.log").read_text()
    remote = int(re.findall(r"offloading (\d+) repeating layers", log)[-1])
    assert abs(remote - 30 * 0.33) <= 1, "llama.cpp's own placement follows the plan"

    assert solo_text and greedy(host) == solo_text
    assert greedy(worker) == solo_text
    assert greedy(worker, stream=True) == greedy(host, stream=True) == solo_text
