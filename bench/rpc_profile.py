"""RPC commands and round trips per generated token and per prompt ubatch, through the mesh.

A two-node split (bench/splitmesh.py: A --split 2 GB, B 1 GB, SmolLM2 0.67/0.33) and, around
each phase, a snapshot of the host's `rpc_tunnel` status (every RPC command llama-server sends
its worker, by type, bytes each way; round trips = commands whose reply it waits for, each
one link RTT). Phases, all greedy with ignore_eos:

- `prompt`: one request with a long prompt and max_tokens 1 → per prompt ubatch (-ub 512);
- `one`: one stream of --tokens → per token;
- `burst`: --streams concurrent streams of --tokens → per token (all streams together);
- `after`: one stream right after the burst, then `next`: another one;
- `prose`/`code`: 8-token requests of two different prompts, alternating (bench/split_table.py
  alternates them too) → per request: what a prompt switch costs before its first token.

Counts do not depend on the link's RTT; the time they cost does (round trips × RTT), so the
default is no added delay. `--node-arg` passes options to node A (e.g. `--parallel 4`);
`--env LLAMA_ARG_X=V` reaches A's llama-server through its environment (try llama-server
options the node has no flag for).

    .venv/bin/python bench/rpc_profile.py [--tokens 64] [--streams 8] [--node-arg=--parallel=4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Run, stream_once
from splitmesh import split_pair

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
SHORT = [SYSTEM, {"role": "user", "content": "Write a short story about a lighthouse keeper."}]
CODE = [SYSTEM, {"role": "user", "content":
                 "Write a Python function that checks whether a number is prime."}]
# ~700 tokens: two ubatches of 512 at the default -ub.
LONG = [SYSTEM, {"role": "user", "content": "Summarise this: " + " ".join(
    f"The keeper climbed stair {i} of the old lighthouse and counted the ships." for i in
    range(45))}]
UBATCH = 512


def diff(after: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per command type: what moved between two `rpc_tunnel` snapshots."""
    out: dict[str, dict[str, int]] = {}
    for name, now in after["by_command"].items():
        was = before["by_command"].get(name, {})
        moved = {k: v - was.get(k, 0) for k, v in now.items()}
        if moved["count"]:
            out[name] = moved
    return out


def show(phase: str, moved: dict[str, dict[str, int]], per: float, unit: str,
         extra: str = "") -> None:
    total = sum(c["count"] for c in moved.values())
    trips = sum(c["replies"] for c in moved.values())
    up = sum(c["bytes_to_server"] for c in moved.values())
    down = sum(c["bytes_from_server"] for c in moved.values())
    print(f"{phase:<6} in all: {total} commands, {trips} round trips")
    print(f"{phase:<6} per {unit}: {total / per:7.1f} commands, {trips / per:6.2f} round trips, "
          f"{up / per / 1024:8.1f} KiB →worker, {down / per / 1024:8.1f} KiB ←worker{extra}")
    for name, c in sorted(moved.items(), key=lambda kv: -kv[1]["count"]):
        print(f"         {name:<16} {c['count'] / per:7.2f}  (round trips {c['replies'] / per:.2f},"
              f" →{c['bytes_to_server'] / per / 1024:.1f} KiB, "
              f"←{c['bytes_from_server'] / per / 1024:.1f} KiB)")


async def prompt_tokens(session: aiohttp.ClientSession, base: str,
                        messages: list[dict[str, str]]) -> tuple[int, float]:
    body = {"messages": messages, "max_tokens": 1, "temperature": 0}
    start = time.perf_counter()
    async with session.post(base + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        data = await resp.json()
    return int(data["usage"]["prompt_tokens"]), time.perf_counter() - start


async def profile(status: Any, base: str, tokens: int, streams: int) -> None:
    def snap() -> dict[str, Any]:
        return status()["rpc_tunnel"]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(base + "/props") as resp:
            props = await resp.json()
        print(f"llama-server: {props.get('total_slots')} slots")
        await stream_once(session, base, 8, SHORT)  # warm-up: graphs built, buffers allocated
        before = snap()
        n, secs = await prompt_tokens(session, base, LONG)
        ubatches = -(-n // UBATCH)
        show("prompt", diff(snap(), before), ubatches, "ubatch",
             f"   ({n} prompt tokens, {ubatches} ubatches, {secs * 1e3:.0f} ms)")
        before = snap()
        run = await stream_once(session, base, tokens, SHORT)
        show("one", diff(snap(), before), run.tokens, "token", f"   ({run.gen_tps:.1f} tok/s)")
        before = snap()
        start = time.perf_counter()
        runs: list[Run] = await asyncio.gather(*(stream_once(session, base, tokens, SHORT)
                                                 for _ in range(streams)))
        wall = time.perf_counter() - start
        total = sum(r.tokens for r in runs)
        show("burst", diff(snap(), before), total, "token",
             f"   ({streams} streams, {total / wall:.1f} tok/s aggregate)")
        for phase in ("after", "next"):
            before = snap()
            run = await stream_once(session, base, tokens, SHORT)
            show(phase, diff(snap(), before), run.tokens, "token",
                 f"   ({run.gen_tps:.1f} tok/s, TTFT {run.ttft_ms:.0f} ms)")
        for phase, messages in (("prose", SHORT), ("code", CODE), ("prose", SHORT),
                                ("code", CODE)):
            before = snap()
            run = await stream_once(session, base, 8, messages)
            show(phase, diff(snap(), before), 1, "request", f"   (TTFT {run.ttft_ms:.0f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=0.0, metavar="RTT")
    ap.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                    help="an argument for node A (repeat; --node-arg=--parallel=4)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V",
                    help="environment for node A's llama-server (LLAMA_ARG_*)")
    args = ap.parse_args()
    for item in args.env:
        key, _, value = item.partition("=")
        os.environ[key] = value  # inherited by both nodes; only A runs llama-server
    with tempfile.TemporaryDirectory() as tmp, split_pair(Path(tmp), args.delay_ms,
                                                          a_args=args.node_arg) as pair:
        base = f"http://127.0.0.1:{pair.a.status()['llama_server']['port']}"
        asyncio.run(profile(pair.a.status, base, args.tokens, args.streams))


if __name__ == "__main__":
    main()
