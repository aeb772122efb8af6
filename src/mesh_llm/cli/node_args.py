"""The node's command line (`mesh-llm [--model M] [--join TOKEN] ...`) into a NodeConfig."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import UserError
from ..inference.candidates import DEFAULT_MAX_SPLIT_RTT_MS
from ..inference.llama import SPLIT_PARALLEL, owned_flag
from ..mesh.identity import is_node_id
from ..mesh.invites import TokenError, decode_token
from ..mesh.relay import parse_relay_limit
from ..models.catalog import DEFAULT_MODEL
from ..node.config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, NodeConfig, default_home
from .args import Parser, port, positive_float, slots
from .commands import COMMANDS
from .share_args import add_share_args, share_targets

LLAMA_ARG = "--llama-arg"


class NodeParser(Parser):
    """The node's parser: `--llama-arg -fa` takes `-fa` as its value (argparse alone would
    read it as an option of ours and stop)."""

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: Any = None) -> tuple[Any, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(glue_llama_args(argv), namespace)


def glue_llama_args(argv: list[str]) -> list[str]:
    """`--llama-arg X` → `--llama-arg=X`, whatever X starts with (pure)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == LLAMA_ARG and i + 1 < len(argv):
            out.append(f"{LLAMA_ARG}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def llama_arg_words(value: str) -> list[str]:
    """One --llama-arg as llama-server arguments (pure). An option with its value
    (`-fa on`, `--chat-template-file '/my templates/t.jinja'`) is split as a shell would;
    anything else is one value as given, spaces, quotes and backslashes included."""
    if not value.strip():
        raise UserError("--llama-arg needs an argument for llama-server, e.g. "
                        "--llama-arg '-fa on'", 2)
    if not value.lstrip().startswith("-"):
        return [value]
    try:
        return shlex.split(value)
    except ValueError as err:
        raise UserError(f"--llama-arg {value!r}: {err}", 2) from None


def llama_args(values: list[str]) -> tuple[str, ...]:
    """Every --llama-arg in order; one that names an option the node sets itself is refused
    in one line (exit 2)."""
    args = [word for value in values for word in llama_arg_words(value)]
    owned = owned_flag(tuple(args))
    if owned is not None:
        flag, why = owned
        raise UserError(f"--llama-arg {flag}: {why}", 2)
    return tuple(args)


def node_parser() -> argparse.ArgumentParser:
    p = NodeParser(
        prog="mesh-llm",
        description="Pool the GPUs and CPUs of several machines into one OpenAI-compatible "
                    f"LLM service. Subcommands: {', '.join(COMMANDS)} "
                    "(mesh-llm SUBCOMMAND --help).",
    )
    p.add_argument("--version", action="version", version=f"mesh-llm {__version__}")
    p.add_argument("--model", metavar="M", action="append", default=[],
                   help="repeatable: serve several models (the first is this node's primary; "
                        "requests choose one by their `model` field). A "
                        "catalog name (mesh-llm models; downloaded if missing), a .gguf path "
                        "(any part of a split set), hf://ORG/REPO/FILE.gguf, a huggingface.co "
                        ".../resolve/REV/FILE.gguf URL, or ORG/REPO:QUANT "
                        f"(default {DEFAULT_MODEL}; "
                        "with --join and no --model: a worker without a model file that "
                        "serves the host's model, whose weights then come over the mesh)")
    add_share_args(p)
    p.add_argument("--join", metavar="TOKEN", action="append", default=[],
                   help="invite token of a running node (repeatable: the first that works "
                        "wins); without --model this node needs no model file. If none "
                        "works the node exits, unless --standalone")
    p.add_argument("--standalone", action="store_true",
                   help="when every --join fails, serve alone as a mesh of its own instead "
                        "of exiting")
    p.add_argument("--new-mesh", action="store_true",
                   help="start a new mesh: a fresh mesh secret instead of the one kept in "
                        "the home (old tokens and invites stop working)")
    p.add_argument("--trust-hosts", metavar="ID,...",
                   help="only these node ids may be elected host (every prompt passes through "
                        "the host); others serve as workers at most. Default: the ids in "
                        "HOME/trusted_hosts if that file exists, else any worker may host")
    p.add_argument("--client", action="store_true",
                   help="lite client: no model, no GPU; the API is tunnelled to the host")
    p.add_argument("--bind-port", type=port, default=0, metavar="P",
                   help="UDP port for QUIC (stable invite token); default ephemeral")
    p.add_argument("--bind-host", default="0.0.0.0", metavar="ADDR",
                   help="address for the QUIC socket (default 0.0.0.0; 127.0.0.1 keeps the "
                        "mesh on this machine)")
    p.add_argument("--advertise", action="append", default=[], metavar="HOST:PORT",
                   help="an address other nodes can reach this one at (repeatable)")
    p.add_argument("--no-relay", action="store_true",
                   help="never relay other members' packets (members that cannot reach each "
                        "other directly or by hole punching then stay apart)")
    p.add_argument("--relay-limit", default="8", metavar="PAIRS[,MB/S]",
                   help="relay for at most PAIRS pairs of members, each at most MB/S "
                        "megabytes per second each way (default 8,8)")
    p.add_argument("--mdns", action="store_true",
                   help="LAN discovery: advertise this member on the local network (mDNS, a "
                        "tag derived from the mesh secret) and find members there; off by "
                        "default: without it nothing is sent to the LAN")
    p.add_argument("--port", type=port, default=DEFAULT_API_PORT,
                   help=f"OpenAI API port (default {DEFAULT_API_PORT})")
    p.add_argument("--console", type=port, nargs="?", const=DEFAULT_CONSOLE_PORT, default=None,
                   metavar="PORT", help=f"serve the web console (default port "
                                        f"{DEFAULT_CONSOLE_PORT})")
    p.add_argument("--split", action="store_true",
                   help="always split the model over the workers, even if it fits the host")
    p.add_argument("--max-split-rtt", type=float, default=DEFAULT_MAX_SPLIT_RTT_MS,
                   metavar="MS", help="never split onto a worker whose link's measured RTT "
                   f"is over MS milliseconds (default {DEFAULT_MAX_SPLIT_RTT_MS:g}; 0: no limit)")
    p.add_argument("--max-vram", type=positive_float, metavar="GB",
                   help="cap the memory this node offers for models")
    draft = p.add_mutually_exclusive_group()
    draft.add_argument("--draft", metavar="PATH", help="draft model for speculative decoding")
    draft.add_argument("--no-draft", action="store_true", help="no speculative decoding")
    p.add_argument("--draft-max", type=int, default=8, metavar="N",
                   help="most tokens drafted per step (default 8)")
    p.add_argument("--parallel", type=slots, metavar="N",
                   help="concurrent requests llama-server serves (slots; default: "
                        f"{SPLIT_PARALLEL} for a split, llama.cpp's own choice solo)")
    p.add_argument(LLAMA_ARG, action="append", default=[], metavar="ARG",
                   help="pass ARG to llama-server when this node hosts, after the node's own "
                        "options so it overrides them (repeatable). An ARG that starts with "
                        "- is split like a shell (--llama-arg '-fa on'); any other is one "
                        "argument as given, spaces included (--llama-arg --chat-template-file "
                        "--llama-arg '/my templates/t.jinja'). "
                        "Options the node sets itself are refused: the model, alias, host, "
                        "port, API key, TLS, RPC and layer placement (--rpc, -ngl, -ts, -ot, "
                        "-sm), --device, --parallel, the draft model, and options that exit")
    p.add_argument("--bin-dir", type=Path, metavar="DIR",
                   help="use the llama.cpp binaries in DIR (e.g. a CUDA or Metal build)")
    p.add_argument("--device", metavar="DEV", help="llama.cpp device to use (--device)")
    p.add_argument("--home", type=Path, default=None, metavar="DIR",
                   help="node home: keys, logs (default $MESH_LLM_HOME or ~/.mesh-llm)")
    p.add_argument("--listen-all", action="store_true",
                   help="serve the API on 0.0.0.0 (requires --api-key)")
    p.add_argument("--api-key", metavar="KEY", help="Bearer key required by the API")
    metrics = p.add_mutually_exclusive_group()
    metrics.add_argument("--metrics-on-api", action="store_true",
                         help="serve GET /metrics (Prometheus) on the API port too")
    metrics.add_argument("--no-metrics", action="store_true",
                         help="measure nothing: no /metrics, no console charts")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="the node's log on stderr: human-readable lines (default), or one "
                        "JSON object per line (time, level, node, event, fields, logger, "
                        "message)")
    return p


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    if args.client and not args.join:
        raise UserError("--client needs --join TOKEN: a lite client joins an existing mesh", 2)
    if args.listen_all and not args.api_key:
        raise UserError("--listen-all exposes the API to the network: also give --api-key KEY",
                        2)
    shares = share_targets(args)
    for token in args.join:
        try:
            kind = decode_token(token).kind
        except TokenError as err:
            raise UserError(f"--join: {err}", 2) from None
        if kind == "client" and shares:
            raise UserError("--share needs a worker invite: a client invite grants only the "
                            "API", 2)
        if kind == "client" and not args.client:
            raise UserError("--join: that is a client invite, which grants only the API: "
                            "use it with --client, or ask for a worker invite", 2)
    if args.draft_max < 1:
        raise UserError("--draft-max must be at least 1", 2)
    models = [m for m in args.model if m]
    if args.client and models:
        logging.getLogger("mesh_llm").warning("--model %s ignored: a client serves no model",
                                              " ".join(models))
        models = []
    # --share without --model: a node that only shares (no llama.cpp, like a lite client)
    client = args.client or (bool(shares) and not models)
    if not client and not models and not args.join:
        models = [DEFAULT_MODEL]  # alone: serve the default model solo
    model = models[0] if models else None
    # --join without --model: a worker without a model file; it serves the host's model
    if model is None and args.draft and not client:
        logging.getLogger("mesh_llm").warning(
            "--draft %s ignored: without --model this node never hosts", args.draft)
    try:
        relay_limit = parse_relay_limit(args.relay_limit)
    except ValueError as err:
        raise UserError(f"--relay-limit {err}", 2) from None
    if not 0 <= args.max_split_rtt < 1e6:
        raise UserError("--max-split-rtt must be a number of milliseconds, 0 for no limit", 2)
    device_args = ("--device", args.device) if args.device else ()
    extra_args = llama_args(args.llama_arg)
    home = args.home or default_home()
    return NodeConfig(
        model=model, models=tuple(models), home=home, join=tuple(args.join),
        client=client, api_port=args.port, console_port=args.console,
        bind_host=args.bind_host, bind_port=args.bind_port, advertise=tuple(args.advertise),
        no_relay=args.no_relay, relay_limit=relay_limit, split=args.split, mdns=args.mdns,
        max_split_rtt_ms=args.max_split_rtt or None,
        max_vram_gb=args.max_vram, draft=args.draft, no_draft=args.no_draft,
        draft_max=args.draft_max, parallel=args.parallel, bin_dir=args.bin_dir,
        device=args.device,
        listen_all=args.listen_all, api_key=args.api_key, llama_args=(*device_args, *extra_args),
        standalone=args.standalone, new_mesh=args.new_mesh,
        trust_hosts=trusted_hosts(args.trust_hosts, home), shares=shares,
        metrics=not args.no_metrics, metrics_on_api=args.metrics_on_api,
    )


def trusted_hosts(flag: str | None, home: Path) -> frozenset[str] | None:
    """--trust-hosts, else HOME/trusted_hosts, else None (any worker may host)."""
    from ..node.home import TRUSTED_HOSTS_NAME, read_trusted_hosts

    if flag is not None:
        ids, where = [part.strip() for part in flag.split(",") if part.strip()], "--trust-hosts"
    else:
        listed = read_trusted_hosts(home)
        if listed is None:
            return None
        ids, where = listed, str(home.expanduser() / TRUSTED_HOSTS_NAME)
    for node_id in ids:
        if not is_node_id(node_id):
            shown = node_id if len(node_id) <= 20 else node_id[:17] + "..."
            raise UserError(f"{where}: {shown!r} is not a node id (64 lowercase hex characters; "
                            "see node_id in mesh-llm status)", 2)
    if not ids:
        raise UserError(f"{where} names no node id: no node could host", 2)
    return frozenset(ids)
