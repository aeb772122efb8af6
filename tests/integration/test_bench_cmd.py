"""`mesh-llm bench` against a real split mesh with a draft on 127.0.0.1: the seed's table."""

from __future__ import annotations

import json
import subprocess
import sys

from modelgen import smollm2_path


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh_llm", "bench", *args],
                          capture_output=True, text=True, timeout=600)


def test_bench_prints_the_table_for_a_split_with_a_draft(make_node) -> None:
    model = str(smollm2_path())
    host = make_node("host", "--model", model, "--split", "--max-vram", "2", "--draft", model)
    worker = make_node("worker", "--model", model, "--max-vram", "1", "--join",
                       host.wait_ready().status()["token"])
    host.wait_for(lambda: (host.status()["plan"] or {}).get("mode") == "split"
                  and host.status()["llama_ready"], "the split to serve")
    worker.wait_ready()
    ports = ("--port", str(host.api_port), "--console", str(host.console_port))
    table = bench(*ports, "--reps", "1", "--tokens", "12", "--compare")
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "split over 2 nodes (0.67/0.33)" in out and "backend cpu" in out
    rows = [line for line in out.splitlines() if line.startswith("| split |")]
    assert [row.split("|")[2].strip() for row in rows] == ["prose", "code"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        gen, ttft, acceptance, direct = float(cells[2]), float(cells[3]), cells[4], cells[5]
        assert gen > 0 and ttft > 0 and acceptance.endswith("%") and float(direct) > 0
    assert "[1/" in table.stderr  # a progress line per request
    data = bench(*ports, "--reps", "1", "--tokens", "12", "--concurrency", "2", "--json")
    assert data.returncode == 0, data.stderr
    report = json.loads(data.stdout)
    assert report["header"]["mode"] == "split" and report["header"]["nodes"] == 2
    for row in report["rows"]:
        assert row["gen_tps"] > 0 and row["aggregate_tps"] > 0 and row["acceptance"] > 0


def test_bench_says_what_is_wrong(tmp_path) -> None:
    result = bench("--port", "1", "--reps", "1")
    assert result.returncode != 0 and "no model answers" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert bench("--reps", "0").returncode == 2
