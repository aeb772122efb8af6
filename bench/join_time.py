"""Time from `--join` to the first token of a split model.

Node A runs alone with --split (serving solo until a worker comes). Each repetition starts
a fresh node B (its own home, so a new node id) with --join A's token, and times, from the
moment B's process is started:

  b_console    B's console answers (the Python process is up)
  b_rpc        B's ggml-rpc-server answers (B's /api/status rpc_server.ready)
  joined       B is in A's peers (A's /api/events)
  replanned    A's plan is split with B as worker (A stops its solo llama-server)
  llama_ready  A's llama-server is ready on the split plan (its --rpc is B's tunnel)
  first_token  a first streamed token from A's :9337, requested as soon as that is seen

Then B stops and A goes back to solo before the next repetition. The solo baseline printed
first is the same request on A's solo plan (TTFT only). Medians. With --delay-ms, B joins
through a UDP delay proxy (see splitmesh.py).

    .venv/bin/python bench/join_time.py [--reps 5] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, stream_once
from delay_proxy import Spawned
from nodes import NodeProcess
from splitmesh import A_ARGS, B_ARGS, MODEL, proxied_token, quic_addr

STEPS = ("b_console", "b_rpc", "joined", "replanned", "llama_ready", "first_token")
POLL_S = 0.02
TIMEOUT_S = 180.0


@dataclass
class Watch:
    """A's status events and B's polled status, stamped with perf_counter()."""

    a_events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    b_polls: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    split_ready: asyncio.Event = field(default_factory=asyncio.Event)


def serves_split(status: dict[str, Any]) -> bool:
    plan = status.get("plan") or {}
    return bool(plan.get("mode") == "split" and plan.get("rpc") and status.get("llama_ready"))


def serves_solo(status: dict[str, Any]) -> bool:
    plan = status.get("plan") or {}
    return bool(plan.get("mode") == "solo" and status.get("llama_ready"))


async def follow_events(session: aiohttp.ClientSession, console: str, watch: Watch) -> None:
    """Record every status A pushes over SSE; set split_ready once it serves a split."""
    async with session.get(console + "/api/events") as resp:
        async for line in resp.content:
            if not line.startswith(b"data: "):
                continue
            status = json.loads(line[6:])
            watch.a_events.append((time.perf_counter(), status))
            if serves_split(status):
                watch.split_ready.set()


async def poll_b(session: aiohttp.ClientSession, console: str, watch: Watch) -> None:
    """Poll B's status (until its console answers it cannot push anything)."""
    while True:
        try:
            async with session.get(console + "/api/status",
                                   timeout=aiohttp.ClientTimeout(total=2)) as resp:
                status = await resp.json()
            watch.b_polls.append((time.perf_counter(), status))
            if (status.get("rpc_server") or {}).get("ready"):
                return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(POLL_S)


def first(stamps: list[tuple[float, dict[str, Any]]], test: Any) -> float:
    return next((t for t, status in stamps if test(status)), float("nan"))


async def one_join(a: NodeProcess, b: NodeProcess, api_session: aiohttp.ClientSession,
                   ) -> dict[str, float]:
    watch = Watch()
    assert b.console_port is not None
    async with aiohttp.ClientSession() as session:
        events = asyncio.create_task(follow_events(session, a.console, watch))
        await asyncio.sleep(0.2)  # the SSE stream is open: its first event is A's state now
        start = time.perf_counter()
        b.start()
        poller = asyncio.create_task(poll_b(session, b.console, watch))
        async with asyncio.timeout(TIMEOUT_S):
            await watch.split_ready.wait()
        sent = time.perf_counter()
        run = await stream_once(api_session, a.api, 8)
        first_token = sent + run.ttft_ms / 1e3
        async with asyncio.timeout(TIMEOUT_S):
            await poller
        events.cancel()
    b_id = watch.b_polls[-1][1]["node_id"]

    def has_b(status: dict[str, Any]) -> bool:
        return any(p["id"] == b_id for p in status.get("peers", []))

    def b_planned(status: dict[str, Any]) -> bool:
        return b_id in ((status.get("plan") or {}).get("workers") or [])

    stamps = {
        "b_console": watch.b_polls[0][0],
        "b_rpc": first(watch.b_polls, lambda s: (s.get("rpc_server") or {}).get("ready")),
        "joined": first(watch.a_events, has_b),
        "replanned": first(watch.a_events, b_planned),
        "llama_ready": first(watch.a_events, lambda s: b_planned(s) and serves_split(s)),
        "first_token": first_token,
    }
    return {step: (t - start) * 1e3 for step, t in stamps.items()}


async def run(a: NodeProcess, tmp: Path, reps: int, rtt_ms: float) -> list[dict[str, float]]:
    results = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as api_session:
        solo = [await stream_once(api_session, a.api, 8) for _ in range(3)]
        print(f"A solo: TTFT {median([r.ttft_ms for r in solo]):.1f} ms")
        for i in range(reps):
            token = a.status()["token"]
            # The UDP proxy serves one client address: a fresh one for each new B.
            proxy = Spawned("udp", quic_addr(token), rtt_ms) if rtt_ms > 0 else None
            if proxy is not None:
                token = proxied_token(token, proxy.port)
            b = NodeProcess(tmp / f"b{i}", "--model", MODEL, *B_ARGS, "--join", token)
            try:
                result = await one_join(a, b, api_session)
            finally:
                if b.proc is not None:
                    b.stop()
                if proxy is not None:
                    proxy.stop()
            results.append(result)
            print(f"rep {i + 1}: " + "  ".join(f"{k} {v:.0f}" for k, v in result.items())
                  + " (ms)")
            await asyncio.to_thread(a.wait_for, lambda: serves_solo(a.status()),
                                    "A back to solo", TIMEOUT_S)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--delay-ms", type=float, default=0.0, metavar="RTT",
                    help="round-trip time added between A and B (default 0)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        a = NodeProcess(tmp / "a", "--model", MODEL, *A_ARGS).start()
        try:
            a.wait_ready()
            results = asyncio.run(run(a, tmp, args.reps, args.delay_ms))
        finally:
            a.stop()
    print(f"\n--join → first token of the split, {args.reps} reps, added RTT "
          f"{args.delay_ms:g} ms, medians (ms from starting B's process):")
    medians = sorted((median([r[step] for r in results]), step) for step in STEPS)
    previous = 0.0
    for value, step in medians:  # in the order they happened
        print(f"  {step:<12} {value:8.0f}   (+{value - previous:.0f})")
        previous = value


if __name__ == "__main__":
    main()
