"""Where a split's mesh CPU goes per generated token: each node process's CPU ms per token,
and with --py-spy its hottest Python frames.

The two-node split of bench/splitmesh.py (A hosts, B is the worker). One stream at a time
through A's API (the user's path: API relay, then llama-server, whose RPC to B crosses the
mesh) for --seconds; CPU from /proc/PID/stat before and after, divided by the tokens
streamed. With --py-spy, py-spy records both node processes meanwhile (non-blocking, idle
samples left out) and the top frames by self and total share of the samples are printed.
With --strace, strace counts both nodes' system calls instead (it slows them: only the
counts per token mean something then).

    .venv/bin/python bench/split_cpu.py [--seconds 20] [--delay-ms 0] [--py-spy] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, stream_once
from splitmesh import link_rtts, split_pair, wait_link_rtt


async def generate(base: str, seconds: float, tokens: int) -> int:
    """Back-to-back single streams for `seconds`; the tokens streamed."""
    total = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while time.monotonic() < deadline:
            total += (await stream_once(session, base, tokens)).tokens
    return total


def top_frames(raw: Path, n: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """From py-spy's raw (collapsed) output: samples, and the top frames by self and total."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = stack.split(";")  # outermost first
        samples += k
        if frames:
            own[frames[-1]] += k
        for frame in set(frames):
            total[frame] += k
    return samples, own.most_common(n), total.most_common(n)


Observer = tuple[str, Path, "subprocess.Popen[bytes]"]  # node name, output file, process


def attach(pids: dict[str, int], out_dir: Path, suffix: str,
           argv: Callable[[int, Path], list[str]]) -> list[Observer]:
    """One observer process per node (`argv(pid, its output file)`), quiet on the
    terminal."""
    out_dir.mkdir(parents=True, exist_ok=True)
    observers = []
    for name, pid in pids.items():
        out = out_dir / f"{name.split()[0]}{suffix}"
        observers.append((name, out, subprocess.Popen(
            argv(pid, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return observers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    ap.add_argument("--delay-ms", type=float, default=0.0, metavar="RTT")
    ap.add_argument("--py-spy", action="store_true", help="also record both nodes with py-spy")
    ap.add_argument("--strace", action="store_true",
                    help="count both nodes' system calls per token (strace -c -f)")
    ap.add_argument("--out", type=Path, default=Path("."), help="where py-spy's files go")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp, split_pair(Path(tmp), args.delay_ms) as pair:
        if args.delay_ms > 0:
            wait_link_rtt(pair, args.delay_ms)
        print(f"link RTT A→B, B→A: {link_rtts(pair)} ms")
        pids = {"A (host)": pair.a.proc.pid, "B (worker)": pair.b.proc.pid}  # type: ignore[union-attr]
        asyncio.run(generate(pair.a.api, 3, args.tokens))  # warm-up
        spies = attach(pids, args.out, ".raw", lambda pid, raw: [
            py_spy, "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
            "--nonblocking", "--format", "raw", "-o", str(raw)]) if args.py_spy else []
        tracers = attach(pids, args.out, ".strace", lambda pid, out: [
            "strace", "-c", "-f", "-p", str(pid), "-o", str(out)]) if args.strace else []
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        load = Path("/proc/loadavg").read_text().split()[0]
        tokens = asyncio.run(generate(pair.a.api, args.seconds, args.tokens))
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        for _, _, proc in spies:
            proc.wait(timeout=60)
        for _, _, proc in tracers:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    print(f"{tokens} tokens in {args.seconds:g} s, one stream, load {load} → "
          f"{Path('/proc/loadavg').read_text().split()[0]}")
    for name, seconds in used.items():
        print(f"  {name}: {seconds:.2f} CPU s, {seconds * 1e3 / tokens:.3f} ms per token")
    for name, out, _ in tracers:
        print(f"\n{name}: system calls per token")
        for line in out.read_text().splitlines()[2:]:
            cols = line.split()
            if len(cols) >= 5 and cols[3].isdigit() and cols[-1] != "total":
                print(f"  {int(cols[3]) / tokens:7.2f}  {cols[-1]}")
    for name, raw, _ in spies:
        if not raw.exists():
            print(f"{name}: py-spy wrote nothing (ptrace not allowed?)")
            continue
        samples, own, total = top_frames(raw, args.top)
        print(f"\n{name}: {samples} samples (non-idle)")
        print("  self %   frame")
        for frame, k in own:
            print(f"  {100 * k / samples:6.1f}   {frame}")
        print("  total %  frame")
        for frame, k in total:
            print(f"  {100 * k / samples:6.1f}   {frame}")


if __name__ == "__main__":
    main()
