"""Pure pieces of the node: llama argv, GGUF checks, backoff, change feed, CLI parsing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mesh_llm.changes import ChangeFeed
from mesh_llm.cli.node_args import config_from_args, node_parser
from mesh_llm.errors import UserError
from mesh_llm.inference.engine import Engine
from mesh_llm.inference.llama import LlamaPlan, llama_server_argv
from mesh_llm.inference.processes import Backoff
from mesh_llm.mesh.invites import InviteToken, encode_token, new_secret
from mesh_llm.models.gguf_info import check_gguf
from mesh_llm.models.resolve import resolve_model

ENGINE = Engine(Path("/e"), Path("/e/llama-server"), Path("/e/ggml-rpc-server"))


def test_solo_argv_binds_loopback_and_names_the_model() -> None:
    argv = llama_server_argv(ENGINE, LlamaPlan(Path("/m.gguf"), "M"), 1234)
    assert argv[0] == "/e/llama-server"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "1234"
    assert argv[argv.index("--alias") + 1] == "M"
    assert "--rpc" not in argv and "-md" not in argv


def test_split_and_draft_argv() -> None:
    plan = LlamaPlan(Path("/m.gguf"), "M", rpc=("127.0.0.1:5000",), tensor_split=(0.67, 0.33),
                     draft=Path("/d.gguf"), draft_max=8)
    argv = llama_server_argv(ENGINE, plan, 1)
    assert argv[argv.index("--rpc") + 1] == "127.0.0.1:5000"
    assert argv[argv.index("--tensor-split") + 1] == "0.67,0.33"
    assert argv[argv.index("--spec-type") + 1] == "draft-simple"
    assert argv[argv.index("--spec-draft-n-max") + 1] == "8"


def test_gguf_check(tmp_path: Path) -> None:
    good = tmp_path / "a.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 16)
    assert check_gguf(good).version == 3
    for content, needle in ((b"", "not a GGUF"), (b"GGML\x03\x00\x00\x00", "not a GGUF")):
        bad = tmp_path / "b.gguf"
        bad.write_bytes(content)
        with pytest.raises(UserError, match=needle):
            check_gguf(bad)
    with pytest.raises(UserError, match="not a file"):
        check_gguf(tmp_path)


def test_default_model_resolves_offline() -> None:
    model = resolve_model("smollm2-135m-instruct")
    assert model.name == "SmolLM2-135M-Instruct" and model.size_bytes > 50_000_000


def test_backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() -> None:
    b = Backoff(first=1, cap=5, healthy_after=60)
    assert [b.next_delay(0) for _ in range(5)] == [1, 2, 4, 5, 5]
    assert b.next_delay(120) == 1


async def test_change_feed_wakes_waiters() -> None:
    feed = ChangeFeed()
    assert not await feed.wait_newer(0, 0.01)
    waiter = asyncio.create_task(feed.wait_newer(0, 5))
    await asyncio.sleep(0)
    feed.bump()
    assert await waiter
    assert await feed.wait_newer(0, 0)


def test_cli_defaults_and_client_rules() -> None:
    cfg = config_from_args(node_parser().parse_args([]))
    assert (cfg.model, cfg.api_port, cfg.console_port) == ("SmolLM2-135M-Instruct", 9337, None)
    assert config_from_args(node_parser().parse_args(["--console"])).console_port == 3131
    token = encode_token(InviteToken("ab" * 32, ["127.0.0.1:7842"], new_secret()))
    worker = config_from_args(node_parser().parse_args(["--join", token]))
    assert worker.model is None and not worker.client, "joins without a model file"
    assert config_from_args(node_parser().parse_args(["--join", token, "--model", "m"])).model \
        == "m"
    client = config_from_args(node_parser().parse_args(["--client", "--join", token,
                                                        "--model", "x"]))
    assert client.client and client.model is None
    with pytest.raises(UserError, match="--client needs --join"):
        config_from_args(node_parser().parse_args(["--client"]))
    with pytest.raises(UserError, match="--join: token") as info:
        config_from_args(node_parser().parse_args(["--join", token[:-9]]))
    assert info.value.exit_code == 2
