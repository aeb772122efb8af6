"""One mesh-llm node: wires home, engine, model, API, console (and the mesh) together."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from typing import Any

from aiohttp import web

from .api.proxy import ApiProxy, Upstream
from .changes import ChangeFeed
from .config import NodeConfig
from .console.server import Console
from .errors import UserError
from .home import HomeDir
from .identity import Identity
from .inference.election import Candidate, Plan, make_plan
from .inference.engine import Engine, find_engine
from .inference.llama import LlamaPlan, LlamaServer
from .models import hardware
from .models.resolve import ResolvedModel, resolve_model
from .status import build_status, plan_json

log = logging.getLogger("mesh_llm.node")


class Node:
    """The node's state and its lifecycle; decisions live in election.py, I/O in the parts."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.home = HomeDir(config.home)
        self.changes = ChangeFeed()
        self.identity: Identity | None = None
        self.model: ResolvedModel | None = None
        self.engine: Engine | None = None
        self.vram_bytes = 0
        self.plan: Plan | None = None
        self.llama: LlamaServer | None = None
        self.state = "starting"
        self.api = ApiProxy(self.upstream, api_key=config.api_key)
        self.console = Console(self.status, self.changes, self.api)
        self._runners: list[web.AppRunner] = []

    # --- start-up checks: everything that can fail fast, before any process starts ---
    def prepare(self) -> None:
        cfg = self.config
        if not cfg.client:
            self.model = resolve_model(cfg.model or "")
            log.info("model: %s (%s, %.0f MB)", self.model.name, self.model.path,
                     self.model.size_bytes / 1e6)
            self.engine = find_engine(cfg.bin_dir)
            log.info("engine: %s", self.engine.bin_dir)
            detected, source = hardware.detect_vram()
            self.vram_bytes = hardware.capped(detected, cfg.max_vram_gb)
            capped = " (capped by --max-vram)" if self.vram_bytes < detected else ""
            log.info("memory for models: %.1f GB from %s%s", self.vram_bytes / 1e9, source,
                     capped)
        self.home.acquire()
        self.identity = Identity.load_or_create(self.home.path)
        log.info("node id: %s", self.identity.node_id)

    # --- what the API and console read ---
    def role(self) -> str:
        if self.config.client:
            return "client"
        if self.plan is not None and self.identity is not None \
                and self.plan.host == self.identity.node_id:
            return "host"
        return "worker"

    def upstream(self) -> Upstream:
        if self.llama is not None and self.llama.url is not None:
            return Upstream(self.llama.url)
        if self.plan is not None and self.plan.mode == "waiting":
            return Upstream(None, self.plan.reason)
        if self.llama is not None:
            return Upstream(None, f"the model {self.model.name if self.model else ''} is "
                                  "still loading")
        return Upstream(None, "no host is ready")

    def status(self) -> dict[str, Any]:
        llama = self.llama
        return build_status(
            node_id=self.identity.node_id if self.identity else "",
            token="",
            role=self.role(),
            host_id=self.plan.host if self.plan else None,
            llama_ready=bool(llama and llama.ready),
            model=self.model.name if self.model else None,
            draft=None,
            api_port=self.config.api_port,
            console_port=self.config.console_port,
            vram_bytes=self.vram_bytes,
            peers=[],
            plan=plan_json(self.plan, list(llama.plan.rpc) if llama else []),
            state=self.state,
            extra={
                "llama_server": {"pid": llama.pid, "port": llama.port,
                                 "load_seconds": llama.load_seconds} if llama else None,
                "api_in_flight": self.api.in_flight,
                "console_streams": self.console.open_streams,
            },
        )

    def _changed(self) -> None:
        if self.llama is not None:
            self.state = "running" if self.llama.ready else "loading"
        self.changes.bump()

    # --- lifecycle ---
    async def _serve(self, app: web.Application, port: int, what: str, flag: str) -> None:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        try:
            await web.TCPSite(runner, self.config.listen_host, port).start()
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"{what} port {port} is already in use: stop what holds it "
                                f"or choose another with {flag}") from None
            raise UserError(f"cannot listen on {what} port {port}: {err.strerror}") from None

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; then stop every child and every listener."""
        try:
            await self._serve(self.api.app(), self.config.api_port, "API", "--port")
            if self.config.console_port is not None:
                await self._serve(self.console.app(), self.config.console_port, "console",
                                  "--console PORT")
            self._replan()
            api = f"http://127.0.0.1:{self.config.api_port}/v1"
            log.info("API: %s", api)
            if self.config.console_port is not None:
                log.info("console: http://127.0.0.1:%d", self.config.console_port)
            await stop.wait()
        finally:
            await self.shutdown()

    def _replan(self) -> None:
        assert self.identity is not None
        if self.config.client or self.model is None or self.engine is None:
            return
        me = Candidate(self.identity.node_id, "host", self.vram_bytes)
        plan = make_plan(me, [], self.model.size_bytes, self.config.split)
        if plan == self.plan:
            return
        self.plan = plan
        if plan.mode == "waiting":
            log.warning("%s", plan.reason)
            self.state = "waiting"
            self.changes.bump()
            return
        llama_plan = LlamaPlan(model=self.model.path, alias=self.model.name,
                               extra=self.config.llama_args)
        self.llama = LlamaServer(self.engine, llama_plan, self.home.logs / "llama-server.log",
                                 self._announce_ready)
        log.info("loading %s solo (llama-server log: %s)", self.model.name,
                 self.home.logs / "llama-server.log")
        self.state = "loading"
        self.llama.start()
        self.changes.bump()

    def _announce_ready(self) -> None:
        if self.llama is not None and self.llama.ready:
            log.info("ready: %s answers on http://127.0.0.1:%d/v1", self.model.name
                     if self.model else "model", self.config.api_port)
        self._changed()

    async def shutdown(self) -> None:
        self.state = "stopping"
        if self.llama is not None:
            await self.llama.stop()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self.home.release()


async def run_node(config: NodeConfig) -> None:
    node = Node(config)
    node.prepare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)
