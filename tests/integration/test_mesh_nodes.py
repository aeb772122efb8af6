"""Real mesh-llm processes on 127.0.0.1 form, keep and repair a mesh."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from nodes import NodeProcess


def peer_ids(node: NodeProcess) -> set[str]:
    return {p["id"] for p in node.status()["peers"]}


def wait_peers(node: NodeProcess, expected: set[str], what: str, timeout: float = 30) -> None:
    node.wait_for(lambda: peer_ids(node) == expected, what, timeout)


def start_mesh(make_node, count: int) -> list[NodeProcess]:
    """A first node, then `count - 1` nodes that all join with the first node's token."""
    first = make_node("n0", "--max-vram", str(count + 1)).wait_ready()
    token = first.status()["token"]
    others = [make_node(f"n{i}", "--max-vram", str(count + 1 - i), "--join", token)
              for i in range(1, count)]
    return [first, *(n.wait_ready() for n in others)]


def test_three_nodes_form_a_full_mesh_from_one_token(make_node) -> None:
    a, _, _ = nodes = start_mesh(make_node, 3)
    ids = {n.status()["node_id"] for n in nodes}
    assert len(ids) == 3, "each home has its own identity"
    for node in nodes:
        wait_peers(node, ids - {node.status()["node_id"]}, "a full mesh")
    # The third node learned of b only through gossip, yet holds a direct link to it.
    host = a.status()["node_id"]
    assert all(n.status()["host"] == host for n in nodes), "every node predicts the same host"
    assert [n.status()["role"] for n in nodes] == ["host", "worker", "worker"]
    assert all(addr.startswith("127.0.0.1:") for n in nodes for addr in token_fields(n)["addrs"])


def token_fields(node: NodeProcess) -> dict:
    token = node.status()["token"]
    return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


def test_graceful_leave_and_sigkill_are_both_noticed(make_node) -> None:
    a, b, c = start_mesh(make_node, 3)
    ida, idb, idc = (n.status()["node_id"] for n in (a, b, c))
    wait_peers(a, {idb, idc}, "a full mesh")
    assert c.stop() == 0
    wait_peers(a, {idb}, "the goodbye of a stopped node", timeout=5)
    wait_peers(b, {ida}, "the goodbye of a stopped node", timeout=5)
    b.proc.kill()
    # Killed without goodbye: QUIC notices, a 10 s reconnect fails, the peer is removed.
    wait_peers(a, set(), "removal of a killed peer after the reconnect budget", timeout=40)
    assert a.status()["role"] == "host"


def test_wrong_secret_is_refused_and_the_mesh_keeps_serving(make_node) -> None:
    a = make_node("a").wait_ready()
    fields = token_fields(a)
    fields["secret"] = base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=")
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).decode().rstrip("=")
    intruder = make_node("intruder", "--client", "--join", forged)
    assert intruder.proc.wait(30) != 0
    assert "could not join" in intruder.output()
    assert a.status()["peers"] == []
    assert "refused" in a.output() or "auth" in a.output().lower()
    wait_peers(a, set(), "no peers")
    assert a.status()["llama_ready"]


def test_malformed_tokens_exit_2_with_one_line(tmp_path: Path) -> None:
    good = base64.urlsafe_b64encode(json.dumps({"v": 1}).encode()).decode()
    for bad in ("", "!!!not-base64!!!", "aGVsbG8", good[:5], good):
        result = subprocess.run(
            [sys.executable, "-m", "mesh_llm", "--home", str(tmp_path / "h"), "--join", bad],
            capture_output=True, text=True, timeout=20)
        assert result.returncode == 2, (bad, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mesh-llm:") and "token" in lines[0], \
            result.stderr
