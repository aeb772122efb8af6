"""Bad input: the host's llama-server crashes *during* a split load. The supervisor restarts
it on the same plan (same tunnels, same shares) and the mesh answers as before.

To be inside the load deterministically, the worker's ggml-rpc-server is paused (SIGSTOP):
the kernel still accepts the tunnel's connection, so a llama-server (re)started then stalls
waiting for the worker's first RPC reply, with `llama_ready` false, until SIGCONT.
Every pid comes from a node's status; nothing is found or killed by name.
"""

from __future__ import annotations

import os
import signal
import time

from nodes import NodeProcess, greedy

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write one sentence about the sea."}]
STALL_S = 1.0  # how long a stalled load must stay stalled before we call it stalled


def llama(node: NodeProcess) -> tuple[int | None, bool, dict]:
    """(llama-server pid, ready, plan) from the node's status."""
    s = node.status()
    return (s["llama_server"] or {}).get("pid"), s["llama_ready"], s["plan"] or {}


def loading_on_rpc(node: NodeProcess, not_pids: set[int | None]) -> int | None:
    """The pid of a llama-server started after `not_pids` that is not ready and has opened
    its RPC tunnel (it is in the load, waiting on the worker); else None."""
    s = node.status()
    pid = (s["llama_server"] or {}).get("pid")
    stalled = pid not in not_pids and not s["llama_ready"] and \
        s["rpc_tunnel"]["connections"] >= 1 and s["rpc_tunnel"]["bytes_in"] > 0
    return pid if stalled else None


def test_llama_server_killed_during_a_split_load_restarts_on_the_same_plan(make_node) -> None:  # type: ignore[no-untyped-def]
    host = make_node("a", "--split", "--max-vram", "2").wait_ready()
    solo_text = greedy(host, PROMPT, 40)  # no worker yet: the host alone
    worker = make_node("b", "--model", "SmolLM2-135M-Instruct", "--max-vram", "1", "--join",
                       host.status()["token"]).wait_ready()
    host.wait_for(lambda: (p := llama(host))[1] and p[2].get("mode") == "split",
                  "the split plan to be loaded", 120)
    first, _, plan = llama(host)
    assert plan["workers"] == [worker.status()["node_id"]] and len(plan["rpc"]) == 1
    rpc_pid = worker.status()["rpc_server"]["pid"]
    assert first and rpc_pid

    os.kill(rpc_pid, signal.SIGSTOP)
    try:
        # A crash of the loaded server starts a reload; it stalls on the paused worker.
        os.kill(first, signal.SIGKILL)
        second = host.wait_for(lambda: loading_on_rpc(host, {None, first}),
                               "a reload stalled on the paused worker", 30)
        time.sleep(STALL_S)
        assert llama(host)[:2] == (second, False), "the load is held up by the worker"
        # The crash under test: llama-server dies in the middle of loading the split.
        os.kill(second, signal.SIGKILL)
    finally:
        os.kill(rpc_pid, signal.SIGCONT)

    third = host.wait_for(lambda: (p := llama(host))[1] and p[0] not in (None, first, second)
                          and p[0], "llama-server restarted and loaded", 120)
    pid, ready, after = llama(host)
    assert (pid, ready) == (third, True)
    assert after == plan, "restarted on the same plan: same worker, tunnel and shares"
    assert worker.status()["rpc_server"]["pid"] == rpc_pid, "the worker's server survived"
    out = host.output()
    assert out.count("llama-server exited with code -9; restarting") == 2
    assert out.count("split over 1 worker") == 1, "restarted by the supervisor, not re-planned"
    assert greedy(host, PROMPT, 40) == solo_text
    assert greedy(worker, PROMPT, 40) == solo_text
