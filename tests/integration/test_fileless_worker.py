"""A worker without the model file still works: `--join TOKEN` with no `--model` lends its
device to the host's model, and the weights it holds cross the mesh as real bytes."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nodes import NodeProcess, greedy, http_json

MODEL = "SmolLM2-135M-Instruct"
PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]


def gguf_files_open(pid: int) -> set[str]:
    """The .gguf files a process holds open or mapped (Linux /proc)."""
    proc = Path(f"/proc/{pid}")
    found = set()
    for fd in (proc / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.endswith(".gguf"):
            found.add(target)
    for line in (proc / "maps").read_text().splitlines():
        if line.endswith(".gguf"):
            found.add(line.split(maxsplit=5)[-1])
    return found


def split_ready(node: NodeProcess) -> bool:
    s = node.status()
    return bool(s["llama_ready"] and s["plan"] and s["plan"]["mode"] == "split")


def test_a_worker_without_the_model_file_gets_the_real_bytes(make_node) -> None:  # type: ignore[no-untyped-def]
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    solo_text = greedy(host, PROMPT, 40)  # --split with no worker yet: the host alone
    token = host.status()["token"]
    worker = make_node("b", "--max-vram", "1", "--join", token).wait_ready()  # empty home
    host.wait_for(lambda: split_ready(host), "a split over the worker without the file", 120)

    hs, ws = host.status(), worker.status()
    wid = ws["node_id"]
    assert (hs["role"], ws["role"]) == ("host", "worker") and ws["host"] == hs["node_id"]
    assert hs["model_file"] and ws["model_file"] is None, "the worker has no local model"
    assert ws["model"] == MODEL, "it serves the mesh's model"
    assert ws["rpc_server"]["ready"] and ws["reason"] is None
    assert gguf_files_open(host.proc.pid), "the check below can see an open model file"
    assert not gguf_files_open(worker.proc.pid), "the worker never opened a model file"
    assert not gguf_files_open(ws["rpc_server"]["pid"])
    seen = next(p for p in hs["peers"] if p["id"] == wid)
    assert seen["models"] == [MODEL] and seen["model_file"] is False
    assert hs["excluded_peers"] == {}
    plan = hs["plan"]
    assert plan["workers"] == [wid] and len(plan["rpc"]) == 1
    assert plan["tensor_split"] == [0.67, 0.33]

    log = (host.home / "logs" / "llama-server.log").read_text()
    held = float(re.findall(r"RPC0\[[^]]+\] model buffer size = +([\d.]+) MiB", log)[-1])
    tunnel = hs["rpc_tunnel"]
    # No file on the worker: every weight byte it holds crossed the mesh, once, as itself.
    assert tunnel["weight_bytes_referenced"] == 0
    assert tunnel["weight_bytes_sent"] == tunnel["weight_bytes"] >= 0.99 * held * 2**20
    assert tunnel["weight_bytes_sent"] <= 1.05 * held * 2**20, "each weight travels once"
    assert tunnel["bytes_out"] >= tunnel["weight_bytes_sent"]

    assert greedy(host, PROMPT, 40) == solo_text
    assert greedy(worker, PROMPT, 40) == solo_text

    # Its host leaves: it cannot host (no file), so it waits and says so.
    assert host.stop() == 0
    worker.wait_for(lambda: worker.status()["host"] is None, "the host gone", 30)
    ws = worker.status()
    assert (ws["role"], ws["state"], ws["llama_ready"]) == ("worker", "waiting", False)
    assert "no model file" in ws["reason"] and ws["model"] is None
    code, body = http_json(worker.api + "/health")
    assert code == 503 and "no model file" in body["error"]["message"]
    assert "no model file" in worker.output()

    # A node with the file joins it: that one hosts, and the worker serves again.
    again = make_node("c", "--model", MODEL, "--join", ws["token"]).wait_ready()
    worker.wait_ready()
    assert worker.status()["host"] == again.status()["node_id"]
    assert greedy(worker, PROMPT, 40) == solo_text
