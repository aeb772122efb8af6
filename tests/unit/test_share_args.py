"""`--share URL [--share-key KEY]`, `--share-remote` and `mesh-llm share URL` on the
command line: what a node is started with, and the one-line refusals."""

from __future__ import annotations

import pytest

from mesh_llm.cli.node_args import config_from_args, node_parser
from mesh_llm.cli.share_args import share_argv
from mesh_llm.errors import UserError
from mesh_llm.mesh.invites import encode_token, mint_invite

NODE = "a" * 64
SECRET = b"s" * 32
OLLAMA = "http://127.0.0.1:11434/v1"


def config(*argv: str):  # type: ignore[no-untyped-def]
    return config_from_args(node_parser().parse_args(list(argv)))


def token(kind: str) -> str:
    return encode_token(mint_invite(NODE, ["127.0.0.1:7842"], SECRET, kind))  # type: ignore[arg-type]


def test_each_key_belongs_to_the_share_before_it() -> None:
    cfg = config("--share", OLLAMA, "--share-key", "k1", "--share", "http://localhost:1234/v1",
                 "--model", "m.gguf")
    assert [(t.url, t.key) for t in cfg.shares] == [(OLLAMA, "k1"),
                                                    ("http://localhost:1234/v1", None)]
    assert cfg.models == ("m.gguf",) and not cfg.client, "beside --model: a serving node"


def test_a_node_that_only_shares_runs_no_llama_cpp_and_serves_no_default_model() -> None:
    alone = config("--share", OLLAMA)
    assert alone.client and alone.models == () and alone.model is None
    joined = config(*share_argv([OLLAMA, "--join", token("worker")]))
    assert joined.client and len(joined.shares) == 1 and joined.join


def test_refusals_are_one_line() -> None:
    with pytest.raises(SystemExit):
        config("--share-key", "k")  # a key with no --share before it
    with pytest.raises(UserError, match="--share-remote") as err:
        config("--share", "http://192.168.1.9:11434/v1")
    assert err.value.exit_code == 2
    assert config("--share", "http://192.168.1.9:11434/v1", "--share-remote").shares
    with pytest.raises(UserError, match="worker invite"):
        config("--client", "--share", OLLAMA, "--join", token("client"))
    with pytest.raises(UserError, match="twice"):
        config("--share", OLLAMA, "--share", OLLAMA + "/")
    with pytest.raises(UserError, match="usage"):
        share_argv(["--join", "x"])

