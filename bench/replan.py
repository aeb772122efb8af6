"""Requests lost and the longest stall across worker join/leave cycles.

Node A runs with --split (solo until a worker comes) and a lite client C joins it. N streams
(each exactly --tokens tokens, `ignore_eos`) run back to back through C's (or A's) API the
whole time. Each cycle a fresh worker B joins (A re-plans to split) and then leaves with
SIGTERM (A re-plans to solo). Per cycle it prints:

  lost        streams that failed, were refused or were cut (no `finish_reason`, too few tokens)
  max_gap     the longest gap between two chunks of one stream (a running stream's stall)
  max_wait    the longest time from request to first chunk (what a queued request waited)
  load_s      A's llama-server load time for the split and for the solo server after it

Targets: 0 lost; stall <= the new llama-server's load time + 1 s.

    .venv/bin/python bench/replan.py [--cycles 3] [--streams 8] [--tokens 24] [--via client]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from mesh_llm.cli.benchmark import sse_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from nodes import NodeProcess, http_json

TIMEOUT_S = 180.0
POLL_S = 0.1


@dataclass
class Stream:
    started: float
    first: float | None = None
    max_gap: float = 0.0
    tokens: int = 0
    finish: str | None = None
    error: str | None = None
    ended: float = 0.0


async def one_stream(session: aiohttp.ClientSession, api: str, tokens: int, i: int) -> Stream:
    """One streamed completion; chunk gaps measured on arrival."""
    result = Stream(time.monotonic())
    body = {"messages": [{"role": "user", "content": f"Tell me about the number {i}."}],
            "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    last = result.started
    try:
        async with session.post(api + "/v1/chat/completions", json=body) as resp:
            if resp.status != 200:
                result.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return result
            buffer = b""
            async for chunk in resp.content.iter_any():
                now = time.monotonic()
                if result.first is None:
                    result.first = now
                else:
                    result.max_gap = max(result.max_gap, now - last)
                last = now
                events, buffer = sse_data(buffer + chunk)
                for data in events:
                    if "error" in data:
                        result.error = str(data["error"])[:200]
                    for choice in data.get("choices") or []:
                        result.finish = choice.get("finish_reason") or result.finish
                    if data.get("usage"):
                        result.tokens = data["usage"]["completion_tokens"]
    except (aiohttp.ClientError, TimeoutError) as err:
        result.error = f"{type(err).__name__}: {err}"
    finally:
        result.ended = time.monotonic()
    return result


class Load:
    def __init__(self, api: str, streams: int, tokens: int) -> None:
        self.api, self.streams, self.tokens = api, streams, tokens
        self.results: list[Stream] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self, session: aiohttp.ClientSession, i: int) -> None:
        n = 0
        while not self._stop.is_set():
            self.results.append(await one_stream(session, self.api, self.tokens, i * 1000 + n))
            n += 1

    def start(self, session: aiohttp.ClientSession) -> None:
        self._tasks = [asyncio.create_task(self._run(session, i)) for i in range(self.streams)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def status(node: NodeProcess) -> dict[str, Any]:
    return http_json(node.console + "/api/status")[1]


async def until(predicate, what: str) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            found = await asyncio.to_thread(predicate)
        except (OSError, ValueError):
            found = None
        if found:
            return found
        await asyncio.sleep(POLL_S)
    raise SystemExit(f"timed out waiting for {what}")


def serving(node: NodeProcess, mode: str) -> dict[str, Any] | None:
    s = status(node)
    plan = s.get("plan") or {}
    settled = [g["state"] for g in s.get("llama_servers") or []] == ["serving"]
    return s if s["llama_ready"] and plan.get("mode") == mode and settled else None


async def run_cycle(cycle: int, session: aiohttp.ClientSession, host: NodeProcess,
                    target: NodeProcess, token: str, tmp: Path, args: argparse.Namespace,
                    nodes: list[NodeProcess]) -> None:
    """One join and one leave under load; prints one line."""
    load = Load(target.api, args.streams, args.tokens)
    load.start(session)
    await until(lambda: len(load.results) >= args.streams, "first streams")
    worker = NodeProcess(tmp / f"b{cycle}", "--max-vram", "1", "--join", token).start()
    nodes.append(worker)
    split = await until(lambda: serving(host, "split"), "the split")
    joined = time.monotonic()
    await until(lambda: any(r.started > joined for r in load.results), "streams on the split")
    await asyncio.to_thread(worker.stop, 60)
    solo = await until(lambda: serving(host, "solo"), "solo again")
    left = time.monotonic()
    await until(lambda: any(r.started > left for r in load.results), "streams on the solo")
    await load.stop()
    results = load.results
    lost = [r for r in results if r.error or r.finish != "length" or r.tokens != args.tokens]
    gap = max(r.max_gap for r in results)
    wait = max((r.first or r.ended) - r.started for r in results)
    print(f"{cycle:>5} {len(results):>7} {len(lost):>4} {gap:>9.2f} {wait:>10.2f} "
          f"{split['llama_server']['load_seconds']:>12.2f} "
          f"{solo['llama_server']['load_seconds']:>11.2f}", flush=True)
    for r in lost[:3]:
        print(f"      lost: {r.error or (r.finish, r.tokens)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--via", choices=("client", "host"), default="client")
    args = parser.parse_args()
    nodes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory(prefix="replan-bench-") as tmp:
        try:
            host = NodeProcess(Path(tmp) / "a", "--split", "--max-vram", "2").start()
            nodes.append(host)
            await asyncio.to_thread(host.wait_ready)
            token = status(host)["token"]
            target = host
            if args.via == "client":
                target = NodeProcess(Path(tmp) / "c", "--client", "--join", token).start()
                nodes.append(target)
                await asyncio.to_thread(target.wait_ready)
            print(f"{args.cycles} cycles, {args.streams} streams x {args.tokens} tokens "
                  f"through the {args.via}")
            print(f"{'cycle':>5} {'streams':>7} {'lost':>4} {'max_gap_s':>9} {'max_wait_s':>10} "
                  f"{'split_load_s':>12} {'solo_load_s':>11}")
            connector = aiohttp.TCPConnector(force_close=True, limit=0)
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                for cycle in range(1, args.cycles + 1):
                    await run_cycle(cycle, session, host, target, token, Path(tmp), args,
                                    nodes)
        finally:
            for node in reversed(nodes):
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.kill()
                    node.proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
