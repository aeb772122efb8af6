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

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import median, stream_once
from nodes import NodeProcess


async def measure(host: NodeProcess, client: NodeProcess, reps: int, tokens: int) -> None:
    runs: dict[str, list] = {"host": [], "client": []}
    async with aiohttp.ClientSession() as session:
        for node in (host, client):  # warm-up, not counted
            await stream_once(session, node.api, tokens)
        for _ in range(reps):
            for name, node in (("host", host), ("client", client)):
                runs[name].append(await stream_once(session, node.api, tokens))
    tps = {k: median([r.gen_tps for r in v]) for k, v in runs.items()}
    ttft = {k: median([r.ttft_ms for r in v]) for k, v in runs.items()}
    print(f"{reps} reps × {tokens} tokens, streamed, medians")
    for name in runs:
        print(f"  via {name:<7} gen {tps[name]:7.1f} tok/s   TTFT {ttft[name]:6.2f} ms")
    print(f"  ratio (client / host) gen tok/s: {tps['client'] / tps['host']:.3f}"
          f"   (target ≥ 0.95)")
    print(f"  added TTFT through the tunnel: {ttft['client'] - ttft['host']:+.2f} ms")


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
