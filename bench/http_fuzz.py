"""Fuzz a node's API and console with malformed HTTP/1.1 over raw sockets; print the counts.

By default starts one node (the real SmolLM2 model) on free ports and checks its log for
tracebacks afterwards; --api-port/--console-port target a node already running instead.
The cases and the verdict on each answer are tests/httpfuzz.py's (the integration test
runs a few hundred of the same).

    .venv/bin/python bench/http_fuzz.py --cases 10000
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import httpfuzz
from nodes import NodeProcess


def generate(count: int, api: int, console: int) -> list[tuple[int, httpfuzz.Case]]:
    """`count` cases from the shared strategies, half for each server (roughly)."""
    cases: list[tuple[int, httpfuzz.Case]] = []

    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(
        httpfuzz.requests(httpfuzz.API_PATHS, f"127.0.0.1:{api}").map(lambda c: (api, c)),
        httpfuzz.requests(httpfuzz.CONSOLE_PATHS, f"127.0.0.1:{console}").map(
            lambda c: (console, c))))
    def collect(target: tuple[int, httpfuzz.Case]) -> None:
        cases.append(target)

    collect()
    return cases


def run(cases: list[tuple[int, httpfuzz.Case]], workers: int) -> tuple[collections.Counter[str],
                                                                      list[tuple[str, str]]]:
    counts: collections.Counter[str] = collections.Counter()
    bad: list[tuple[str, str]] = []

    def one(target: tuple[int, httpfuzz.Case]) -> None:
        port, case = target
        try:
            reply = httpfuzz.exchange("127.0.0.1", port, case)
        except OSError as err:
            counts[f"client error {type(err).__name__}"] += 1
            return
        counts["closed without an answer" if reply.closed_without_answer else "answered"] += 1
        if reply.waited:
            counts["server waited for more bytes"] += 1
        for status, headers, _ in reply.responses:
            counts[f"status {status}"] += 1
            if status >= 400 and not headers.get("content-type", "").startswith(
                    "application/json"):
                counts["error not JSON"] += 1
        for problem in httpfuzz.problems(reply):
            counts["bad answers"] += 1
            bad.append((problem, repr(case)))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, cases))
    return counts, bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8, help="connections at a time")
    parser.add_argument("--api-port", type=int, help="fuzz a running node's API port")
    parser.add_argument("--console-port", type=int, help="…and its console port")
    args = parser.parse_args()

    node = None
    if args.api_port is None:
        home = Path(tempfile.mkdtemp(prefix="mesh-llm-fuzz-")) / "home"
        node = NodeProcess(home).start().wait_ready()
        api, console = node.api_port, node.console_port
        assert console is not None
    else:
        api, console = args.api_port, args.console_port or args.api_port
    try:
        start = time.monotonic()
        cases = generate(args.cases, api, console)
        generated = time.monotonic()
        counts, bad = run(cases, args.workers)
        done = time.monotonic()
        log = httpfuzz.log_problems(node.output()) if node is not None else []
    finally:
        if node is not None:
            node.stop()
    print(f"{len(cases)} cases (generated in {generated - start:.0f} s, sent in "
          f"{done - generated:.0f} s with {args.workers} connections at a time)")
    for name, count in sorted(counts.items()):
        print(f"  {name:<32} {count}")
    print(f"  {'bad answers':<32} {len(bad)}")
    if node is not None:
        print(f"  {'tracebacks in the node log':<32} {len(log)}")
    for problem, case in bad[:20]:
        print(f"BAD {problem}\n    {case[:300]}")
    for line in log[:20]:
        print(f"LOG {line}")
    return 1 if bad or log else 0


if __name__ == "__main__":
    sys.exit(main())
