"""llama-server's command line: a split serves several users by default, and --parallel
overrides the slot count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh_llm.inference.engine import Engine
from mesh_llm.inference.llama import SPLIT_PARALLEL, LlamaPlan, llama_server_argv
from mesh_llm.nodeargs import config_from_args, node_parser

ENGINE = Engine(Path("/bin"), Path("/bin/llama-server"), None)
MODEL = Path("/models/m.gguf")


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_a_split_gets_slots_for_a_team_and_no_host_memory_prompt_cache() -> None:
    argv = llama_server_argv(ENGINE, LlamaPlan(MODEL, "m", rpc=("127.0.0.1:5000",)), 8080)
    assert SPLIT_PARALLEL >= 8
    assert option(argv, "--parallel") == str(SPLIT_PARALLEL)
    assert "--kv-unified" in argv  # every slot may still use the whole context
    assert option(argv, "--cache-ram") == "0"  # no slot saves over the RPC link


def test_solo_gets_the_same_slots_and_keeps_its_prompt_cache() -> None:
    argv = llama_server_argv(ENGINE, LlamaPlan(MODEL, "m"), 8080)
    assert option(argv, "--parallel") == str(SPLIT_PARALLEL) and "--cache-ram" not in argv
    assert argv.count("--parallel") == 1
    argv = llama_server_argv(ENGINE, LlamaPlan(MODEL, "m", parallel=2), 8080)
    assert option(argv, "--parallel") == "2" and "--cache-ram" not in argv


def test_parallel_flag_reaches_the_split_argv() -> None:
    cfg = config_from_args(node_parser().parse_args(["--parallel", "3"]))
    assert cfg.parallel == 3
    assert config_from_args(node_parser().parse_args([])).parallel is None
    plan = LlamaPlan(MODEL, "m", rpc=("127.0.0.1:5000",), parallel=cfg.parallel)
    assert option(llama_server_argv(ENGINE, plan, 8080), "--parallel") == "3"


@pytest.mark.parametrize("bad", ["0", "x", "-2", "100000"])
def test_a_bad_parallel_is_one_line_and_exit_2(bad: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "mesh_llm", "--parallel", bad],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--parallel" in proc.stderr
    assert "Traceback" not in proc.stderr
