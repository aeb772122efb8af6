"""Shared bench helpers: streamed generation timing and medians."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Write a short story about a lighthouse keeper."}]


ROUTES = ("chat", "messages", "responses")  # the API families a bench can stream through
MODEL = "SmolLM2-135M-Instruct"  # named where a family requires `model`


def request_for(route: str, messages: list[dict[str, str]], tokens: int,
                model: str | None = None) -> tuple[str, dict]:
    """The path and streamed, greedy body of one request of `tokens` tokens on `route`;
    `model` names the model on the chat route too (a mesh of several models)."""
    greedy = {"temperature": 0, "stream": True, "ignore_eos": True}
    if route == "messages":
        system = [m["content"] for m in messages if m["role"] == "system"]
        return "/v1/messages", {"model": MODEL, "max_tokens": tokens, **greedy,
                                "system": "\n".join(system),
                                "messages": [m for m in messages if m["role"] != "system"]}
    if route == "responses":
        return "/v1/responses", {"model": MODEL, "max_output_tokens": tokens, **greedy,
                                 "input": messages}
    named = {"model": model} if model is not None else {}
    return "/v1/chat/completions", {**named, "messages": messages, "max_tokens": tokens,
                                    **greedy}


def token_text(data: dict[str, Any]) -> str:
    """The text one streamed event carries, in whichever family's shape it comes."""
    kind = data.get("type")
    if kind == "content_block_delta":
        return str((data.get("delta") or {}).get("text") or "")
    if kind == "response.output_text.delta":
        return str(data.get("delta") or "")
    choices = data.get("choices") or [{}]
    return str(choices[0].get("delta", {}).get("content") or "")


def sse_data(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The complete events' `data:` lines parsed as JSON (an `event:` line may come first,
    as Anthropic's and the Responses API's streams have it), and the unfinished rest."""
    *events, rest = buffer.split(b"\n\n")
    out = []
    for event in events:
        for line in event.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(json.loads(line[6:]))
    return out, rest


@dataclass(frozen=True)
class Run:
    ttft_ms: float  # request sent → first token
    gen_tps: float  # tokens after the first / time from first to last token
    tokens: int  # content chunks streamed (one per token, unless a server batches them)
    timings: dict[str, Any] | None = None  # llama-server's `timings` from the last chunk


async def stream_once(session: aiohttp.ClientSession, base: str, tokens: int = 128,
                      messages: list[dict[str, str]] | None = None,
                      route: str = "chat", model: str | None = None) -> Run:
    """One streamed completion of exactly `tokens` tokens on `route` (chat completions,
    Anthropic messages or responses), timed on the client side."""
    path, body = request_for(route, messages or PROMPT, tokens, model)
    start = time.perf_counter()
    stamps: list[float] = []
    timings: dict[str, Any] | None = None
    async with session.post(base + path, json=body) as resp:
        resp.raise_for_status()
        buffer = b""
        async for chunk in resp.content.iter_any():
            events, buffer = sse_data(buffer + chunk)
            for data in events:
                timings = data.get("timings") or timings
                if token_text(data):
                    stamps.append(time.perf_counter())
    if len(stamps) < 2:
        raise RuntimeError(f"only {len(stamps)} tokens streamed from {base}")
    return Run((stamps[0] - start) * 1e3, (len(stamps) - 1) / (stamps[-1] - stamps[0]),
               len(stamps), timings)


def median(values: list[float]) -> float:
    return statistics.median(values)


async def compare(bases: dict[str, str], reps: int, tokens: int,
                  route: str = "chat") -> dict[str, tuple[float, float]]:
    """Alternate streamed runs over `bases` (name → API base URL); print and return the
    medians as name → (gen tok/s, TTFT ms). The first run of each is a warm-up."""
    runs: dict[str, list[Run]] = {name: [] for name in bases}
    # llama-server closes a connection after a stream: a fresh one per request, for all.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for base in bases.values():
            await stream_once(session, base, tokens, route=route)
        for _ in range(reps):
            for name, base in bases.items():
                runs[name].append(await stream_once(session, base, tokens, route=route))
    result = {name: (median([r.gen_tps for r in v]), median([r.ttft_ms for r in v]))
              for name, v in runs.items()}
    print(f"{reps} reps × {tokens} tokens, streamed on the {route} route, medians")
    for name, (tps, ttft) in result.items():
        print(f"  {name:<9} gen {tps:7.1f} tok/s   TTFT {ttft:6.2f} ms")
    return result


async def added_ttft(base: str, via: str, reps: int, route: str = "chat") -> float:
    """Median over `reps` pairs of (TTFT via `via` − TTFT at `base`), 4-token streams taken
    back to back: the 128-token runs' TTFT medians drift by ±2 ms between runs here."""
    diffs: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(3):
            await stream_once(session, base, 4, route=route)
            await stream_once(session, via, 4, route=route)
        for _ in range(reps):
            first = await stream_once(session, base, 4, route=route)
            second = await stream_once(session, via, 4, route=route)
            diffs.append(second.ttft_ms - first.ttft_ms)
    return median(diffs)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_per_token(pids: dict[str, int], base: str, streams: int = 10,
                        tokens: int = 128) -> dict[str, float]:
    """ms of CPU each process spends per token streamed through `base`."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        await stream_once(session, base, tokens)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for _ in range(streams):
            await stream_once(session, base, tokens)
    return {name: (cpu_seconds(pid) - before[name]) * 1e3 / (streams * tokens)
            for name, pid in pids.items()}


@contextmanager
def far_end(target: Callable[[Connection], None]) -> Iterator[Connection]:
    """`target` in a child process (spawned, so it has its own event loop and CPU), talking
    over a pipe; told "stop" on the way out, and killed if it has not gone 10 s later."""
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=target, args=(there,), daemon=True)
    child.start()
    try:
        yield here
    finally:
        here.send("stop")
        child.join(10)
        if child.is_alive():
            child.kill()
