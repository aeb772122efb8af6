"""What the lite client's QUIC tunnel costs: streamed generation through the client's :9337
versus the host's own :9337, alternating in the same run.

    .venv/bin/python bench/client_tunnel.py [--reps 15] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import added_ttft, compare, cpu_per_token
from nodes import NodeProcess


async def measure(host: NodeProcess, client: NodeProcess, reps: int, tokens: int) -> None:
    m = await compare({"host": host.api, "client": client.api}, reps, tokens)
    print(f"  ratio (client / host) gen tok/s: {m['client'][0] / m['host'][0]:.3f}"
          f"   (target ≥ 0.95)")
    print(f"  TTFT difference of those medians: {m['client'][1] - m['host'][1]:+.2f} ms")
    ttft = await added_ttft(host.api, client.api, 4 * reps)
    print(f"  added TTFT through the tunnel, {4 * reps} paired 4-token streams: {ttft:+.2f} ms")
    cpu = await cpu_per_token({"host": host.proc.pid, "client": client.proc.pid}, client.api)
    print(f"  CPU per token streamed through the client: host mesh-llm {cpu['host']:.3f} ms, "
          f"client mesh-llm {cpu['client']:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=128)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        host = NodeProcess(Path(tmp) / "host").start()
        client = None
        try:
            host.wait_ready()
            client = NodeProcess(Path(tmp) / "client", "--client", "--join",
                                 host.status()["token"]).start()
            client.wait_ready()
            asyncio.run(measure(host, client, args.reps, args.tokens))
        finally:
            for node in (client, host):
                if node is not None:
                    node.stop()


if __name__ == "__main__":
    main()
