"""The seed's benchmark table on this machine: solo, split and split+draft, prose and code.

The main model is SmolLM2 dequantized to F16 (the `gguf` package, as tests/modelgen.py does)
and its draft is the shipped Q4_1 file of the same model: one vocabulary. Rows:

  solo         one node, --no-draft
  solo+draft   one node, --draft Q4_1
  split        A (--split, --max-vram 2) + B (--max-vram 1), --no-draft: 0.67/0.33
  split+draft  the same split, --draft Q4_1 on the host (drafts run on the host)

Each row streams 128-token greedy chat completions (temperature 0, ignore_eos) of a "prose"
and a "code" prompt through the host's API (:9337), alternating, one warm-up each; medians.
Generation tok/s is (predicted tokens − 1) / (first → last streamed token); acceptance is
Σ timings.draft_n_accepted / Σ timings.draft_n. Ratios are against solo (same prompt) and
split+draft against split. --delay-ms adds RTT between the two nodes (a UDP delay proxy on
their QUIC link); it does not touch the solo rows.

    .venv/bin/python bench/split_table.py [--reps 5] [--tokens 128] [--draft-max 8]
        [--delay-ms 0] [--rows solo,solo+draft,split,split+draft]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Run, median, stream_once
from modelgen import dequantize_to_f16, smollm2_path
from nodes import NodeProcess
from splitmesh import link_rtts, split_pair, wait_link_rtt

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
PROMPTS = {
    "prose": [SYSTEM, {"role": "user", "content":
                       "Write a short story about a lighthouse keeper."}],
    "code": [SYSTEM, {"role": "user", "content":
                      "Write a Python function that returns the n-th Fibonacci number, "
                      "with a docstring and three doctests."}],
}
ROWS = ("solo", "solo+draft", "split", "split+draft")
DRAFT_SPEEDUP_TARGET = 1.7  # split+draft / split at 20 ms RTT


@dataclass(frozen=True)
class Cell:
    gen_tps: float  # median
    ttft_ms: float  # median
    drafted: int  # Σ timings.draft_n
    accepted: int  # Σ timings.draft_n_accepted

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def gen_tps(run: Run) -> float:
    """Tokens per second after the first; counts llama-server's predicted tokens, so a
    chunk that carried several accepted draft tokens is not undercounted."""
    predicted = (run.timings or {}).get("predicted_n")
    if not isinstance(predicted, int) or predicted <= run.tokens:
        return run.gen_tps
    return run.gen_tps * (predicted - 1) / (run.tokens - 1)


async def measure(api: str, reps: int, tokens: int) -> dict[str, Cell]:
    runs: dict[str, list[Run]] = {name: [] for name in PROMPTS}
    connector = aiohttp.TCPConnector(force_close=True)  # a fresh connection per stream
    async with aiohttp.ClientSession(connector=connector) as session:
        for messages in PROMPTS.values():
            await stream_once(session, api, tokens, messages)  # warm-up
        for _ in range(reps):
            for name, messages in PROMPTS.items():
                runs[name].append(await stream_once(session, api, tokens, messages))
    return {name: Cell(median([gen_tps(r) for r in rs]), median([r.ttft_ms for r in rs]),
                       sum(int((r.timings or {}).get("draft_n", 0)) for r in rs),
                       sum(int((r.timings or {}).get("draft_n_accepted", 0)) for r in rs))
            for name, rs in runs.items()}


@contextlib.contextmanager
def serving(row: str, tmp: Path, main: Path, draft: Path, rtt_ms: float,
            draft_max: int) -> Iterator[str]:
    """Start what `row` needs; yield the API base URL of the node that hosts."""
    draft_args = ("--draft", str(draft), "--draft-max", str(draft_max)) if "draft" in row \
        else ("--no-draft",)
    home = tmp / row.replace("+", "-")
    if row.startswith("solo"):
        node = NodeProcess(home, "--model", str(main), *draft_args).start()
        try:
            node.wait_ready()
            yield node.api
        finally:
            node.stop()
        return
    with split_pair(home, rtt_ms, str(main), a_args=draft_args,
                    b_args=("--no-draft",)) as pair:
        status = pair.a.status()
        assert status["draft"] == (draft.stem if "draft" in row else None), status["draft"]
        seen = wait_link_rtt(pair, rtt_ms) if rtt_ms > 0 else link_rtts(pair)
        print(f"{row}: plan {status['plan']['tensor_split']}, link RTT A→B {seen[0]} ms, "
              f"B→A {seen[1]} ms")
        yield pair.a.api
        seen = link_rtts(pair)
        print(f"{row}: link RTT after the runs A→B {seen[0]} ms, B→A {seen[1]} ms")


def show(table: dict[str, dict[str, Cell]], rtt_ms: float) -> None:
    print(f"\nadded RTT between the split nodes: {rtt_ms:g} ms")
    print("| row | prompt | gen tok/s | vs solo | TTFT ms | draft acceptance |")
    print("|---|---|---|---|---|---|")
    for row, cells in table.items():
        for prompt, cell in cells.items():
            solo = table.get("solo", {}).get(prompt)
            vs = f"{cell.gen_tps / solo.gen_tps:.2f}×" if solo else "–"
            acc = (f"{cell.acceptance:.0%} ({cell.accepted}/{cell.drafted})"
                   if cell.acceptance is not None else "–")
            print(f"| {row} | {prompt} | {cell.gen_tps:.1f} | {vs} | {cell.ttft_ms:.0f} | "
                  f"{acc} |")
    if "split" in table and "split+draft" in table:
        for prompt in PROMPTS:
            ratio = table["split+draft"][prompt].gen_tps / table["split"][prompt].gen_tps
            print(f"split+draft / split, {prompt}: {ratio:.2f}×   (target ≥ "
                  f"{DRAFT_SPEEDUP_TARGET}× at 20 ms RTT)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=0.0, metavar="RTT",
                    help="round-trip time added between the two split nodes (default 0)")
    ap.add_argument("--rows", default=",".join(ROWS),
                    help=f"comma-separated subset of {', '.join(ROWS)}")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    if unknown := set(rows) - set(ROWS):
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    table: dict[str, dict[str, Cell]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        main_model = dequantize_to_f16(smollm2_path(), models / "smollm2-f16.gguf")
        draft = Path(shutil.copy(smollm2_path(), models / "smollm2-q4_1.gguf"))
        for row in rows:
            with serving(row, tmp, main_model, draft, args.delay_ms, args.draft_max) as api:
                table[row] = asyncio.run(measure(api, args.reps, args.tokens))
            print(f"{row}: " + ", ".join(f"{p} {c.gen_tps:.1f} tok/s"
                                         for p, c in table[row].items()))
    print(f"\n{args.reps} reps × {args.tokens} tokens per prompt, streamed through the host's "
          f"API, medians; F16 main, Q4_1 draft, --draft-max {args.draft_max}")
    show(table, args.delay_ms)


if __name__ == "__main__":
    main()
