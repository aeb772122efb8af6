"""A serving node's ggml-rpc-server: the worker half of a split, on loopback only.

It is reached from other machines only through the mesh's RPC tunnel streams.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .engine import Engine
from .processes import LoopbackServer
from .rpc_wire import RpcVersion, RpcWireError, probe_server_version

log = logging.getLogger("mesh_llm.rpc")

PROBE_INTERVAL_S = 0.05


def rpc_server_argv(engine: Engine, port: int, threads: int, device: str | None) -> list[str]:
    assert engine.rpc_server is not None
    argv = [str(engine.rpc_server), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads)]
    if device:
        argv += ["-d", device]
    return argv


class RpcServer(LoopbackServer):
    """One supervised ggml-rpc-server; `ready` once it answers a HELLO."""

    def __init__(self, engine: Engine, log_path: Path, on_change: Callable[[], None],
                 device: str | None = None) -> None:
        super().__init__("ggml-rpc-server", log_path, on_change)
        self.engine = engine
        self.version: RpcVersion | None = None  # what the server says in its HELLO
        self._device = device

    def argv(self, port: int) -> list[str]:
        return rpc_server_argv(self.engine, port, os.cpu_count() or 1, self._device)

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Ready once it answers a HELLO; its protocol version decides who it may split with."""
        assert self.port is not None
        while proc.returncode is None:
            try:
                self.version = await probe_server_version("127.0.0.1", self.port)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                await asyncio.sleep(PROBE_INTERVAL_S)
                continue
            except RpcWireError as err:
                log.error("ggml-rpc-server on 127.0.0.1:%d answered HELLO oddly: %s",
                          self.port, err)
                return
            break
        else:
            return
        log.info("ggml-rpc-server ready on 127.0.0.1:%d (RPC protocol %s)", self.port,
                 self.version)
        self._became_ready()
