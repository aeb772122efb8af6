"""--max-split-rtt with real nodes: a worker behind a slow link (a user-space UDP delay
proxy on 127.0.0.1) is left out of the host's split and the status says why; a near
worker serves the split."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from delay_proxy import Spawned  # the bench owns the proxy
from nodes import greedy
from splitmesh import proxied_token, quic_addr

MODEL = "SmolLM2-135M-Instruct"
LIMIT_MS = 25
FAR_RTT_MS = 60
PROMPT = [{"role": "user", "content": "Say hello."}]


def split_without(status: dict[str, Any], worker: str, far: str) -> dict[str, Any] | None:
    """The status once the host serves a split with `worker` alone and excludes `far`."""
    plan = status.get("plan") or {}
    if (status["llama_ready"] and plan.get("mode") == "split"
            and plan.get("workers") == [worker] and far in status["excluded_peers"]):
        return status
    return None


def test_a_far_worker_is_excluded_for_its_rtt_and_a_near_one_serves(make_node) -> None:  # type: ignore[no-untyped-def]
    limit = ("--max-split-rtt", str(LIMIT_MS))
    host = make_node("a", "--model", MODEL, "--split", "--max-vram", "2", *limit).wait_ready()
    token = host.status()["token"]
    proxy = Spawned("udp", quic_addr(token), FAR_RTT_MS)
    try:
        far = make_node("far", "--model", MODEL, "--max-vram", "1", *limit,
                        "--join", proxied_token(token, proxy.port)).wait_ready()
        far_id = far.status()["node_id"]
        near = make_node("near", "--model", MODEL, "--max-vram", "1", *limit,
                         "--join", token).wait_ready()
        near_id = near.status()["node_id"]
        status = host.wait_for(lambda: split_without(host.status(), near_id, far_id),
                               "a split with the near worker only, the far one excluded", 180)
        assert status["excluded_peers"][far_id].startswith("rtt "), status["excluded_peers"]
        assert f"over --max-split-rtt {LIMIT_MS} ms" in status["excluded_peers"][far_id]
        rtts = {p["id"]: p["rtt_ms"] for p in status["peers"]}
        assert rtts[far_id] > LIMIT_MS >= rtts[near_id], rtts
        assert near_id not in status["excluded_peers"]
        assert greedy(host, PROMPT, 8), "the split answers"
    finally:
        proxy.stop()
