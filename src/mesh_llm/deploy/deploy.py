"""`mesh-llm deploy`: bundle, copy over ssh, install, start a worker, wait for it to join."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..mesh.invites import TokenError, decode_token
from ..node.config import DEFAULT_CONSOLE_PORT
from .bundle import build_bundle
from .remote import (
    Remote,
    Worker,
    install_script,
    last_line,
    probe_script,
    ssh_options,
    start_script,
    stop_command,
)

POLL_S = 1.0


def _ssh_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


def deploy_parser_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="[USER@]HOST", help="where to deploy (ssh destination)")
    p.add_argument("--join", metavar="TOKEN",
                   help="worker invite for the remote node (default: the local node's token)")
    p.add_argument("--model", metavar="NAME",
                   help="pack this model too and serve it there (default: a worker without "
                        "a model file, serving the host's model)")
    p.add_argument("--port", type=_ssh_port, metavar="SSH_PORT",
                   help="ssh port (default: ssh's, or your ssh config's)")
    p.add_argument("--bundle", type=Path, metavar="FILE",
                   help="use this bundle (built into FILE first if it does not exist)")
    p.add_argument("--dir", metavar="DIR",
                   help="install directory there (default ~/.local/share/mesh-llm)")
    p.add_argument("--remote-home", metavar="DIR",
                   help="the remote node's home (default its $MESH_LLM_HOME or ~/.mesh-llm)")
    p.add_argument("--console", type=int, default=DEFAULT_CONSOLE_PORT, metavar="PORT",
                   help=f"the local node's console port (default {DEFAULT_CONSOLE_PORT})")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="passed to ssh as -o OPT (repeatable); $MESH_LLM_SSH_OPTS "
                        "adds raw options, e.g. '-i KEY'")
    p.add_argument("--wait", type=float, default=180.0, metavar="S",
                   help="how long to wait for the worker to join (default 180)")


def local_status(console_port: int) -> dict[str, Any] | None:
    """The local node's status JSON, or None when no console answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{console_port}/api/status",
                                    timeout=5) as resp:
            body = json.load(resp)
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def peer_ids(status: dict[str, Any] | None) -> set[str]:
    peers = status.get("peers") if status else None
    return {str(p.get("id")) for p in peers or [] if isinstance(p, dict)}


def choose_token(join: str | None, status: dict[str, Any] | None, console_port: int) -> str:
    """--join, else the local node's worker invite; a client invite cannot make a worker."""
    token = join or (status or {}).get("token")
    if not token:
        raise UserError(f"no local node answers at http://127.0.0.1:{console_port}/api/status: "
                        "start one with --console (or name its port with --console PORT), "
                        "or give --join TOKEN")
    try:
        kind = decode_token(str(token)).kind
    except TokenError as err:
        raise UserError(f"--join: {err}") from None
    if kind == "client":
        raise UserError("--join: that is a client invite; a deployed worker needs a worker "
                        "invite (mesh-llm invite --worker)")
    return str(token)


def parse_install_output(text: str) -> tuple[str, str | None]:
    """install.sh's `mesh-llm: PATH` and the `--model X` of its join line (if any)."""
    mesh_llm, model = None, None
    for line in text.splitlines():
        if line.startswith("mesh-llm: "):
            mesh_llm = line.split(": ", 1)[1].strip()
        elif line.startswith("join a mesh: ") and " --model " in line:
            model = line.split(" --model ", 1)[1].strip()
    if mesh_llm is None:
        raise UserError(f"install.sh did not say where mesh-llm went: {last_line(text)}")
    return mesh_llm, model


def _bundle(args: argparse.Namespace, work: Path) -> Path:
    if args.bundle is not None and args.bundle.is_file():
        print(f"bundle: reusing {args.bundle}")
        return args.bundle
    return build_bundle(args.bundle or work / "mesh-llm-bundle.tar.gz", args.model)


