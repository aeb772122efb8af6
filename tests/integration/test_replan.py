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


def test_the_same_file_under_another_name_splits_with_us(make_node) -> None:
    a = make_node("a", "--split", "--max-vram", "2").wait_ready()  # by its catalog name
    b = make_node("b", "--model", str(smollm2_path()), "--max-vram", "1", "--join",
                  a.status()["token"]).wait_ready()  # by path: named after the file
    ida, idb = a.status()["node_id"], b.status()["node_id"]
    a.wait_for(lambda: plan_of(a).get("workers") == [idb], "a split with the renamed file", 120)
    sa, sb = a.status(), b.status()
    assert (sa["role"], sb["role"]) == ("host", "worker")
    assert sa["host"] == sb["host"] == ida
    assert sa["excluded_peers"] == sb["excluded_peers"] == {}
    assert sb["model"] == sa["model"] == "SmolLM2-135M-Instruct", "the host's name is shown"
    peer_b = next(p for p in sa["peers"] if p["id"] == idb)
    assert peer_b["models"] == ["SmolLM2-135M-Instruct.Q4_1"], "it announces its own name"
    assert sa["rpc_tunnel"]["weight_bytes_referenced"] > 0, "one file: weights go as references"


def test_another_file_under_the_same_name_is_left_out(make_node, tmp_path: Path) -> None:
    from modelgen import dequantize_to_f16

    q4 = smollm2_path()
    (tmp_path / "f16").mkdir()
    f16 = dequantize_to_f16(q4, tmp_path / "f16" / q4.name)  # other bytes, the same name
    a = make_node("a", "--model", str(q4), "--split", "--max-vram", "2").wait_ready()
    b = make_node("b", "--model", str(f16), "--max-vram", "1", "--join",
                  a.status()["token"]).wait_ready()
    ida, idb = a.status()["node_id"], b.status()["node_id"]
    a.wait_for(lambda: idb in a.status()["excluded_peers"], "the other file left out", 30)
    assert "another file" in a.status()["excluded_peers"][idb]
    assert "another file" in b.status()["excluded_peers"][ida]
    assert plan_of(a)["mode"] == "solo" and plan_of(a)["rpc"] == []
    assert b.status()["host"] == idb, "two models: each serves its own"


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
