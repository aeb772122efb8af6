"""Two real nodes splitting one model on 127.0.0.1, optionally with added RTT on their link.

Node A starts with --split (2 GB) and B joins (1 GB): SmolLM2 splits 0.67/0.33. With an RTT,
B joins through a UDP delay proxy: B gets A's token re-encoded with the proxy's address
(same node id, same secret), so every QUIC datagram between them crosses the proxy. With two
nodes nothing else can bypass it: gossip only hints at third peers, and A keeps the one
connection B opened (it would dial B's own address only to reconnect a lost link, which
`link_rtts` would show).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from delay_proxy import Spawned
from mesh_llm.mesh.invites import InviteToken, decode_token, encode_token, parse_addr
from nodes import NodeProcess

MODEL = "SmolLM2-135M-Instruct"
A_ARGS = ("--split", "--max-vram", "2")
B_ARGS = ("--max-vram", "1")  # B names the model too: it holds the same file


@dataclass
class Pair:
    a: NodeProcess
    b: NodeProcess
    proxy: Spawned | None


def quic_addr(token: str) -> tuple[str, int]:
    """The node's first token address (its QUIC socket: nodes here bind 127.0.0.1)."""
    return parse_addr(decode_token(token).addrs[0])


def proxied_token(token: str, port: int) -> str:
    """The same invite, but reaching the node at 127.0.0.1:`port` (the proxy)."""
    tok = decode_token(token)
    return encode_token(InviteToken(tok.node_id, [f"127.0.0.1:{port}"], tok.secret))


def split_ready(a: NodeProcess, worker_id: str) -> dict[str, Any] | None:
    """A's status once its llama-server serves a split with `worker_id` in --rpc, else None."""
    status = a.status()
    plan = status.get("plan") or {}
    if (plan.get("mode") == "split" and worker_id in plan.get("workers", [])
            and plan.get("rpc") and status["llama_ready"]):
        return status
    return None


def peer_rtt(node: NodeProcess, peer_id: str) -> float | None:
    for peer in node.status()["peers"]:
        if peer["id"] == peer_id:
            return peer.get("rtt_ms")
    return None


def link_rtts(pair: Pair) -> tuple[float | None, float | None]:
    """RTT of the link in use as each end measures it (gossip pings): (A→B, B→A) in ms."""
    a_id, b_id = pair.a.status()["node_id"], pair.b.status()["node_id"]
    return peer_rtt(pair.a, b_id), peer_rtt(pair.b, a_id)


def wait_link_rtt(pair: Pair, rtt_ms: float, timeout: float = 20) -> tuple[float, float]:
    """Wait until both ends see at least 90% of the added RTT (their estimates start from
    the handshake and are smoothed); raise if the link never shows it."""
    deadline = time.monotonic() + timeout
    seen: tuple[float | None, float | None] = (None, None)
    while time.monotonic() < deadline:
        seen = link_rtts(pair)
        if all(r is not None and r >= 0.9 * rtt_ms for r in seen):
            return seen  # type: ignore[return-value]
        time.sleep(0.25)
    raise RuntimeError(f"the link does not show the added {rtt_ms} ms RTT: A→B, B→A = {seen}")


@contextlib.contextmanager
def split_pair(tmp: Path, rtt_ms: float = 0, model: str = MODEL, a_args: Sequence[str] = (),
               b_args: Sequence[str] = ()) -> Iterator[Pair]:
    """A (--split), then B joining it (through the UDP delay proxy when rtt_ms > 0); yields
    once A serves the split. Everything is stopped on exit."""
    a = NodeProcess(tmp / "a", "--model", model, *A_ARGS, *a_args).start()
    b: NodeProcess | None = None
    proxy: Spawned | None = None
    try:
        a.wait_ready()
        token = a.status()["token"]
        if rtt_ms > 0:
            proxy = Spawned("udp", quic_addr(token), rtt_ms)
            token = proxied_token(token, proxy.port)
        b = NodeProcess(tmp / "b", "--model", model, *B_ARGS, "--join", token,
                        *b_args).start()
        b.wait_ready()
        b_id = b.status()["node_id"]
        a.wait_for(lambda: split_ready(a, b_id), "a split with B", 180)
        yield Pair(a, b, proxy)
    finally:
        for node in (b, a):
            if node is not None and node.proc is not None and node.proc.poll() is None:
                node.stop()
        if proxy is not None:
            print(f"  ({proxy.stop()})")