def _install(remote: Remote, bundle: Path, install_dir: str | None) -> tuple[str, str | None]:
    tmp = remote.run("mktemp -d").stdout.strip()
    if not tmp.startswith("/"):
        raise UserError(f"{remote.target}: mktemp -d gave no directory")
    print(f"copying {bundle.name} ({bundle.stat().st_size / 1e6:.1f} MB) to {remote.target}")
    remote.copy(bundle, f"{tmp}/bundle.tar.gz")
    print(f"installing on {remote.target}")
    proc = remote.run(install_script(tmp, install_dir))
    if proc.returncode == 3:
        raise UserError(f"{remote.target} refuses the bundle: {last_line(proc.stderr)}")
    if proc.returncode != 0:
        raise UserError(f"install on {remote.target} failed: "
                        f"{last_line(proc.stderr or proc.stdout)}")
    for line in proc.stdout.splitlines():
        print(f"  {line}")
    return parse_install_output(proc.stdout)


def _node_id(text: str) -> str | None:
    first = text.split("\n", 1)[0].strip()
    try:
        info = json.loads(first) if first else None
    except ValueError:
        return None
    node_id = info.get("node_id") if isinstance(info, dict) else None
    return node_id if isinstance(node_id, str) else None


def _wait_joined(remote: Remote, worker: Worker, args: argparse.Namespace) -> None:
    """Poll the remote node's id, then the local peers, until it is there or time is up."""
    deadline = time.monotonic() + args.wait
    node_id: str | None = None
    port = f"-p {args.port} " if args.port else ""
    stop_hint = (f"stop it with: ssh {port}{remote.target} "
                 f"{stop_command(worker, args.remote_home)}")
    while time.monotonic() < deadline:
        if node_id is None:
            probe = remote.run(probe_script(worker, args.remote_home)).stdout
            if "\nDEAD" in "\n" + probe:
                tail = probe.split("DEAD", 1)[1]
                raise UserError(f"the worker on {remote.target} exited: {last_line(tail)} "
                                f"(log {worker.log})")
            node_id = _node_id(probe)
            if node_id is not None:
                print(f"waiting for node {node_id[:12]} to appear in the peers of the node "
                      f"at :{args.console}")
        if node_id is not None and node_id in peer_ids(local_status(args.console)):
            print(f"node {node_id[:12]} on {remote.target} joined the mesh; {stop_hint}")
            return
        time.sleep(POLL_S)
    raise UserError(f"the worker on {remote.target} did not join within {args.wait:.0f} s: "
                    f"see its log there ({worker.log}); {stop_hint}")


def run_deploy(args: argparse.Namespace, node_args: list[str]) -> int:
    status = local_status(args.console)
    token = choose_token(args.join, status, args.console)
    remote = Remote(args.target, args.port,
                    ssh_options(args.ssh_option, os.environ.get("MESH_LLM_SSH_OPTS", "")))
    remote.run("true", timeout=60)  # fail on ssh before minutes of packing
    with tempfile.TemporaryDirectory(prefix="mesh-llm-deploy-") as tmp:
        bundle = _bundle(args, Path(tmp))
        mesh_llm, installed_model = _install(remote, bundle, args.dir)
    argv = ["--join", token]
    if args.model:
        argv += ["--model", installed_model or args.model]
    if args.remote_home:
        argv += ["--home", args.remote_home]
    worker = Worker.at(mesh_llm, [*argv, *node_args])
    how = remote.run(start_script(worker))
    if how.returncode != 0:
        raise UserError(f"could not start the worker on {remote.target}: "
                        f"{last_line(how.stderr or how.stdout)}")
    print(f"worker started on {remote.target}: {how.stdout.strip()}")
    if status is None:
        print(f"no local console at :{args.console} to watch: check that it joined in the "
              f"peers of the node its token came from (mesh-llm status --console PORT there), "
              f"or in its log on {remote.target} ({worker.log})")
        return 0
    _wait_joined(remote, worker, args)
    return 0
