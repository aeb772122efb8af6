"""What the API relay costs: streamed generation through :9337 vs straight to llama-server.

Starts one real node (solo, SmolLM2), then alternates runs against its API port and
against the same llama-server's own port, and prints medians and ratios. Also the
node's peak RSS (VmHWM) while serving.

    .venv/bin/python bench/api_overhead.py [--reps 15] [--tokens 128] [--two-models]
        [--route chat|messages|responses]

With --route messages (Anthropic's /v1/messages) or responses (/v1/responses) that route is
measured too, after the chat route in the same run (targets: the chat route's).

With --two-models the node serves a second model too (an F16 copy, made once), so each
request is routed by its `model` among two.

With --metrics, instead: two nodes, one with metrics (the default) and one with
--no-metrics, each alternated with its own llama-server (the ratio of their relays' gen
tok/s ratios, on/off, target ≥ 0.99; CPU per token of each),
then --requests short requests (default 10,000) through the node with metrics, and its RSS
growth over them (VmRSS after a warm-up vs after; target ≤ 5 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp

from common import PROMPT, ROUTES, added_ttft, compare, cpu_per_token
from nodes import NodeProcess


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def many_requests(base: str, count: int, concurrency: int = 4) -> None:
    """`count` one-token chat completions, every other one streamed, `concurrency` at once."""
    todo = iter(range(count))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in todo:
            body = {"messages": PROMPT, "max_tokens": 1, "stream": i % 2 == 0}
            async with session.post(base + "/v1/chat/completions", json=body) as resp:
                resp.raise_for_status()
                await resp.read()

    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


def relayed(node: NodeProcess) -> float:
    """mesh_llm_relayed_requests_total of the node's one model, from its /metrics."""
    import urllib.request
    with urllib.request.urlopen(node.console + "/metrics", timeout=10) as resp:
        page = resp.read().decode()
    return sum(float(m) for m in re.findall(r"^mesh_llm_relayed_requests_total\{.*\} (\S+)$",
                                            page, re.M))


def llama_url(node: NodeProcess) -> str:
    return f"http://127.0.0.1:{node.status()['llama_server']['port']}"


async def measure_metrics(on: NodeProcess, off: NodeProcess, reps: int, tokens: int,
                          requests: int) -> None:
    # Each node against its own llama-server, alternated: the two llama-servers' own
    # speeds differ on a shared machine, so the ratio compared is each relay's own.
    bases = {"off-llama": llama_url(off), "off-api": off.api,
             "on-llama": llama_url(on), "on-api": on.api}
    m = await compare(bases, reps, tokens)
    off_ratio, on_ratio = (m["off-api"][0] / m["off-llama"][0],
                           m["on-api"][0] / m["on-llama"][0])
    print(f"  relay / its llama-server gen tok/s: no-metrics {off_ratio:.3f}, metrics "
          f"{on_ratio:.3f}; metrics on / off: {on_ratio / off_ratio:.3f}   (target ≥ 0.99)")
    for name, node in (("no-metrics", off), ("metrics", on)):
        cpu = await cpu_per_token({name: node.proc.pid}, node.api)
        print(f"  {name} node CPU per streamed token: {cpu[name]:.3f} ms")
    await many_requests(on.api, 200)  # warm-up: every lazily made object exists now
    before, seen = peak_rss_mb(on.proc.pid, "VmRSS"), relayed(on)
    await many_requests(on.api, requests)
    after = peak_rss_mb(on.proc.pid, "VmRSS")
    print(f"  {requests} requests (half streamed, 1 token): /metrics counted "
          f"{relayed(on) - seen:.0f}; node RSS {before:.1f} → {after:.1f} MB, growth "
          f"{after - before:+.1f} MB   (target ≤ 5 MB)")


async def measure(node: NodeProcess, reps: int, tokens: int, route: str = "chat") -> None:
    direct = f"http://127.0.0.1:{node.status()['llama_server']['port']}"
    for each in dict.fromkeys(("chat", route)):
        m = await compare({"direct": direct, "mesh-llm": node.api}, reps, tokens, each)
        print(f"  ratio (mesh-llm / direct) gen tok/s: {m['mesh-llm'][0] / m['direct'][0]:.3f}"
              f"   (target ≥ 0.98)")
        print(f"  TTFT difference of those medians: {m['mesh-llm'][1] - m['direct'][1]:+.2f} ms")
        ttft = await added_ttft(direct, node.api, 4 * reps, each)
        print(f"  added TTFT, {4 * reps} paired 4-token streams: {ttft:+.2f} ms   "
              "(target ≤ 2 ms)")
    cpu = await cpu_per_token({"mesh-llm": node.proc.pid}, node.api)
    print(f"  mesh-llm CPU per streamed token: {cpu['mesh-llm']:.3f} ms")
    print(f"  mesh-llm peak RSS: {peak_rss_mb(node.proc.pid):.1f} MB   (target ≤ 100 MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--two-models", action="store_true",
                    help="serve a second model beside SmolLM2 (routing among two)")
    ap.add_argument("--route", choices=ROUTES, default="chat",
                    help="also measure this API family (after the chat route)")
    ap.add_argument("--metrics", action="store_true",
                    help="compare a node with metrics to one with --no-metrics instead")
    ap.add_argument("--requests", type=int, default=10_000,
                    help="with --metrics: requests for the RSS growth")
    args = ap.parse_args()
    if args.metrics:
        with tempfile.TemporaryDirectory() as tmp:
            on = NodeProcess(Path(tmp) / "on").start()
            off = NodeProcess(Path(tmp) / "off", "--no-metrics").start()
            try:
                on.wait_ready()
                off.wait_ready()
                asyncio.run(measure_metrics(on, off, args.reps, args.tokens, args.requests))
            finally:
                on.stop()
                off.stop()
        return
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = []
        if args.two_models:
            from modelgen import dequantize_to_f16, smollm2_path
            copy = dequantize_to_f16(smollm2_path(), Path(tmp) / "Second-Model-F16.gguf")
            extra = ["--model", "SmolLM2-135M-Instruct", "--model", str(copy)]
        node = NodeProcess(Path(tmp) / "home", *extra).start()
        try:
            node.wait_ready()
            if args.two_models:
                node.wait_for(lambda: all(m["ready"] for m in node.status()["models"])
                              and len(node.status()["models"]) == 2, "both models ready")
            asyncio.run(measure(node, args.reps, args.tokens, args.route))
        finally:
            node.stop()


if __name__ == "__main__":
    main()
