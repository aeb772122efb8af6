"""llama-server's command line: a split serves several users by default, and --parallel
overrides the slot count."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh_llm.cli.node_args import config_from_args, node_parser
from mesh_llm.errors import UserError
from mesh_llm.inference.engine import Engine
from mesh_llm.inference.llama import (
    POOL_TOKENS,
    SPLIT_PARALLEL,
    LlamaPlan,
    context_pool,
    llama_server_argv,
)
from mesh_llm.models.gguf_info import trained_context

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


def test_llama_args_come_last_so_they_override_ours() -> None:
    cfg = config_from_args(node_parser().parse_args(
        ["--device", "CPU", "--llama-arg", "-fa", "--llama-arg", "on",
         "--llama-arg=-ub 128 -b 512", "--llama-arg", "--cache-ram 64"]))
    assert cfg.llama_args == ("--device", "CPU", "-fa", "on", "-ub", "128", "-b", "512",
                              "--cache-ram", "64")
    plan = LlamaPlan(MODEL, "m", rpc=("127.0.0.1:5000",), extra=cfg.llama_args)
    argv = llama_server_argv(ENGINE, plan, 8080)
    assert argv[-len(cfg.llama_args):] == list(cfg.llama_args)
    # llama.cpp keeps the last value given: ours (--cache-ram 0) comes first
    assert argv.index("--cache-ram") < len(argv) - 2 and argv[-1] == "64"
    assert config_from_args(node_parser().parse_args([])).llama_args == ()


@pytest.mark.parametrize("values", [["-m", "x.gguf"], ["--port 1"], ["-fa on -ngl 99"],
                                    ["--rpc", "127.0.0.1:1"], ["-np 4"], ["--alias", "x"],
                                    ["--api-key k"], ["-ts 1,1"], ["-ot", "x=CPU"],
                                    ["--help"], ["-md d.gguf"], ["-dev", "none"]])
def test_options_the_node_sets_itself_are_refused(values: list[str]) -> None:
    argv = [a for v in values for a in ("--llama-arg", v)]
    with pytest.raises(UserError) as err:
        config_from_args(node_parser().parse_args(argv))
    assert err.value.exit_code == 2 and "--llama-arg -" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", ["-m x.gguf", '-fa "on', ""])
def test_a_refused_llama_arg_is_one_line_and_exit_2(value: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mesh_llm", "--home", str(tmp_path),
                           f"--llama-arg={value}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--llama-arg" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("trained", "pool"), [
    (None, None),  # the header says nothing: llama-server's own default
    (2048, 8192),  # room for four contexts of a short-trained model
    (8192, 32768),  # SmolLM2: four ~6,000-token agent sessions fit (bench/agent_session.py)
    (16384, 32768),  # capped at POOL_TOKENS
    (131072, 131072),  # a long-trained model keeps its own, never less
])
def test_the_slots_share_room_for_several_agent_sessions(trained: int | None,
                                                          pool: int | None) -> None:
    assert context_pool(trained) == pool
    if pool is not None:
        assert pool >= trained and pool <= max(trained, POOL_TOKENS)


def test_the_pool_is_passed_before_llama_args_so_a_user_c_wins() -> None:
    plan = LlamaPlan(MODEL, "m", ctx_size=32768, extra=("-c", "4096"))
    argv = llama_server_argv(ENGINE, plan, 8080)
    assert argv.count("-c") == 2 and argv[-1] == "4096"  # llama.cpp keeps the last
    assert "-c" not in llama_server_argv(ENGINE, LlamaPlan(MODEL, "m"), 8080)


def test_the_trained_context_is_read_from_the_real_model_header(tmp_path: Path) -> None:
    from modelgen import smollm2_path, tiny_gguf
    assert trained_context(smollm2_path()) == 8192
    assert trained_context(tiny_gguf(tmp_path / "t.gguf")[0]) is None  # not stated
    with pytest.raises(UserError, match="cannot read the GGUF metadata"):
        (tmp_path / "bad.gguf").write_bytes(b"GGUF")
        trained_context(tmp_path / "bad.gguf")


@pytest.mark.parametrize(("values", "expected"), [
    # a value of its own occurrence is one argument, spaces, quotes and backslashes included
    (["--chat-template-file", "/my templates/t.jinja"],
     ("--chat-template-file", "/my templates/t.jinja")),
    (["--override-kv", "tokenizer.ggml.pre=str:it's \"x\" \\d"],
     ("--override-kv", "tokenizer.ggml.pre=str:it's \"x\" \\d")),
    # an option with its value in one occurrence is split like a shell, quotes kept together
    (["--chat-template-file '/my templates/t.jinja'"],
     ("--chat-template-file", "/my templates/t.jinja")),
    (["-fa on -c 4096", "--temp", "-1"], ("-fa", "on", "-c", "4096", "--temp", "-1")),
])
def test_a_value_with_spaces_survives_as_one_argument(values: list[str],
                                                      expected: tuple[str, ...]) -> None:
    argv = [a for v in values for a in ("--llama-arg", v)]
    assert config_from_args(node_parser().parse_args(argv)).llama_args == expected
    glued = [f"--llama-arg={v}" for v in values]  # the = form reads the same
    assert config_from_args(node_parser().parse_args(glued)).llama_args == expected


def test_a_value_of_its_own_cannot_smuggle_an_owned_option() -> None:
    # one argument for llama-server, never split: "--port 1" here is a value, not an option
    args = config_from_args(node_parser().parse_args(
        ["--llama-arg", "--chat-template-file", "--llama-arg", "x --port 1"])).llama_args
    assert args == ("--chat-template-file", "x --port 1")
