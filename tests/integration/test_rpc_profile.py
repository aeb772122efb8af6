"""A split host's status counts the RPC commands its llama-server sends the worker, live, and
the split serves several users at once by default."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from mesh_llm.inference.llama import SPLIT_PARALLEL
from nodes import NodeProcess, openai_client

PROMPT = [{"role": "user", "content": "Count from one to fifty in words."}]
TOKENS = 48


def is_split(node: NodeProcess) -> bool:
    s = node.status()
    return bool(s["llama_ready"] and s["plan"] and s["plan"]["mode"] == "split")


def command(tunnel: dict[str, Any], name: str) -> dict[str, int]:
    return tunnel["by_command"].get(name, {"count": 0, "replies": 0, "bytes_to_server": 0,
                                           "bytes_from_server": 0})


def test_split_status_shows_rpc_commands_moving_during_a_request(make_node) -> None:  # type: ignore[no-untyped-def]
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    make_node("b", "--model", "SmolLM2-135M-Instruct", "--max-vram", "1", "--join",
              host.status()["token"]).wait_ready()
    host.wait_for(lambda: is_split(host), "the split plan to be loaded", 120)

    port = host.status()["llama_server"]["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/props", timeout=10) as resp:
        assert json.load(resp)["total_slots"] == SPLIT_PARALLEL, "a split serves a team"

    loaded = host.status()["rpc_tunnel"]
    assert command(loaded, "HELLO")["count"] >= 1
    assert loaded["round_trips"] >= command(loaded, "HELLO")["count"]

    chunks = openai_client(host).chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=PROMPT, temperature=0, max_tokens=TOKENS,
        stream=True, extra_body={"ignore_eos": True})
    seen: list[dict[str, Any]] = []
    tokens = 0
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
            if tokens in (2, TOKENS // 2):  # mid-stream: the request is still running
                seen.append(host.status()["rpc_tunnel"])
    done = host.status()["rpc_tunnel"]
    assert tokens >= TOKENS - 1 and len(seen) == 2

    early, middle = seen
    # Every decoded token runs the worker's layers and reads their output back: the
    # commands and the round trips grow while the stream is still going.
    assert loaded["commands"] < early["commands"] < middle["commands"] < done["commands"]
    assert loaded["round_trips"] < early["round_trips"] < middle["round_trips"]
    # Each decode step reads the worker's output back: one GET_TENSOR per token at least
    # (counted from before the request: mid-stream, the server may be a few tokens ahead of
    # what the client has read, by more or less at each status read).
    gets = [command(t, "GET_TENSOR") for t in (loaded, early, middle, done)]
    assert gets[0]["count"] < gets[1]["count"] < gets[2]["count"] < gets[3]["count"]
    assert gets[3]["count"] - gets[0]["count"] >= TOKENS - 1
    assert gets[3]["bytes_from_server"] > gets[1]["bytes_from_server"]
    assert command(done, "GRAPH_COMPUTE")["count"] + command(done, "GRAPH_RECOMPUTE")["count"] \
        > command(loaded, "GRAPH_COMPUTE")["count"] + command(loaded, "GRAPH_RECOMPUTE")["count"]
    # fire-and-forget commands are never counted as round trips
    assert command(done, "SET_TENSOR")["replies"] == 0
    assert done["round_trips"] == sum(c["replies"] for c in done["by_command"].values())
