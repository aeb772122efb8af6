"""The subcommands: `mesh-llm models|download|invite|bench|bundle|deploy|stop|status|doctor`,
`discover` (discover.py), and the coding-agent launchers `claude|codex|opencode|goose` (agents.py).

Each takes its own argv and returns an exit code; a user mistake is a UserError (one line).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import UserError
from ..mesh.invites import TokenError
from ..models.catalog import DEFAULT_MODEL
from ..netutil import bearer
from ..node.config import DEFAULT_API_PORT, DEFAULT_CONSOLE_PORT, default_home
from .agents import agent_commands
from .args import Parser, port
from .discover import cmd_discover


def cmd_models(argv: Sequence[str]) -> int:
    """The catalog (size, draft, on disk or not) and other GGUF files in the HF cache."""
    import json

    from ..models.listing import list_models

    p = Parser(prog="mesh-llm models",
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
    p = Parser(prog="mesh-llm download",
               description="fetch a model (and its catalog draft) into the Hugging Face cache")
    p.add_argument("name", help="catalog name (see mesh-llm models), hf://ORG/REPO/FILE.gguf, "
                                "a huggingface.co .../resolve/REV/FILE.gguf URL, or "
                                "ORG/REPO:QUANT")
    p.add_argument("--no-draft", action="store_true", help="skip the draft model")
    args = p.parse_args(argv)
    from ..models.download import download

    download(args.name, with_draft=not args.no_draft)
    return 0


def cmd_invite(argv: Sequence[str]) -> int:
    """Mint an invite for the mesh of the node that runs (or last ran) with this home."""
    import time

    from ..mesh.identity import Identity
    from ..mesh.invites import encode_token, mint_invite, parse_duration
    from ..node.home import read_reach, read_secret

    p = Parser(prog="mesh-llm invite",
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
    reach = read_reach(home)
    if secret is None or reach is None or not reach[0]:
        raise UserError(f"no mesh in {home}: start a node with this home first (mesh-llm "
                        "--home DIR ...), then mint invites for its mesh")
    identity = Identity.load_or_create(home)
    addrs, via = reach  # as the node's own invites list them, via members included
    token = mint_invite(identity.node_id, addrs, secret, args.kind, expires, via)
    try:
        print(encode_token(token))
    except TokenError as err:
        raise UserError(f"cannot mint an invite from {home}: {err}") from None
    until = time.strftime(" until %Y-%m-%d %H:%M UTC", time.gmtime(expires)) if expires else ""
    through = "".join(f" or {member[:12]}" for member, _ in via)
    print(f"({args.kind} invite through node {identity.node_id[:12]}{through}{until}; use it "
          f"with mesh-llm {'--client ' if args.kind == 'client' else ''}--join TOKEN)",
          file=sys.stderr)
    return 0


def cmd_bench(argv: Sequence[str]) -> int:
    """Measure the running mesh through a node's API and print the seed's table."""
    import urllib.request

    import aiohttp

    from . import benchmark

    p = Parser(prog="mesh-llm bench",
               description="measure the running mesh through this node's API: gen tok/s, "
                           "TTFT and draft acceptance for a prose and a code prompt")
    p.add_argument("--port", type=port, default=DEFAULT_API_PORT, help="the node's API port")
    p.add_argument("--console", type=port, default=DEFAULT_CONSOLE_PORT, metavar="PORT",
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
    from ..deploy.bundle import build_bundle, default_bundle_name
    from ..deploy.target import this_machine

    p = Parser(prog="mesh-llm bundle",
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
    from ..deploy.deploy import deploy_parser_args, run_deploy

    p = Parser(prog="mesh-llm deploy",
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
    p = Parser(prog=prog, description=description)
    p.add_argument("--home", type=Path, default=None, metavar="DIR")
    return p.parse_args(argv).home or default_home()


def cmd_stop(argv: Sequence[str]) -> int:
    from ..node.home import running_pid

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

    p = Parser(prog="mesh-llm status", description="print a running node's status JSON")
    p.add_argument("--console", type=port, default=DEFAULT_CONSOLE_PORT, metavar="PORT")
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
    from ..inference.backend import backend_of, list_devices
    from ..inference.engine import find_engine
    from ..models import hardware
    from ..models.resolve import resolve_model

    p = Parser(prog="mesh-llm doctor", description="check the engine and the default model")
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


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "models": cmd_models, "download": cmd_download, "status": cmd_status, "stop": cmd_stop,
    "doctor": cmd_doctor, "invite": cmd_invite, "bench": cmd_bench, "bundle": cmd_bundle,
    "deploy": cmd_deploy, "discover": cmd_discover, **agent_commands(),
}
