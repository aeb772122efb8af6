"""A split serving a team: one stream, N concurrent streams, the stream right after the burst,
and prose vs code TTFT, through the mesh and over direct TCP side by side.

The same two-node split as bench/split_overhead.py (A --split 2 GB, B 1 GB, SmolLM2
0.67/0.33): A's llama-server reaches B's ggml-rpc-server through the mesh, and a second
llama-server with A's very command line reaches a second ggml-rpc-server with B's over plain
TCP; --delay-ms adds that RTT to both links (UDP proxy between the nodes, TCP proxy in front of
the direct ggml-rpc-server). Waves alternate between the two. One wave, all greedy with
ignore_eos: TTFT of an 8-token prose and code request (--ttft-samples each, alternating; the
wave's median), one stream of --tokens, --streams concurrent streams of --tokens (aggregate
= all tokens / wall time), the stream right after, and the next one. Medians over the waves.

    .venv/bin/python bench/concurrency.py [--waves 3] [--delay-ms 20] [--node-arg=--parallel=4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Run, median, stream_once
from split_overhead import direct_split, last_argv
from splitmesh import link_rtts, split_pair, wait_link_rtt

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PROSE = [SYSTEM, {"role": "user", "content": "Write a short story about a lighthouse keeper."}]
CODE = [SYSTEM, {"role": "user", "content":
                 "Write a Python function that checks whether a number is prime."}]
COLUMNS = ("one", "aggregate", "after", "next", "prose_ttft", "code_ttft")


async def wave(session: aiohttp.ClientSession, base: str, tokens: int, streams: int,
               ttft_samples: int) -> dict[str, float]:
    """One wave against one llama-server: tok/s columns and TTFTs in ms."""
    ttft: dict[str, list[float]] = {"prose": [], "code": []}
    for _ in range(ttft_samples):
        for name, messages in (("prose", PROSE), ("code", CODE)):
            ttft[name].append((await stream_once(session, base, 8, messages)).ttft_ms)
    one = await stream_once(session, base, tokens, PROSE)
    start = time.perf_counter()
    runs: list[Run] = await asyncio.gather(*(stream_once(session, base, tokens, PROSE)
                                             for _ in range(streams)))
    aggregate = sum(r.tokens for r in runs) / (time.perf_counter() - start)
    after = await stream_once(session, base, tokens, PROSE)
    following = await stream_once(session, base, tokens, PROSE)
    return {"one": one.gen_tps, "aggregate": aggregate, "after": after.gen_tps,
            "next": following.gen_tps, "prose_ttft": median(ttft["prose"]),
            "code_ttft": median(ttft["code"])}


def loadavg() -> str:
    """The 1-minute load average: these machines are shared, so each wave says how busy."""
    return Path("/proc/loadavg").read_text().split()[0]


async def measure(bases: dict[str, str], waves: int, tokens: int,
                  streams: int, ttft_samples: int) -> dict[str, dict[str, float]]:
    """Alternate waves over `bases`; medians per column. A warm-up stream each first."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in bases}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for base in bases.values():
            await stream_once(session, base, 8, PROSE)
        for i in range(waves):
            for name, base in bases.items():
                got = await wave(session, base, tokens, streams, ttft_samples)
                results[name].append(got)
                print(f"wave {i + 1} {name:<6} " + "  ".join(f"{k} {v:.1f}" for k, v in
                                                               got.items())
                      + f"  load {loadavg()}", flush=True)
    return {name: {k: median([w[k] for w in ws]) for k in COLUMNS}
            for name, ws in results.items()}


def report(table: dict[str, dict[str, float]], rtt: float, waves: int, streams: int) -> None:
    print(f"\nadded RTT {rtt:g} ms, medians of {waves} waves ({streams} streams):")
    print(f"{'':<8}{'one tok/s':>10}{'aggregate':>11}{'after':>8}{'next':>8}"
          f"{'prose TTFT':>12}{'code TTFT':>11}")
    for name, row in table.items():
        print(f"{name:<8}{row['one']:>10.1f}{row['aggregate']:>11.1f}{row['after']:>8.1f}"
              f"{row['next']:>8.1f}{row['prose_ttft']:>10.0f}ms{row['code_ttft']:>9.0f}ms")
    for name, row in table.items():
        print(f"{name}: aggregate/one {row['aggregate'] / row['one']:.2f} (target ≥ 3), "
              f"after/one {row['after'] / row['one']:.2f} (≥ 0.9), "
              f"prose/code TTFT {row['prose_ttft'] / row['code_ttft']:.2f} (≤ 2)")
    if {"mesh", "direct"} <= table.keys():
        mesh, direct = table["mesh"], table["direct"]
        ratios = [f"{k} {mesh[k] / direct[k]:.2f}" for k in ("one", "aggregate", "after", "next")]
        ratios += [f"{k} {direct[k] / mesh[k]:.2f}" for k in ("prose_ttft", "code_ttft")]
        print("mesh/direct (TTFT: direct/mesh), target ≥ 0.95: " + ", ".join(ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waves", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=20.0, metavar="RTT")
    ap.add_argument("--ttft-samples", type=int, default=4,
                    help="prose and code TTFT requests per wave, alternating (median)")
    ap.add_argument("--node-arg", action="append", default=[], metavar="ARG",
                    help="an argument for node A (repeat; --node-arg=--parallel=4)")
    args = ap.parse_args()
    rtt = args.delay_ms
    with tempfile.TemporaryDirectory() as tmp, split_pair(Path(tmp), rtt,
                                                          a_args=args.node_arg) as pair:
        seen = wait_link_rtt(pair, rtt) if rtt > 0 else link_rtts(pair)
        print(f"mesh link RTT (gossip pings): A→B {seen[0]} ms, B→A {seen[1]} ms")
        llama_argv = last_argv(pair.a.home / "logs" / "llama-server.log")
        rpc_argv = last_argv(pair.b.home / "logs" / "ggml-rpc-server.log")
        print("llama-server: " + " ".join(llama_argv[llama_argv.index("--jinja") + 1:]))
        with direct_split(llama_argv, rpc_argv, rtt) as direct:
            mesh = f"http://127.0.0.1:{pair.a.status()['llama_server']['port']}"
            table = asyncio.run(measure({"mesh": mesh, "direct": direct}, args.waves,
                                        args.tokens, args.streams, args.ttft_samples))
        report(table, rtt, args.waves, args.streams)  # before teardown, which can fail


if __name__ == "__main__":
    main()
