"""`mesh-llm`: parse the command line, then run a node or a subcommand.

Every user mistake ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, NodeConfig, default_home
from .errors import UserError
from .identity import is_node_id
from .inference.llama import MAX_PARALLEL, SPLIT_PARALLEL
from .models.catalog import DEFAULT_MODEL
from .netutil import bearer
from .token import TokenError, decode_token

SUBCOMMANDS = ("models", "download", "status", "stop", "doctor", "invite", "bench", "bundle",
               "deploy")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mesh-llm: error: {message} (see mesh-llm --help)\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def _slots(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PARALLEL}: {value}")
    return value


def node_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="mesh-llm",
        description="Pool the GPUs and CPUs of several machines into one OpenAI-compatible "
                    f"LLM service. Subcommands: {', '.join(SUBCOMMANDS)} "
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
    p.add_argument("--bind-port", type=_port, default=0, metavar="P",
                   help="UDP port for QUIC (stable invite token); default ephemeral")
    p.add_argument("--bind-host", default="0.0.0.0", metavar="ADDR",
                   help="address for the QUIC socket (default 0.0.0.0; 127.0.0.1 keeps the "
                        "mesh on this machine)")
    p.add_argument("--advertise", action="append", default=[], metavar="HOST:PORT",
                   help="an address other nodes can reach this one at (repeatable)")
    p.add_argument("--port", type=_port, default=DEFAULT_API_PORT,
                   help=f"OpenAI API port (default {DEFAULT_API_PORT})")
    p.add_argument("--console", type=_port, nargs="?", const=DEFAULT_CONSOLE_PORT, default=None,
                   metavar="PORT", help=f"serve the web console (default port "
                                        f"{DEFAULT_CONSOLE_PORT})")
    p.add_argument("--split", action="store_true",
                   help="always split the model over the workers, even if it fits the host")
    p.add_argument("--max-vram", type=_positive_float, metavar="GB",
                   help="cap the memory this node offers for models")
    draft = p.add_mutually_exclusive_group()
    draft.add_argument("--draft", metavar="PATH", help="draft model for speculative decoding")
    draft.add_argument("--no-draft", action="store_true", help="no speculative decoding")
    p.add_argument("--draft-max", type=int, default=8, metavar="N",
                   help="most tokens drafted per step (default 8)")
    p.add_argument("--parallel", type=_slots, metavar="N",
                   help="concurrent requests llama-server serves (slots; default: "
                        f"{SPLIT_PARALLEL} for a split, llama.cpp's own choice solo)")
    p.add_argument("--bin-dir", type=Path, metavar="DIR",
                   help="use the llama.cpp binaries in DIR (e.g. a CUDA or Metal build)")
    p.add_argument("--device", metavar="DEV", help="llama.cpp device to use (--device)")
    p.add_argument("--home", type=Path, default=None, metavar="DIR",
                   help="node home: keys, logs (default $MESH_LLM_HOME or ~/.mesh-llm)")
    p.add_argument("--listen-all", action="store_true",
                   help="serve the API on 0.0.0.0 (requires --api-key)")
    p.add_argument("--api-key", metavar="KEY", help="Bearer key required by the API")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    if args.client and not args.join:
        raise UserError("--client needs --join TOKEN: a lite client joins an existing mesh", 2)
    if args.listen_all and not args.api_key:
        raise UserError("--listen-all exposes the API to the network: also give --api-key KEY",
                        2)
    for token in args.join:
        try:
            kind = decode_token(token).kind
        except TokenError as err:
            raise UserError(f"--join: {err}", 2) from None
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
    if not args.client and not models and not args.join:
        models = [DEFAULT_MODEL]  # alone: serve the default model solo
    model = models[0] if models else None
    # --join without --model: a worker without a model file; it serves the host's model
    if model is None and args.draft and not args.client:
        logging.getLogger("mesh_llm").warning(
            "--draft %s ignored: without --model this node never hosts", args.draft)
    device_args = ("--device", args.device) if args.device else ()
    home = args.home or default_home()
    return NodeConfig(
        model=model, models=tuple(models), home=home, join=tuple(args.join),
        client=args.client, api_port=args.port, console_port=args.console,
        bind_host=args.bind_host, bind_port=args.bind_port, advertise=tuple(args.advertise),
        split=args.split,
        max_vram_gb=args.max_vram, draft=args.draft, no_draft=args.no_draft,
        draft_max=args.draft_max, parallel=args.parallel, bin_dir=args.bin_dir,
        device=args.device,
        listen_all=args.listen_all, api_key=args.api_key, llama_args=device_args,
        standalone=args.standalone, new_mesh=args.new_mesh,
        trust_hosts=trusted_hosts(args.trust_hosts, home),
    )


def trusted_hosts(flag: str | None, home: Path) -> frozenset[str] | None:
    """--trust-hosts, else HOME/trusted_hosts, else None (any worker may host)."""
    from .home import TRUSTED_HOSTS_NAME, read_trusted_hosts

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


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%H:%M:%S"))
    root = logging.getLogger("mesh_llm")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # aiohttp's own reports (bad requests from the network are routine for a server): one
    # line each in our format; their tracebacks only with --verbose.
    class OneLine(logging.Formatter):
        def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
            return ""

        def formatStack(self, stack_info: str) -> str:
            return ""

    quiet = logging.StreamHandler(sys.stderr)
    quiet.setFormatter(OneLine("%(asctime)s  %(name)s: %(message)s", "%H:%M:%S")
                       if not verbose else handler.formatter)
    web_logs = logging.getLogger("aiohttp")
    web_logs.handlers[:] = [quiet]
    web_logs.setLevel(logging.DEBUG if verbose else logging.WARNING)
    web_logs.propagate = False


# --- subcommands --------------------------------------------------------------------------


def cmd_models(argv: Sequence[str]) -> int:
    """The catalog (size, draft, on disk or not) and other GGUF files in the HF cache."""
    import json

    from .models.listing import list_models

    p = _Parser(prog="mesh-llm models",
                description="list the catalog and the GGUF models on this machine")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    args = p.parse_args(argv)
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows["catalog"]:
        size = f"{row['size_bytes'] / 1e9:.1f} GB" if row["size_bytes"] else \
            f"~{row['approx_gb']:.1f} GB"
        draft = f", draft {row['draft']}" if row["draft"] else ""
        parts = f", {len(row['files'])} parts" if len(row["files"]) > 1 else ""
        where = row["path"] or f"not downloaded ({row['source']})"
        print(f"{row['name']:<20} {size:>9}{parts}{draft}\n    {where}")
    if rows["other"]:
        print("\nother GGUF models in the Hugging Face cache:")
        for row in rows["other"]:
            print(f"{row['name']:<40} {row['size_bytes'] / 1e9:>6.2f} GB  --model {row['model']}"
                  f"\n    {row['path']}")
    return 0


def cmd_download(argv: Sequence[str]) -> int:
    p = _Parser(prog="mesh-llm download",
                description="fetch a model (and its catalog draft) into the Hugging Face cache")
    p.add_argument("name", help="catalog name (see mesh-llm models), hf://ORG/REPO/FILE.gguf, "
                                "a huggingface.co .../resolve/REV/FILE.gguf URL, or "
                                "ORG/REPO:QUANT")
    p.add_argument("--no-draft", action="store_true", help="skip the draft model")
    args = p.parse_args(argv)
    from .models.download import download

    download(args.name, with_draft=not args.no_draft)
    return 0


def cmd_invite(argv: Sequence[str]) -> int:
    """Mint an invite for the mesh of the node that runs (or last ran) with this home."""
    import time

    from .home import read_node_info, read_secret
    from .identity import Identity
    from .token import encode_token, mint_invite, parse_duration

    p = _Parser(prog="mesh-llm invite",
                description="print a new invite to this node's mesh: a client invite grants "
                            "only the API (a lite client), a worker invite grants serving")
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--client", action="store_const", const="client", dest="kind",
                      help="a lite client's invite: the API tunnel, nothing more")
    kind.add_argument("--worker", action="store_const", const="worker", dest="kind",
                      help="a serving node's invite (it may also host unless --trust-hosts)")
    p.add_argument("--expires", metavar="DURATION",
                   help="refused after this long, e.g. 30m, 24h, 7d (default: never)")
    p.add_argument("--home", type=Path, default=None, metavar="DIR")
    args = p.parse_args(argv)
    home = args.home or default_home()
    expires = 0
    if args.expires is not None:
        try:
            expires = int(time.time()) + parse_duration(args.expires)
        except TokenError as err:
            raise UserError(f"--expires: {err}", 2) from None
    secret = read_secret(home)
    info = read_node_info(home)
    addrs = info.get("addrs") if info is not None else None
    if secret is None or not isinstance(addrs, list) or not addrs:
        raise UserError(f"no mesh in {home}: start a node with this home first (mesh-llm "
                        "--home DIR ...), then mint invites for its mesh")
    identity = Identity.load_or_create(home)
    token = mint_invite(identity.node_id, [str(a) for a in addrs], secret, args.kind, expires)
    try:
        print(encode_token(token))
    except TokenError as err:
        raise UserError(f"cannot mint an invite from {home}: {err}") from None
    until = time.strftime(" until %Y-%m-%d %H:%M UTC", time.gmtime(expires)) if expires else ""
    print(f"({args.kind} invite through node {identity.node_id[:12]}{until}; use it with "
          f"mesh-llm {'--client ' if args.kind == 'client' else ''}--join TOKEN)",
          file=sys.stderr)
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    """Measure the running mesh through a node's API and print the seed's table."""
    import urllib.request

    import aiohttp

    from . import benchmark

    p = _Parser(prog="mesh-llm bench",
                description="measure the running mesh through this node's API: gen tok/s, "
                            "TTFT and draft acceptance for a prose and a code prompt")
    p.add_argument("--port", type=_port, default=DEFAULT_API_PORT, help="the node's API port")
    p.add_argument("--console", type=_port, default=DEFAULT_CONSOLE_PORT, metavar="PORT",
                   help="its console port, for the mode, shares and RTTs in the header")
    p.add_argument("--reps", type=int, default=5, help="measured runs per row (default 5)")
    p.add_argument("--tokens", type=int, default=128, help="tokens per run (default 128)")
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="also run N streams at once and report the aggregate tok/s")
    p.add_argument("--compare", action="store_true",
                   help="run each row against the host's own llama-server too (on the host)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--api-key", metavar="KEY", help="the node's --api-key, if it has one")
    args = p.parse_args(argv)
    for name, value, low in (("--reps", args.reps, 1), ("--tokens", args.tokens, 2),
                             ("--concurrency", args.concurrency, 1)):
        if value < low:
            raise UserError(f"{name} must be at least {low}", 2)
    base = f"http://127.0.0.1:{args.port}"
    request = urllib.request.Request(base + "/health", headers=bearer(args.api_key))
    try:
        with urllib.request.urlopen(request, timeout=5):
            pass
    except OSError as err:
        raise UserError(f"no model answers at {base} ({err}); start a node, or give its "
                        "--port") from None
    status = benchmark.fetch_status(args.console, args.api_key)
    targets = {"mesh": base}
    if args.compare:
        llama = (status or {}).get("llama_server") or {}
        if not status or not status.get("is_host") or not llama.get("port"):
            raise UserError("--compare measures the host's own llama-server: run it on the "
                            "host, with its console on (--console PORT)")
        targets["direct"] = f"http://127.0.0.1:{llama['port']}"
    try:
        report = asyncio.run(benchmark.run_bench(
            targets, args.reps, args.tokens, args.concurrency, args.api_key,
            benchmark.describe(status)))
    except (benchmark.BenchError, aiohttp.ClientError, OSError, TimeoutError) as err:
        raise UserError(f"bench: {err or type(err).__name__}") from None
    print(report.to_json() if args.json else benchmark.render(report))
    return 0


def cmd_bundle(argv: Sequence[str]) -> int:
    """Pack an offline install (wheels, engine, optional model, install.sh) in one file."""
    from .deploy.bundle import build_bundle, default_bundle_name
    from .deploy.target import this_machine

    p = _Parser(prog="mesh-llm bundle",
                description="write one .tar.gz that installs mesh-llm, its dependencies and "
                            "the llama.cpp engine on a machine with the same OS, CPU and "
                            "Python, with no network (tar xzf FILE && mesh-llm-bundle/"
                            "install.sh [DIR])")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="where to write it (default: a name with version, OS, CPU and Python)")
    p.add_argument("--model", metavar="NAME",
                   help="also pack this model: a catalog name or a path to a .gguf file")
    args = p.parse_args(argv)
    out = args.output or Path(default_bundle_name(this_machine(), args.model))
    build_bundle(out, args.model)
    return 0


def cmd_deploy(argv: Sequence[str]) -> int:
    """Install a bundle on another machine over ssh and start a worker there."""
    from .deploy.deploy import deploy_parser_args, run_deploy

    p = _Parser(prog="mesh-llm deploy",
                description="copy a bundle to [USER@]HOST over ssh (BatchMode: keys or an "
                            "agent, never a password), install it, start a worker there that "
                            "outlives the ssh session, and wait until it joins this node's "
                            "mesh. Arguments after -- go to the remote node.")
    deploy_parser_args(p)
    args, node_args = p.parse_known_args(argv)
    if node_args and node_args[0] == "--":
        node_args = node_args[1:]
    elif node_args:
        p.error(f"unrecognized arguments: {' '.join(node_args)} (node options go after --)")
    return run_deploy(args, node_args)


def _home_arg(prog: str, description: str, argv: Sequence[str]) -> Path:
    p = _Parser(prog=prog, description=description)
    p.add_argument("--home", type=Path, default=None, metavar="DIR")
    return p.parse_args(argv).home or default_home()


def cmd_stop(argv: Sequence[str]) -> int:
    from .home import running_pid

    home = _home_arg("mesh-llm stop", "stop the node that runs with this home dir", argv)
    pid = running_pid(home)
    if pid is None:
        raise UserError(f"no mesh-llm is running with home {home}")
    os.kill(pid, signal.SIGTERM)
    print(f"sent SIGTERM to mesh-llm pid {pid}")
    return 0


def cmd_status(argv: Sequence[str]) -> int:
    import json
    import urllib.error
    import urllib.request

    p = _Parser(prog="mesh-llm status", description="print a running node's status JSON")
    p.add_argument("--console", type=_port, default=DEFAULT_CONSOLE_PORT, metavar="PORT")
    p.add_argument("--api-key", metavar="KEY", help="the node's --api-key, if it has one")
    args = p.parse_args(argv)
    url = f"http://127.0.0.1:{args.console}/api/status"
    request = urllib.request.Request(url, headers=bearer(args.api_key))
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            print(json.dumps(json.load(resp), indent=2))
    except urllib.error.HTTPError as err:
        hint = "; give its key with --api-key" if err.code == 401 else ""
        raise UserError(f"the console at {url} answered {err.code}{hint}") from None
    except OSError as err:
        raise UserError(f"no console answers at {url} ({err}); start the node with --console") \
            from None
    return 0


def cmd_doctor(argv: Sequence[str]) -> int:
    """Check that the engine and the default model are installed (used by scripts/setup),
    and say what the engine can use."""
    from .inference.backend import backend_of, list_devices
    from .inference.engine import find_engine
    from .models import hardware
    from .models.resolve import resolve_model

    p = _Parser(prog="mesh-llm doctor", description="check the engine and the default model")
    p.add_argument("--bin-dir", type=Path, metavar="DIR", help="check this llama.cpp build")
    args = p.parse_args(argv)
    engine = find_engine(args.bin_dir)
    devices = list_devices(engine.llama_server)
    print(f"engine: {engine.llama_server.parent} (llama-server, ggml-rpc-server)")
    print(f"backend: {backend_of(devices)}")
    for device in devices:
        print(f"  device {device.name}: {device.description} "
              f"({device.total_bytes / 1e9:.1f} GB)")
    if not devices:
        print("  no GPU device: llama.cpp runs on the CPU")
    vram, source = hardware.detect_vram()
    print(f"memory: {vram / 1e9:.1f} GB from {source}")
    model = resolve_model(DEFAULT_MODEL)
    print(f"default model: {model.name} at {model.path}")
    return 0


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where it exists: it halves what relaying each streamed token costs us."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop has no Windows build
        asyncio.run(main)
        return
    uvloop.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging("-v" in argv or "--verbose" in argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            handler = {"models": cmd_models, "download": cmd_download, "status": cmd_status,
                       "stop": cmd_stop, "doctor": cmd_doctor, "invite": cmd_invite,
                       "bench": cmd_bench, "bundle": cmd_bundle, "deploy": cmd_deploy}[argv[0]]
            return handler(argv[1:])
        config = config_from_args(node_parser().parse_args(argv))
        from .node import run_node

        run_event_loop(run_node(config))
        return 0
    except UserError as err:
        print(f"mesh-llm: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mesh-llm models --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
