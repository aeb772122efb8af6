"""The host's llama-server: argv from the plan, supervision, readiness by /health."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .engine import Engine
from .processes import LoopbackServer

log = logging.getLogger("mesh_llm.llama")

HEALTH_POLL_S = 0.05
# Slots llama-server gets (`--parallel`): llama.cpp's own default is 4, so a fifth user
# queues behind a whole answer (and, in a re-plan, requests queued behind busy slots cannot
# move to the new llama-server); for a split, slot turnover also triggers the prompt-cache
# traffic below. Eight users batched together cost the worker link no more round trips per
# step than one (bench/rpc_profile.py). The KV cache is unified: slots cost no memory.
SPLIT_PARALLEL = 8
MAX_PARALLEL = 256
# The KV cache the slots share (`-c`). llama-server sizes it to the model's trained context
# and caps each slot there, so with the unified cache four coding-agent sessions of ~6,000
# tokens each (bench/agent_session.py) overflow a model trained on 8,192 ("Context size has
# been exceeded"). A model trained on less than POOL_TOKENS gets room for POOL_SESSIONS such
# contexts, up to POOL_TOKENS; a longer-trained model keeps llama-server's own size.
# `--llama-arg '-c N'` overrides it.
POOL_SESSIONS = 4
POOL_TOKENS = 32768


def context_pool(trained: int | None) -> int | None:
    """The KV cells all slots share, for a model trained on `trained` tokens (None: leave
    llama-server's default)."""
    if trained is None:
        return None
    return max(trained, min(POOL_SESSIONS * trained, POOL_TOKENS))


# llama-server options the node sets itself (or that would stop llama-server from serving
# it): a --llama-arg may not name them. Each group says why, in the refusal's words. llama.cpp
# takes no `--flag=value` form, so matching whole arguments is enough.
NODE_OWNED_FLAGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file",
      "-dr", "--docker-repo", "--models-dir", "--models-preset"),
     "mesh-llm sets the model: use --model"),
    (("-md", "--model-draft", "--spec-draft-model"),
     "mesh-llm sets the draft model: use --draft or --no-draft"),
    (("-a", "--alias"), "mesh-llm names the model, and the API routes requests by that name"),
    (("--host", "--port", "--reuse-port", "--api-prefix"),
     "mesh-llm runs llama-server on a loopback port of its choosing"),
    (("--api-key", "--api-key-file", "--ssl-key-file", "--ssl-cert-file"),
     "mesh-llm reaches its llama-server by plain HTTP without a key "
     "(--api-key guards the API)"),
    (("--rpc", "-ts", "--tensor-split", "-ngl", "--gpu-layers", "--n-gpu-layers", "-ot",
      "--override-tensor", "-sm", "--split-mode"),
     "mesh-llm places the layers from the mesh's plan"),
    (("-dev", "--device"), "use mesh-llm's --device"),
    (("-np", "--parallel"), "use mesh-llm's --parallel"),
    (("-h", "--help", "--usage", "--version", "--list-devices", "-cl", "--cache-list",
      "--completion-bash"), "llama-server would print it and exit instead of serving"),
)


def owned_flag(args: tuple[str, ...]) -> tuple[str, str] | None:
    """The first argument the node owns, with why; None when every one may pass."""
    for arg in args:
        for flags, why in NODE_OWNED_FLAGS:
            if arg in flags:
                return arg, why
    return None


@dataclass(frozen=True)
class LlamaPlan:
    """What llama-server is started with; a new plan means a restart."""

    model: Path
    alias: str
    rpc: tuple[str, ...] = ()
    tensor_split: tuple[float, ...] = ()  # per llama.cpp device: RPC devices in --rpc order
    gpu_layers: int | None = None  # -ngl; None leaves llama.cpp's default
    overrides: tuple[str, ...] = ()  # -ot PATTERN=BUFFER entries
    draft: Path | None = None
    draft_max: int = 8
    parallel: int | None = None  # slots (--parallel); None: SPLIT_PARALLEL
    ctx_size: int | None = None  # -c: the KV cells the slots share; None: llama's default
    extra: tuple[str, ...] = field(default_factory=tuple)  # last: they override ours


def serving_args(split: bool, parallel: int | None) -> list[str]:
    """Slots and caches. Why, for a split: llama-server's host-memory prompt cache
    (``--cache-ram``) saves an idle slot's state whenever a new task arrives, and with the KV
    of some layers on an RPC worker that save is one GET_TENSOR round trip per layer per KV
    cell range: thousands of link RTTs after a burst (bench/rpc_profile.py). Off for a
    split; the slot's own prefix reuse (``--cache-prompt``) stays. ``--kv-unified`` keeps
    every slot able to use the whole context (without it each gets ctx / slots)."""
    slots = ["--parallel", str(parallel or SPLIT_PARALLEL), "--kv-unified"]
    return [*slots, "--cache-ram", "0"] if split else slots


def llama_server_argv(engine: Engine, plan: LlamaPlan, port: int) -> list[str]:
    """The command line for one llama-server start (pure, so it can be tested)."""
    argv = [
        str(engine.llama_server),
        "--model", str(plan.model),
        "--alias", plan.alias,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--no-webui",
        "--jinja",
    ]
    if plan.rpc:
        # -lv 4 puts each device's buffer sizes in the log: the split can be checked there.
        argv += ["--rpc", ",".join(plan.rpc), "-lv", "4"]
    if plan.gpu_layers is not None:
        argv += ["-ngl", str(plan.gpu_layers)]
    if plan.tensor_split:
        argv += ["--tensor-split", ",".join(f"{share:g}" for share in plan.tensor_split)]
    for override in plan.overrides:
        argv += ["-ot", override]
    argv += serving_args(bool(plan.rpc), plan.parallel)
    if plan.ctx_size is not None:
        argv += ["-c", str(plan.ctx_size)]
    if plan.draft is not None:
        argv += [
            "-md", str(plan.draft),
            "--spec-type", "draft-simple",
            "--spec-draft-n-max", str(plan.draft_max),
            "-devd", "none", "-ngld", "0",
        ]
    argv += list(plan.extra)
    return argv


class LlamaServer(LoopbackServer):
    """One supervised llama-server on a loopback port, ready once /health answers 200."""

    def __init__(
        self,
        engine: Engine,
        plan: LlamaPlan,
        log_path: Path,
        on_change: Callable[[], None],
        before_start: Callable[[], None] | None = None,
    ) -> None:
        # GGML_NO_BACKTRACE: a lost RPC worker is a one-line error in the log, not a gdb
        # session and a page of backtrace.
        super().__init__("llama-server", log_path, on_change,
                         env={"GGML_RPC_NO_RDMA": "1", "GGML_NO_BACKTRACE": "1"})
        self.engine = engine
        self.plan = plan
        self.load_seconds: float | None = None
        self._before_start = before_start

    @property
    def url(self) -> str | None:
        return f"http://127.0.0.1:{self.port}" if self.ready else None

    def argv(self, port: int) -> list[str]:
        if self._before_start is not None:
            self._before_start()
        return llama_server_argv(self.engine, self.plan, port)

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Poll /health until llama-server has loaded the model (or died)."""
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.port}/health"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while proc.returncode is None:
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(HEALTH_POLL_S)
            else:
                return
        self.load_seconds = time.monotonic() - started
        log.info("llama-server ready on 127.0.0.1:%d (loaded in %.1f s)", self.port,
                 self.load_seconds)
        self._became_ready()
