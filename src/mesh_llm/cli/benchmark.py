"""`mesh-llm bench`: the seed's benchmark table for the mesh that is running now.

It measures a running node's API (whatever mode the mesh is in) with a prose and a code
prompt: streamed, greedy, `ignore_eos` so every run has the same length, alternating, one
warm-up each, medians. Generation tok/s is (tokens − 1) / (first → last token); TTFT is
request → first token; draft acceptance is Σ `timings.draft_n_accepted` / Σ `draft_n`.
`--concurrency N` adds N streams at once (aggregate tok/s = all tokens / the wave's time);
`--compare` runs the same requests against the host's own llama-server, so the table shows
what the mesh costs on this network. The table's header comes from the node's status.

The numbers are pure functions of timestamps (`summarize`, `render`); the I/O is the HTTP.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from ..netutil import bearer

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PROMPTS: dict[str, list[dict[str, str]]] = {
    "prose": [SYSTEM, {"role": "user", "content":
                       "Write a short story about a lighthouse keeper."}],
    "code": [SYSTEM, {"role": "user", "content":
                      "Write a Python function that returns the n-th Fibonacci number, "
                      "with a docstring and three doctests."}],
}
REQUEST_TIMEOUT_S = 600.0


class BenchError(Exception):
    """Something that stops the benchmark; the message is one line for the user."""


@dataclass(frozen=True)
class Run:
    """One streamed request, timed on the client side."""

    start: float  # when the request was sent
    stamps: tuple[float, ...]  # when each token arrived
    draft_n: int = 0
    draft_accepted: int = 0

    @property
    def ttft_ms(self) -> float:
        return (self.stamps[0] - self.start) * 1e3

    @property
    def gen_tps(self) -> float:
        span = self.stamps[-1] - self.stamps[0]
        return (len(self.stamps) - 1) / span if span > 0 else 0.0


@dataclass(frozen=True)
class Row:
    target: str  # "mesh" or "direct"
    prompt: str
    gen_tps: float  # median
    ttft_ms: float  # median
    acceptance: float | None  # None when nothing was drafted
    runs: int
    aggregate_tps: float | None = None  # --concurrency: median over waves
    concurrency: int = 1


@dataclass
class Report:
    header: dict[str, Any]
    rows: list[Row] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"header": self.header, "rows": [asdict(r) for r in self.rows]},
                          indent=2)


def summarize(target: str, prompt: str, runs: list[Run],
              waves: list[tuple[float, float, int]] | None = None, concurrency: int = 1) -> Row:
    """Medians of `runs`; `waves` are (start, end, tokens) of the concurrent waves."""
    drafted = sum(r.draft_n for r in runs)
    accepted = sum(r.draft_accepted for r in runs)
    aggregate = None
    if waves:
        aggregate = statistics.median(tokens / (end - start) for start, end, tokens in waves
                                      if end > start)
    return Row(target, prompt, statistics.median(r.gen_tps for r in runs),
               statistics.median(r.ttft_ms for r in runs),
               accepted / drafted if drafted else None, len(runs), aggregate, concurrency)


def describe(status: dict[str, Any] | None) -> dict[str, Any]:
    """The table's header from a node's status JSON (unknown fields when there is none)."""
    if not status:
        return {"model": "?", "mode": "?", "nodes": None, "shares": [], "draft": None,
                "backend": "?", "rtt_ms": {}}
    plan = status.get("plan") or {}
    workers = plan.get("workers") or []
    engine = status.get("engine") or {}
    return {
        "model": status.get("model") or "?",
        "mode": plan.get("mode") or "?",
        "nodes": 1 + len(workers) if plan else None,
        "shares": list(plan.get("tensor_split") or []),
        "draft": status.get("draft"),
        "backend": engine.get("backend") or "?",
        "rtt_ms": {p["id"][:12]: p.get("rtt_ms") for p in status.get("peers", [])
                   if isinstance(p, dict) and isinstance(p.get("id"), str)},
    }


def render(report: Report) -> str:
    """The seed's markdown table (and the ratios to direct llama-server with --compare)."""
    h = report.header
    shares = "/".join(f"{s:.2f}" for s in h["shares"]) if h["shares"] else ""
    mode = h["mode"] + (f" over {h['nodes']} nodes ({shares})" if h["mode"] == "split" else "")
    rtts = ", ".join(f"{k} {v:.1f} ms" if isinstance(v, int | float) else f"{k} ?"
                     for k, v in h["rtt_ms"].items()) or "no peers"
    lines = [f"## mesh-llm bench: {h['model']}, {mode}, draft {h['draft'] or 'none'}, "
             f"backend {h['backend']}", f"RTT to peers: {rtts}", ""]
    direct = {r.prompt: r for r in report.rows if r.target == "direct"}
    concurrent = any(r.aggregate_tps is not None for r in report.rows)
    cols = ["mode", "prompt", "gen tok/s", "TTFT ms", "draft acceptance"]
    if concurrent:
        n = max(r.concurrency for r in report.rows)
        cols += [f"{n} streams, aggregate tok/s", "× one stream"]
    if direct:
        cols += ["direct gen tok/s", "mesh / direct"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in report.rows:
        if row.target != "mesh":
            continue
        cells = [h["mode"], row.prompt, f"{row.gen_tps:.1f}", f"{row.ttft_ms:.0f}",
                 "—" if row.acceptance is None else f"{row.acceptance:.0%}"]
        if concurrent:
            agg = row.aggregate_tps
            cells += ["—", "—"] if agg is None else [f"{agg:.1f}", f"{agg / row.gen_tps:.2f}×"]
        if direct:
            d = direct.get(row.prompt)
            cells += ["—", "—"] if d is None else [f"{d.gen_tps:.1f}",
                                                  f"{row.gen_tps / d.gen_tps:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sse_data(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The complete `data:` events in what a stream has sent so far, parsed as JSON, and the
    unfinished rest to keep for the next chunk (`[DONE]` and comments are skipped)."""
    *events, rest = buffer.split(b"\n\n")
    return [json.loads(event[6:]) for event in events
            if event.startswith(b"data: ") and event != b"data: [DONE]"], rest


# ----------------------------------------------------------------------------------- I/O


async def stream_once(session: aiohttp.ClientSession, base: str, messages: list[dict[str, str]],
                      tokens: int, headers: dict[str, str]) -> Run:
    body = {"messages": messages, "max_tokens": tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    start = time.perf_counter()
    stamps: list[float] = []
    timings: dict[str, Any] = {}
    async with session.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status != 200:
            text = (await resp.text())[:200]
            raise BenchError(f"{base} answered {resp.status}: {text}")
        buffer = b""
        async for chunk in resp.content.iter_any():
            events, buffer = sse_data(buffer + chunk)
            for data in events:
                if "error" in data:
                    raise BenchError(f"the stream broke off: {data['error']}")
                timings = data.get("timings") or timings
                choices = data.get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    stamps.append(time.perf_counter())
    if len(stamps) < 2:
        raise BenchError(f"only {len(stamps)} tokens came back from {base}")
    return Run(start, tuple(stamps), int(timings.get("draft_n") or 0),
               int(timings.get("draft_n_accepted") or 0))


async def run_bench(targets: dict[str, str], reps: int, tokens: int, concurrency: int,
                    api_key: str | None, header: dict[str, Any],
                    progress: Any = sys.stderr) -> Report:
    """Alternate prompts and targets; one warm-up each; `reps` measured runs of each."""
    headers = bearer(api_key)
    report = Report(header)
    runs: dict[tuple[str, str], list[Run]] = {(t, p): [] for t in targets for p in PROMPTS}
    waves: dict[tuple[str, str], list[tuple[float, float, int]]] = {k: [] for k in runs}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(force_close=True)  # llama-server closes after a stream
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        total = len(runs) * (reps + 1)
        done = 0
        for rep in range(reps + 1):
            for (target, prompt), bucket in runs.items():
                run = await stream_once(session, targets[target], PROMPTS[prompt], tokens,
                                        headers)
                done += 1
                label = "warm-up" if rep == 0 else f"rep {rep}/{reps}"
                print(f"[{done}/{total}] {target} {prompt} {label}: {run.gen_tps:.1f} tok/s, "
                      f"TTFT {run.ttft_ms:.0f} ms", file=progress, flush=True)
                if rep:
                    bucket.append(run)
        if concurrency > 1:
            for rep in range(reps):
                for (target, prompt), bucket in waves.items():
                    if target != "mesh":
                        continue
                    start = time.perf_counter()
                    wave = await asyncio.gather(*(
                        stream_once(session, targets[target], PROMPTS[prompt], tokens, headers)
                        for _ in range(concurrency)))
                    end = max(r.stamps[-1] for r in wave)
                    bucket.append((start, end, sum(len(r.stamps) for r in wave)))
                    print(f"[wave {rep + 1}/{reps}] {target} {prompt} × {concurrency}: "
                          f"{bucket[-1][2] / (end - start):.1f} tok/s aggregate",
                          file=progress, flush=True)
    for (target, prompt), bucket in runs.items():
        report.rows.append(summarize(target, prompt, bucket, waves[(target, prompt)] or None,
                                     concurrency))
    return report


def fetch_status(console_port: int, api_key: str | None) -> dict[str, Any] | None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{console_port}/api/status",
                                     headers=bearer(api_key))
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            status = json.load(resp)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None
