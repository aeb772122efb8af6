"""What a coding agent does to a server: a long system prompt and tool list, then turns
that each append a short message and a tool result, streamed through `/v1/messages`.

Per turn: TTFT, and the prompt tokens llama-server re-processed (Anthropic usage's
`input_tokens`, which counts what the prompt cache did not hold) against the tokens the
turn added. Targets (from turn 2 on): re-processed ≤ new + 64, TTFT ≤ 1.5 × the TTFT of a
fresh 100-token prompt.

    .venv/bin/python bench/agent_session.py [--sessions 1] [--turns 5] [--system-tokens 6000]
        [--split [--rtt 20]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import sse_data
from nodes import NodeProcess

MODEL = "SmolLM2-135M-Instruct"
WORDS = ("module", "function", "returns", "the", "value", "of", "a", "request", "when",
         "cache", "slot", "prompt", "token", "stream", "error", "file", "path", "test")


def system_prompt(tokens: int, seed: int) -> str:
    """About `tokens` tokens of agent-like instructions, different per `seed` (so sessions
    cannot share a cached prefix)."""
    lines = [f"You are coding agent #{seed}. Follow these rules:"]
    i = 0
    while len(" ".join(lines)) < tokens * 4:  # ~4 characters a token for this text
        words = [WORDS[(i * 7 + j * 3 + seed) % len(WORDS)] for j in range(12)]
        lines.append(f"{i}. " + " ".join(words) + ".")
        i += 1
    return "\n".join(lines)


TOOLS = [{"name": f"tool_{n}", "description": f"Does task {n} on a file of the repository.",
          "input_schema": {"type": "object", "properties": {
              "path": {"type": "string"}, "line": {"type": "integer"}}, "required": ["path"]}}
         for n in range(8)]


async def turn(session: aiohttp.ClientSession, base: str, body: dict[str, Any]
               ) -> tuple[float, int, int, str]:
    """One streamed request: (TTFT ms, re-processed tokens, whole prompt tokens, text)."""
    start = time.perf_counter()
    ttft = float("nan")
    usage: dict[str, int] = {}
    text = []
    async with session.post(base + "/v1/messages", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:500]}")
        buffer = b""
        async for chunk in resp.content.iter_any():
            events, buffer = sse_data(buffer + chunk)
            for data in events:
                if data.get("type") == "error" or "error" in data:
                    raise RuntimeError(f"the server answered with an error event: {data}")
                message = data.get("message")
                if not isinstance(message, dict):
                    message = {}
                found = message.get("usage") or data.get("usage") or {}
                usage.update({k: v for k, v in found.items() if isinstance(v, int) and v})
                delta = data.get("delta") or {}
                if data.get("type") == "content_block_delta" and delta.get("text"):
                    if not text:
                        ttft = (time.perf_counter() - start) * 1e3
                    text.append(delta["text"])
    fresh = usage.get("input_tokens", 0)
    return ttft, fresh, fresh + usage.get("cache_read_input_tokens", 0), "".join(text)


async def agent(session: aiohttp.ClientSession, base: str, seed: int, turns: int,
                system_tokens: int, barrier: asyncio.Barrier) -> list[tuple[float, int, int]]:
    """One session: (TTFT, re-processed, new tokens) per turn. Sessions start each turn
    together (`barrier`), so a turn's TTFT is not another session's first 6,000-token
    prompt still being processed."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Read the README."}]
    body = {"model": MODEL, "max_tokens": 16, "temperature": 0, "stream": True,
            "system": system_prompt(system_tokens, seed), "tools": TOOLS}
    rows, before = [], 0
    for n in range(turns):
        await barrier.wait()
        ttft, fresh, total, text = await turn(session, base, {**body, "messages": messages})
        rows.append((ttft, fresh, total - before))
        before = total
        messages += [{"role": "assistant", "content": text or "ok"},
                     {"role": "user", "content": f"Tool result {n}: 3 files changed, tests "
                                                 f"pass. Continue with step {n + 2}."}]
    return rows


async def fresh_ttft(session: aiohttp.ClientSession, base: str, reps: int = 5) -> float:
    """Median TTFT of a fresh (uncached) ~100-token prompt."""
    times = []
    for i in range(reps):
        prompt = system_prompt(100, 1000 + i)
        ttft, *_ = await turn(session, base, {
            "model": MODEL, "max_tokens": 4, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": prompt}]})
        times.append(ttft)
    return statistics.median(times)


async def measure(base: str, sessions: int, turns: int, system_tokens: int) -> None:
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        small = await fresh_ttft(session, base)
        barrier = asyncio.Barrier(sessions)
        runs = await asyncio.gather(*(agent(session, base, s, turns, system_tokens, barrier)
                                      for s in range(sessions)))
    print(f"fresh 100-token prompt TTFT: {small:.0f} ms (target for turns 2+: ≤ "
          f"{1.5 * small:.0f} ms)")
    print(f"{'turn':>4} {'TTFT ms':>9} {'re-processed':>13} {'new':>6}  ok?  ({sessions} "
          "session(s), medians)")
    for n in range(turns):
        ttft = statistics.median(r[n][0] for r in runs)
        fresh = statistics.median(r[n][1] for r in runs)
        new = statistics.median(r[n][2] for r in runs)
        ok = "" if n == 0 else ("yes" if fresh <= new + 64 and ttft <= 1.5 * small else "NO")
        print(f"{n + 1:>4} {ttft:>9.0f} {fresh:>13.0f} {new:>6.0f}  {ok}")
    print(json.dumps({"fresh_ttft_ms": small, "sessions": runs}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=1, help="sessions at once")
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--system-tokens", type=int, default=6000)
    ap.add_argument("--split", action="store_true", help="two nodes splitting the model")
    ap.add_argument("--rtt", type=float, default=20.0, help="with --split: link RTT in ms")
    ap.add_argument("--node-args", default="",
                    help="extra node arguments for the host, as one shell-quoted string "
                         "(e.g. \"--llama-arg '-c 32768'\")")
    args = ap.parse_args()
    extra = shlex.split(args.node_args)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        if args.split:
            from splitmesh import split_pair
            node = stack.enter_context(split_pair(Path(tmp), args.rtt, a_args=extra)).a
        else:
            node = NodeProcess(Path(tmp) / "home", *extra).start()
            stack.callback(node.stop)
            node.wait_ready()
        print(f"{'split, ' + str(args.rtt) + ' ms RTT' if args.split else 'solo'}: "
              f"{args.sessions} session(s) × {args.turns} turns, ~{args.system_tokens}-token "
              "system prompt and 8 tools, streamed through /v1/messages")
        asyncio.run(measure(node.api, args.sessions, args.turns, args.system_tokens))


if __name__ == "__main__":
    main()
