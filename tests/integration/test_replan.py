"""The plan follows the mesh: a third worker re-plans, and peers that cannot share our model
(another model, another RPC protocol) are left out with a reason."""

from __future__ import annotations

import os
import stat
import sys
import threading
from pathlib import Path

from mesh_llm.inference.engine import find_engine
from modelgen import smollm2_path
from nodes import NodeProcess, greedy, post_chat

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]


def plan_of(node: NodeProcess) -> dict:
    s = node.status()
    return s["plan"] if s["llama_ready"] and s["plan"] else {}


def test_a_third_worker_replans_to_two_rpc_entries(make_node) -> None:
    a = make_node("a", "--split", "--max-vram", "3").wait_ready()
    token = a.status()["token"]
    solo_text = greedy(a, PROMPT, 40)
    b = make_node("b", "--max-vram", "2", "--join", token).wait_ready()
    a.wait_for(lambda: len(plan_of(a).get("rpc", [])) == 1, "a split over one worker", 120)
    assert greedy(b, PROMPT, 40) == solo_text

    answers: list[tuple[int, dict]] = []
    stop = threading.Event()

    def hammer() -> None:  # requests during the re-plan: answered or refused, never hung
        while not stop.is_set():
            answers.append(post_chat(a, PROMPT, 2))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        c = make_node("c", "--max-vram", "1", "--join", token).wait_ready()
        a.wait_for(lambda: len(plan_of(a).get("rpc", [])) == 2, "a split over two", 120)
    finally:
        stop.set()
        thread.join(90)
    plan = plan_of(a)
    assert plan["tensor_split"][0] == 0.5, "the host's share comes first"
    shares = dict(zip(plan["workers"], plan["tensor_split"][1:], strict=True))
    assert shares == {b.status()["node_id"]: 0.33, c.status()["node_id"]: 0.17}
    assert greedy(c, PROMPT, 40) == greedy(a, PROMPT, 40) == solo_text
    assert answers and all(code in (200, 503) for code, _ in answers), \
        [a for a in answers if a[0] not in (200, 503)][:3]
    refused = [body for code, body in answers if code == 503]
    assert all(body["error"]["type"] == "unavailable" for body in refused)


def test_a_node_with_another_model_is_left_out(make_node, tmp_path: Path) -> None:
    other = tmp_path / "other-model.gguf"
    other.write_bytes(smollm2_path().read_bytes())
    a = make_node("a", "--split", "--max-vram", "2").wait_ready()
    b = make_node("b", "--model", str(other), "--max-vram", "1", "--join",
                  a.status()["token"]).wait_ready()
    idb = b.status()["node_id"]
    a.wait_for(lambda: idb in a.status()["excluded_peers"], "the other model left out", 30)
    assert "serves other-model, not SmolLM2-135M-Instruct" in a.status()["excluded_peers"][idb]
    assert plan_of(a)["mode"] == "solo" and plan_of(a)["rpc"] == []


FAKE_RPC_SERVER = """#!{python}
'''Speaks only HELLO, answering with RPC protocol 8.0.0.'''
import socket, struct, sys
port = int(sys.argv[sys.argv.index("-p") + 1])
srv = socket.create_server(("127.0.0.1", port))
while True:
    conn, _ = srv.accept()
    with conn:
        if len(conn.recv(64)) >= 9:
            conn.sendall(struct.pack("<QBBBB", 28, 8, 0, 0, 0) + bytes(24))
"""


def test_a_worker_on_another_rpc_protocol_is_never_split_with(make_node, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(find_engine().llama_server, bin_dir / "llama-server")
    fake = bin_dir / "ggml-rpc-server"
    fake.write_text(FAKE_RPC_SERVER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    a = make_node("a", "--split", "--max-vram", "2").wait_ready()
    b = make_node("b", "--bin-dir", str(bin_dir), "--max-vram", "1", "--join",
                  a.status()["token"]).wait_ready()
    idb = b.status()["node_id"]
    a.wait_for(lambda: idb in a.status()["excluded_peers"], "the other protocol left out", 30)
    assert "RPC protocol 8.0.0 differs from ours (7.0.0)" in a.status()["excluded_peers"][idb]
    assert plan_of(a)["rpc"] == []
