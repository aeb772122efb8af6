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
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROUTES, added_ttft, compare, cpu_per_token
from nodes import NodeProcess


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
    args = ap.parse_args()
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
