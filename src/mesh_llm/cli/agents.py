"""`mesh-llm claude | codex | opencode | goose`: run a coding agent on the mesh's model.

Finds the node answering on the API port (or, with `--join`, starts a lite client for the
agent's lifetime), picks the model, points the agent at the mesh through its own
documented settings (agent_env.py), says in one line what it set, then runs the agent in
the foreground and exits with its code. Nothing is written in the user's home unless
`--write` asks for the settings to be kept in the agent's own config (agent_write.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..netutil import free_port
from ..node.config import DEFAULT_API_PORT
from .agent_env import AGENTS, choose_model, launch_for, summary
from .agent_write import write_config
from .args import Parser, port

JOIN_TIMEOUT_S = 90.0  # a lite client's join and its host's first ready model
POLL_S = 0.1
MAX_LISTING_BYTES = 1024 * 1024
_PR_SET_PDEATHSIG = 1


def fetch_models(base_url: str, api_key: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """`GET /v1/models` of the node at `base_url`; OSError when none answers, UserError for
    a wrong key, ValueError for an answer that is not a listing."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(base_url + "/v1/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = json.loads(resp.read(MAX_LISTING_BYTES + 1)[:MAX_LISTING_BYTES])
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise UserError(f"the node at {base_url} wants an API key: give it with "
                            "--api-key KEY") from None
        raise OSError(f"{base_url}/v1/models answered {err.code}") from None
    if not isinstance(body, dict):
        raise ValueError("not a model listing")
    return body


def _ready(listing: dict[str, Any]) -> bool:
    data = listing.get("data")
    return isinstance(data, list) and any(
        isinstance(m, dict) and (m.get("meta") or {}).get("ready", True) for m in data)


def _die_with_parent() -> None:
    """preexec_fn: the lite client gets SIGTERM if the launcher dies, so it never lingers."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@contextlib.contextmanager
def lite_client(token: str, api_port: int, api_key: str | None) -> Iterator[str]:
    """A lite client joined with `token`, its home in a temporary directory, serving the
    API on `api_port` (0: a free one) until the block ends; yields its base URL."""
    chosen = api_port or free_port()
    base_url = f"http://127.0.0.1:{chosen}"
    with tempfile.TemporaryDirectory(prefix="mesh-llm-agent-") as home:
        log_path = Path(home) / "client.log"
        argv = [sys.executable, "-m", "mesh_llm", "--client", "--join", token,
                "--home", str(Path(home) / "home"), "--port", str(chosen)]
        if api_key:
            argv += ["--api-key", api_key]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        try:
            _await_listing(base_url, api_key, proc, log_path)
            yield base_url
        finally:
            _stop(proc)


def _await_listing(base_url: str, api_key: str | None, proc: subprocess.Popen[bytes],
                   log_path: Path) -> None:
    """Until the lite client lists a ready model; UserError with its last line if it exits
    or the join takes longer than JOIN_TIMEOUT_S."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            lines = log_path.read_text(errors="replace").strip().splitlines()
            raise UserError(f"the lite client stopped: {lines[-1] if lines else proc.returncode}")
        with contextlib.suppress(OSError, ValueError):
            if _ready(fetch_models(base_url, api_key, timeout=2)):
                return
        if time.monotonic() > deadline:
            raise UserError(f"the lite client found no ready model within {JOIN_TIMEOUT_S:.0f}"
                            f" s (its log: {log_path})")
        time.sleep(POLL_S)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_agent(command: list[str], env: dict[str, str]) -> int:
    """Run the agent in the foreground; Ctrl-C is the agent's to handle, so the launcher
    waits for it (and then stops its lite client). Its exit code, 128+N for signal N."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(command, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code


def agent_command(agent: str, argv: Sequence[str],
                  runner: Callable[[list[str], dict[str, str]], int] = run_agent) -> int:
    """The launcher for `agent` with its own argv (options, then `--` and the agent's)."""
    spec = AGENTS[agent]
    ours, theirs = _split_argv(argv)
    p = Parser(prog=f"mesh-llm {agent}",
               description=f"run {agent} on the mesh's model: point it at a running node's "
                           "API (or join a mesh for its lifetime with --join), then run it "
                           f"with the arguments after --. Needs `{spec.command}` installed.")
    p.add_argument("--model", metavar="M", help="the mesh's model to use (default: the "
                   "first whose name says coder, else the mesh's default)")
    p.add_argument("--join", metavar="TOKEN", help="start a lite client with this invite "
                   "for the agent's lifetime (no node needs to run here)")
    p.add_argument("--port", type=port, default=None, metavar="P",
                   help=f"the node's API port (default {DEFAULT_API_PORT}; with --join, the "
                        "lite client's, default a free one)")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("MESH_LLM_API_KEY"),
                   help="the node's --api-key (default: $MESH_LLM_API_KEY)")
    p.add_argument("--write", action="store_true",
                   help="also keep these settings in the agent's own config file in your "
                        "home, so it finds the mesh without this launcher")
    args = p.parse_args(ours)
    if args.write and args.join:
        raise UserError("--write keeps a running node's address: use it with --port, not "
                        "with --join (whose lite client lives only as long as the agent)", 2)
    executable = shutil.which(spec.command)
    if executable is None:
        raise UserError(f"{spec.command} is not installed: {spec.install}")
    if args.join:
        with lite_client(args.join, args.port or 0, args.api_key) as base_url:
            return _launch(agent, base_url, args, theirs, executable, runner)
    base_url = f"http://127.0.0.1:{args.port or DEFAULT_API_PORT}"
    return _launch(agent, base_url, args, theirs, executable, runner)


def _launch(agent: str, base_url: str, args: Any, user_args: list[str], executable: str,
            runner: Callable[[list[str], dict[str, str]], int]) -> int:
    try:
        listing = fetch_models(base_url, args.api_key)
        model = choose_model(listing, args.model)
    except (OSError, ValueError) as err:
        raise UserError(f"no mesh-llm node answers at {base_url} ({err}): start one (mesh-llm "
                        "--model M), give its --port, or join a mesh with --join TOKEN") \
            from None
    launch = launch_for(agent, base_url, model, args.api_key)
    if args.write:
        written = write_config(agent, Path.home(), launch, model)
        print(f"mesh-llm: wrote the mesh's settings for {agent} to {written}", file=sys.stderr)
    print(summary(agent, base_url, model, launch, user_args), file=sys.stderr, flush=True)
    return runner([executable, *launch.args, *user_args], launch.environ(os.environ))


def _split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Our options before `--`, the agent's after it."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def agent_commands() -> dict[str, Callable[[Sequence[str]], int]]:
    """`mesh-llm claude` etc., for commands.COMMANDS."""
    def make(name: str) -> Callable[[Sequence[str]], int]:
        return lambda argv: agent_command(name, argv)
    return {name: make(name) for name in AGENTS}
