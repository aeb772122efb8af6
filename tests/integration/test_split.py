"""Seed scenario 2: the model runs across two nodes through llama.cpp RPC over the mesh."""

from __future__ import annotations

import re
import shutil

import pytest

from nodes import NodeProcess, greedy

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]


def is_split(node: NodeProcess) -> bool:
    s = node.status()
    return bool(s["llama_ready"] and s["plan"] and s["plan"]["mode"] == "split")


@pytest.fixture(scope="module")
def solo_text(tmp_path_factory: pytest.TempPathFactory) -> str:
    node = NodeProcess(tmp_path_factory.mktemp("solo") / "home").start()
    try:
        return greedy(node.wait_ready(), PROMPT, 40)
    finally:
        node.stop()


def test_two_node_split_matches_solo_from_both_nodes(make_node, solo_text: str) -> None:
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    worker = make_node("b", "--model", "SmolLM2-135M-Instruct", "--max-vram", "1", "--join",
                       host.status()["token"]).wait_ready()
    host.wait_for(lambda: is_split(host), "the split plan to be loaded", 120)

    hs, ws = host.status(), worker.status()
    assert (hs["role"], ws["role"]) == ("host", "worker")
    assert hs["host"] == ws["host"] == hs["node_id"]
    plan = hs["plan"]
    assert plan["workers"] == [ws["node_id"]] and plan["tensor_split"] == [0.67, 0.33]
    assert len(plan["rpc"]) == 1 and plan["rpc"][0].startswith("127.0.0.1:")
    assert ws["plan"] == plan, "the worker shows the host's plan from gossip"
    log = (host.home / "logs" / "llama-server.log").read_text()
    remote = int(re.findall(r"offloading (\d+) repeating layers", log)[-1])
    assert abs(remote - 30 * 0.33) <= 1, "llama.cpp's own placement follows the plan"
    held = float(re.findall(r"RPC0\[[^]]+\] model buffer size = +([\d.]+) MiB", log)[-1])
    tunnel = hs["rpc_tunnel"]
    # The worker has the same file: its weights cross the mesh as references only
    # (test_fileless_worker.py: a worker without it gets the real bytes).
    assert tunnel["weight_bytes_referenced"] >= 0.99 * held * 2**20
    assert tunnel["weight_bytes_sent"] < 0.01 * held * 2**20
    assert tunnel["bytes_out"] < 0.05 * tunnel["bytes_in"]

    assert solo_text and greedy(host, PROMPT, 40) == solo_text
    assert greedy(worker, PROMPT, 40) == solo_text
    streamed = greedy(host, PROMPT, 40, stream=True)
    assert greedy(worker, PROMPT, 40, stream=True) == streamed == solo_text


def test_a_worker_whose_file_differs_gets_the_real_bytes(make_node, tmp_path, solo_text) -> None:  # type: ignore[no-untyped-def]
    from mesh_llm.models.weights import ModelWeights, fingerprint
    from modelgen import smollm2_path

    name = "SmolLM2-135M-Instruct.gguf"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    good, bad = tmp_path / "a" / name, tmp_path / "b" / name
    shutil.copy(smollm2_path(), good)
    shutil.copy(smollm2_path(), bad)
    with ModelWeights.open(bad) as weights:
        span = weights.index[b"blk.27.ffn_down.weight"]
    with open(bad, "r+b") as f:  # one flipped byte inside a layer the worker will hold
        f.seek(span.offset + span.size // 2 + 123)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert fingerprint(bad) == fingerprint(good), "the cheap fingerprint cannot see it..."

    host = make_node("a", "--model", str(good), "--split", "--max-vram", "2").wait_ready()
    worker = make_node("b", "--model", str(bad), "--max-vram", "1", "--join",
                       host.status()["token"]).wait_ready()
    host.wait_for(lambda: is_split(host), "a split that survives the mismatch", 120)
    assert "differs from the host's" in worker.output(), "...but the per-range check does"
    tunnel = host.status()["rpc_tunnel"]
    assert tunnel["weight_bytes_referenced"] == 0 and tunnel["bytes_out"] > 20 * 2**20
    assert greedy(host, PROMPT, 40) == solo_text, \
        "the host's bytes, not the worker's, are what it computes with"
