"""What the mesh costs a split model: the same two-node split with llama-server reaching the
worker's ggml-rpc-server through our QUIC tunnel, then straight over TCP.

Node A (--split, 2 GB) and node B (1 GB) split SmolLM2 0.67/0.33 over the mesh; we measure
streamed generation at A's llama-server. Then A stops, and the very same llama-server command
is started by hand with --rpc pointing at B's ggml-rpc-server directly (it serves one
client at a time, hence one after the other). Medians; 0 added delay.

    .venv/bin/python bench/split_overhead.py [--reps 10] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import compare
from mesh_llm.netutil import free_port
from nodes import NodeProcess


def last_argv(log: Path) -> list[str]:
    """The command line of the latest llama-server start, as the supervisor logged it."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = NodeProcess(Path(tmp) / "a", "--split", "--max-vram", "2").start()
        b = None
        direct = None
        try:
            a.wait_ready()
            b = NodeProcess(Path(tmp) / "b", "--max-vram", "1", "--join",
                            a.status()["token"]).start()
            b.wait_ready()
            a.wait_for(lambda: a.status()["llama_ready"]
                       and (a.status()["plan"] or {}).get("mode") == "split", "split", 120)
            # Both sides are measured at llama-server's own port: only the RPC path differs.
            host_llama = f"http://127.0.0.1:{a.status()['llama_server']['port']}"
            mesh = asyncio.run(compare({"mesh": host_llama}, args.reps, args.tokens))["mesh"]
            argv = last_argv(a.home / "logs" / "llama-server.log")
            a.stop()
            port = free_port()
            argv = with_option(argv, "--rpc", f"127.0.0.1:{b.status()['rpc_server']['port']}")
            argv = with_option(argv, "--port", str(port))
            direct = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                      env={**os.environ, "GGML_RPC_NO_RDMA": "1"})
            wait_health(port)
            tcp = asyncio.run(compare({"direct": f"http://127.0.0.1:{port}"}, args.reps,
                                      args.tokens))["direct"]
            print(f"split over the QUIC mesh / split over direct TCP, gen tok/s: "
                  f"{mesh[0] / tcp[0]:.3f}   (target ≥ 0.90)")
            print(f"added TTFT: {mesh[1] - tcp[1]:+.2f} ms")
        finally:
            if direct is not None:
                direct.terminate()
                direct.wait()
            for node in (b, a):
                if node is not None and node.proc is not None and node.proc.poll() is None:
                    node.stop()


if __name__ == "__main__":
    main()
