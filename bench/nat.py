"""Reach across NATs, in the NAT lab (tests/natlab.py): real nodes in network namespaces.

Three measurements, each printed as a table:

1. Time from join to a direct link. A public member P serves SmolLM2 alone; every other
   node joins it with `--join` and no model (a worker without a file: no llama-server of
   its own). On the open network, Q1 joins, then Q2: from starting Q2's process to Q2's
   `direct` link to Q1 (gossip, then a dial). Behind NATs that keep ports, E1 joins, then
   E2: from starting E2 to E2's `punched` link to E1 (the dials fail, P introduces them,
   both punch). Both also show the time to the link to P ("joined").
2. Punch success by NAT pair. In the same trial R1 and R2, behind NATs that randomise
   ports per destination, join too; each pair among E1, E2, R1, R2 ends up `punched` or
   `relayed (via P)` (or with no link), timed from starting the later of its two nodes
   (R1 and R2 start together). Fresh nodes (new ids, new ports) every trial.
3. Split tok/s through a relay vs a direct link. A (home, NAT keeping ports) hosts SmolLM2
   with `--split`; its worker is B (home, NAT keeping ports: the link is punched, direct)
   or C (home, port-randomising NAT: relayed through P). P serves another model (an F16
   copy) so that it never joins the split. B's and C's homes reach the internet through a
   user-space wire (bench/wire.py) that adds nothing, or 10 ms each way: +20 ms RTT on the
   direct path, and on the relay's path from P to C. Streamed greedy runs of `--tokens`
   through A's API, from inside A's home; the worker is started anew for each row pair,
   direct then relayed, `--rounds` times; medians over all runs. The link RTT is A's
   status for the worker (a moving average of pings) after the row's runs.

    flock /tmp/bench.lock .venv/bin/python bench/nat.py [--trials 3] [--reps 5]
        [--tokens 64] [--rounds 2] [--only links|split]

Needs root, `ip` and `nft` (scripts/setup --test). Everything runs in namespaces named
`natbench<pid>-*`, deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Run, stream_once
from modelgen import dequantize_to_f16, smollm2_path
from natlab import LabLoop, LabNode, NatLab, lab_available
from waiting import wait_until

MODEL = "SmolLM2-135M-Instruct"
WIRE = Path(__file__).resolve().parent / "wire.py"
POLL_S = 0.05
HOMES = {"E1": False, "E2": False, "R1": True, "R2": True}  # name → randomises ports
KIND = {"E": "EIM", "R": "random"}


def link(node: LabNode, peer_id: str) -> str | None:
    peer = node.peer(peer_id)
    return peer["link"] if peer is not None and peer["state"] == "connected" else None


def node_id(node: LabNode) -> str:
    return str(node.wait_for(lambda: node.status()["node_id"], "its status", 60))


def timed(node: LabNode, started: float, test: Callable[[], object], what: str,
          timeout: float = 90.0) -> float:
    """Seconds from `started` until `test()` holds (polled every 50 ms)."""
    node.wait_for(test, what, timeout)
    return time.perf_counter() - started


# ---------------------------------------------------------------- 1 and 2: links


def links_trial(lab: NatLab, tmp: Path, token: str, p_id: str,
                trial: int) -> tuple[dict[str, float], dict[tuple[str, str], tuple[str, float]]]:
    """One trial: times to P and to the peer (open, punched), and each home pair's link."""
    nodes: dict[str, LabNode] = {}
    started: dict[str, float] = {}

    def start(name: str) -> LabNode:
        started[name] = time.perf_counter()
        nodes[name] = lab.node(name, tmp / f"{name.lower()}-{trial}", "--join", token)
        return nodes[name]

    try:
        times: dict[str, float] = {}
        for first, second, kind in (("Q1", "Q2", "direct"), ("E1", "E2", "punched")):
            one = start(first)
            one.wait_for(lambda one=one: link(one, p_id), f"{first} joined", 90)
            first_id = node_id(one)
            two = start(second)
            times[f"{kind} joined"] = timed(two, started[second],
                                            lambda two=two: link(two, p_id), "joined")
            times[kind] = timed(two, started[second],
                                lambda two=two, i=first_id, k=kind: link(two, i) == k,
                                f"{second}–{first} {kind}")
        for name in ("R1", "R2"):
            start(name)
        ids = {name: node_id(nodes[name]) for name in HOMES}
        pairs: dict[tuple[str, str], tuple[str, float]] = {}

        def settled() -> bool:
            for x, y in itertools.combinations(HOMES, 2):
                if (x, y) in pairs:
                    continue
                seen = link(nodes[x], ids[y]), link(nodes[y], ids[x])
                if seen[0] is not None and seen[0] == seen[1]:
                    kind = "relayed" if seen[0].startswith("relayed") else seen[0]
                    pairs[(x, y)] = (kind, time.perf_counter() - max(started[x], started[y]))
            return len(pairs) == 6

        with contextlib.suppress(AssertionError):  # a pair with no link counts as such
            wait_until(settled, "every home pair linked", 120, POLL_S)
        for x, y in itertools.combinations(HOMES, 2):
            pairs.setdefault((x, y), ("no link", float("nan")))
        pairs[("E1", "E2")] = ("punched", times["punched"])  # timed above, from E2's start
        return times, pairs
    finally:
        for node in nodes.values():
            node.stop(30)


