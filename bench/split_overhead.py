"""What the mesh costs a split model: the same two-node split with llama-server reaching the
worker's ggml-rpc-server through our QUIC tunnel, and straight over TCP.

Node A (--split, 2 GB) and node B (1 GB) split SmolLM2 0.67/0.33 over the mesh. Beside them
the bench starts a second ggml-rpc-server (B's own command line, another port) and the very
same llama-server command as A's with --rpc pointing straight at it over TCP. Both are
loaded at once and idle in turn: streamed runs alternate between A's llama-server (mesh) and
the direct one, so both see the same noise on this shared machine. Medians.

--delay-ms RTT adds that round-trip time to the link between the machines: the mesh case
gets a UDP delay proxy between the two nodes' QUIC sockets (B joins through it), the direct
case a TCP delay proxy between llama-server and B's ggml-rpc-server. The RTT the link really
has is printed: both nodes' gossip-ping RTT, and one RPC HELLO round trip through the TCP proxy.

    .venv/bin/python bench/split_overhead.py [--reps 10] [--tokens 128] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compare
from delay_proxy import Spawned
from mesh_llm.inference.rpc_wire import probe_server_version
from mesh_llm.netutil import free_port
from splitmesh import link_rtts, split_pair, wait_link_rtt

TARGETS = {0.0: 0.90, 20.0: 0.95}  # RTT ms → the mesh/direct target


def last_argv(log: Path) -> list[str]:
    """The command line of the latest start in a supervised process's log."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("=== ")]
    return shlex.split(lines[-1].split(" ", 3)[3])


def with_option(argv: list[str], option: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(option) + 1] = value
    return argv


def wait_health(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("direct llama-server did not become ready")


def wait_hello(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(probe_server_version("127.0.0.1", port, timeout=2))
            return
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def hello_rtt_ms(port: int) -> float:
    """One RPC HELLO round trip (connect + request + reply) to 127.0.0.1:port, in ms."""
    start = time.perf_counter()
    asyncio.run(probe_server_version("127.0.0.1", port, timeout=10))
    return (time.perf_counter() - start) * 1e3


@contextlib.contextmanager
def direct_split(llama_argv: list[str], rpc_argv: list[str], rtt_ms: float) -> Iterator[str]:
    """A second ggml-rpc-server and llama-server, the split over plain TCP (through a TCP
    delay proxy when rtt_ms > 0); yields llama-server's base URL."""
    procs: list[subprocess.Popen[bytes]] = []
    proxy: Spawned | None = None
    env = {**os.environ, "GGML_RPC_NO_RDMA": "1"}
    try:
        rpc_port = free_port()
        procs.append(subprocess.Popen(with_option(rpc_argv, "-p", str(rpc_port)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                      env=env))
        wait_hello(rpc_port)
        if rtt_ms > 0:
            proxy = Spawned("tcp", ("127.0.0.1", rpc_port), rtt_ms)
            rpc_port = proxy.port
        print(f"direct: RPC HELLO round trip {hello_rtt_ms(rpc_port):.2f} ms")
        port = free_port()
        argv = with_option(llama_argv, "--rpc", f"127.0.0.1:{rpc_port}")
        procs.append(subprocess.Popen(with_option(argv, "--port", str(port)),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                      env=env))
        wait_health(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait()
        if proxy is not None:
            print(f"  ({proxy.stop()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--delay-ms", type=float, default=0.0, metavar="RTT",
                    help="round-trip time added between the two machines (default 0)")
    args = ap.parse_args()
    rtt = args.delay_ms
    with tempfile.TemporaryDirectory() as tmp, split_pair(Path(tmp), rtt) as pair:
        a, b = pair.a, pair.b
        seen = wait_link_rtt(pair, rtt) if rtt > 0 else link_rtts(pair)
        print(f"mesh link RTT (gossip pings): A→B {seen[0]} ms, B→A {seen[1]} ms")
        llama_argv = last_argv(a.home / "logs" / "llama-server.log")
        rpc_argv = last_argv(b.home / "logs" / "ggml-rpc-server.log")
        with direct_split(llama_argv, rpc_argv, rtt) as direct:
            # Both measured at llama-server's own port: only the RPC path differs.
            mesh = f"http://127.0.0.1:{a.status()['llama_server']['port']}"
            result = asyncio.run(compare({"mesh": mesh, "direct": direct}, args.reps,
                                         args.tokens))
        seen = link_rtts(pair)
        print(f"mesh link RTT after the runs: A→B {seen[0]} ms, B→A {seen[1]} ms")
    (mesh_tps, mesh_ttft), (tcp_tps, tcp_ttft) = result["mesh"], result["direct"]
    target = TARGETS.get(rtt)
    print(f"added RTT {rtt:g} ms: split over the QUIC mesh / split over direct TCP, gen tok/s: "
          f"{mesh_tps / tcp_tps:.3f}" + (f"   (target ≥ {target:.2f})" if target else ""))
    print(f"added TTFT: {mesh_ttft - tcp_ttft:+.2f} ms")


if __name__ == "__main__":
    main()