def pair_kind(x: str, y: str) -> str:
    return "–".join(sorted((KIND[x[0]], KIND[y[0]])))


def bench_links(tmp: Path, trials: int) -> None:
    prefix = f"natbench{os.getpid() % 100000}"
    with NatLab(prefix) as lab:
        lab.internet()
        for name in ("P", "Q1", "Q2"):
            lab.public(name)
        for index, (name, randomises) in enumerate(HOMES.items(), 1):
            lab.home(name, index, fully_random=randomises)
        p = lab.node("P", tmp / "p").wait_ready()
        token, p_id = p.status()["token"], p.status()["node_id"]
        results = []
        for trial in range(trials):
            times, pairs = links_trial(lab, tmp, token, p_id, trial)
            results.append((times, pairs))
            print(f"trial {trial + 1}: " + "  ".join(f"{k} {v:.2f} s" for k, v in
                                                     times.items()), flush=True)
            for (x, y), (kind, after) in pairs.items():
                print(f"  {x}–{y} ({pair_kind(x, y)}): {kind} after {after:.1f} s")
    print(f"\nTime from starting the joining process, {trials} trials "
          "(median; all):\n")
    print("| network | link to P (joined) | link to the other member |")
    print("|---|---|---|")
    for kind, label in (("direct", "open (both public): direct"),
                        ("punched", "both behind port-keeping NATs: punched")):
        joined = [t[f"{kind} joined"] for t, _ in results]
        linked = [t[kind] for t, _ in results]
        print(f"| {label} | {fmt(joined)} | {fmt(linked)} |")
    print(f"\nPunch success by NAT pair ({trials} trials; EIM = masquerade, which keeps a "
          "mapping's port for every destination; random = masquerade fully-random):\n")
    print("| NAT pair | pairs | punched | relayed | no link | time to the link (median) |")
    print("|---|---|---|---|---|---|")
    table: dict[str, list[tuple[str, float]]] = {}
    for _, pairs in results:
        for (x, y), outcome in pairs.items():
            table.setdefault(pair_kind(x, y), []).append(outcome)
    for kind in ("EIM–EIM", "EIM–random", "random–random"):
        outcomes = table.get(kind, [])
        count = {k: sum(1 for o, _ in outcomes if o == k) for k in ("punched", "relayed",
                                                                     "no link")}
        after = [t for o, t in outcomes if o != "no link"]
        print(f"| {kind} | {len(outcomes)} | {count['punched']} | {count['relayed']} | "
              f"{count['no link']} | {statistics.median(after):.1f} s |" if after else
              f"| {kind} | {len(outcomes)} | 0 | 0 | {count['no link']} | – |")


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})"


# ---------------------------------------------------------------- 3: split tok/s


class Wire:
    """bench/wire.py between a home's router and the internet."""

    def __init__(self, lab: NatLab, machine: str) -> None:
        self.netns = lab.ns(f"wr{machine}")
        self.proc: subprocess.Popen[str] | None = None

    def set(self, one_way_ms: float) -> None:
        self.stop()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable, str(WIRE),
             "--one-way-ms", str(one_way_ms)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "carrying":
            raise RuntimeError("bench/wire.py did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.communicate(timeout=10)
        self.proc = None


def split_on(a: LabNode, worker: str | None) -> dict[str, Any] | None:
    status = a.status()
    plan = status["plan"] or {}
    wanted = ("split", [worker]) if worker else ("solo", [])
    ok = status["host"] == status["node_id"] and status["llama_ready"] \
        and (plan.get("mode"), plan.get("workers", [])) == wanted
    return status if ok else None


async def stream_runs(api: str, reps: int, tokens: int) -> list[Run]:
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        # P's model is the mesh's default: name A's
        await stream_once(session, api, tokens, model=MODEL)  # warm-up
        return [await stream_once(session, api, tokens, model=MODEL) for _ in range(reps)]


def bench_split(tmp: Path, reps: int, tokens: int, rounds: int) -> None:
    other = dequantize_to_f16(smollm2_path(), tmp / "relay-copy-f16.gguf")
    prefix = f"natbench{os.getpid() % 100000}"
    runs: dict[tuple[str, float], list[Run]] = {}
    rtts: dict[tuple[str, float], list[float]] = {}
    with NatLab(prefix) as lab:
        lab.internet()
        lab.public("P")
        lab.home("A", 1)
        lab.home("B", 2, wire=True)
        lab.home("C", 3, fully_random=True, wire=True)
        wires = {m: Wire(lab, m) for m in ("B", "C")}
        loop = LabLoop(lab, "A")
        try:
            for wire in wires.values():
                wire.set(0)
            p = lab.node("P", tmp / "sp", "--model", str(other)).wait_ready()
            token, p_id = p.status()["token"], p.status()["node_id"]
            a = lab.node("A", tmp / "sa", "--model", MODEL, "--split", "--max-vram", "2",
                         "--join", token)
            a.wait_for(lambda: split_on(a, None), "A serving alone", 180)
            kinds = (("B", "punched"), ("C", f"relayed (via {p_id[:12]})"))
            for _, (machine, label) in itertools.product(range(rounds), kinds):
                w = lab.node(machine, tmp / f"s{machine.lower()}", "--model", MODEL,
                             "--max-vram", "1", "--join", token)
                w_id = node_id(w)
                a.wait_for(lambda w_id=w_id, label=label: link(a, w_id) == label,
                           f"A–{machine} {label}", 90)
                for rtt in (0.0, 20.0):
                    wires[machine].set(rtt / 2)
                    a.wait_for(lambda w_id=w_id: split_on(a, w_id), f"split with {machine}",
                               180)
                    got = loop.run(stream_runs(a.api, reps, tokens), 600)
                    runs.setdefault((machine, rtt), []).extend(got)
                    seen = (a.peer(w_id) or {}).get("rtt_ms")
                    rtts.setdefault((machine, rtt), []).append(seen or float("nan"))
                    print(f"{machine} ({label}), +{rtt:g} ms: "
                          f"{statistics.median(r.gen_tps for r in got):.1f} tok/s, "
                          f"link RTT {seen} ms", flush=True)
                w.stop(60)
                a.wait_for(lambda: split_on(a, None), "A back to solo", 180)
        finally:
            loop.close()
            for wire in wires.values():
                wire.stop()
    print(f"\nSplit of SmolLM2 (A hosts 0.67, the worker 0.33), {rounds} rounds of {reps} "
          f"streamed runs of {tokens} tokens through A's API, medians:\n")
    print("| added RTT | direct (punched) tok/s | relayed tok/s | relayed / direct "
          "(target ≥ 0.9) | TTFT direct | TTFT relayed | link RTT direct | relayed |")
    print("|---|---|---|---|---|---|---|---|")
    for rtt in (0.0, 20.0):
        d, r = runs[("B", rtt)], runs[("C", rtt)]
        tps = [statistics.median(x.gen_tps for x in v) for v in (d, r)]
        ttft = [statistics.median(x.ttft_ms for x in v) for v in (d, r)]
        seen = [statistics.median(rtts[(m, rtt)]) for m in ("B", "C")]
        print(f"| +{rtt:g} ms | {tps[0]:.1f} | {tps[1]:.1f} | {tps[1] / tps[0]:.2f} | "
              f"{ttft[0]:.0f} ms | {ttft[1]:.0f} ms | {seen[0]:.1f} ms | {seen[1]:.1f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3, help="link trials (default 3)")
    ap.add_argument("--reps", type=int, default=5, help="streamed runs per row (default 5)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2,
                    help="split: direct then relayed, this many times (default 2)")
    ap.add_argument("--only", choices=("links", "split"))
    args = ap.parse_args()
    why = lab_available()
    if why is not None:
        sys.exit(f"bench/nat.py: {why}")
    with tempfile.TemporaryDirectory(prefix="natbench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.only in (None, "links"):
            bench_links(tmp, args.trials)
        if args.only in (None, "split"):
            print()
            bench_split(tmp, args.reps, args.tokens, args.rounds)


if __name__ == "__main__":
    main()
