"""Loopback servers, a plain TCP upstream and a one-upstream router for relay tests (the
node's own connects also count connections per llama-server:
`inference.generation.counted_tcp_connect`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from mesh_llm.api.name_match import ApiError, ServedModel, models_listing
from mesh_llm.api.proxy import Upstream


def tcp_upstream(host: str, port: int) -> Upstream:
    """An upstream that opens a new TCP connection to host:port per request."""
    async def connect(protocol: asyncio.Protocol) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: protocol, host, port)
    return Upstream(connect, key=f"tcp {host}:{port}")


async def serve_on_loopback(app: web.Application) -> web.AppRunner:
    """Run `app` on 127.0.0.1 at a free port (`runner.addresses[0][1]`); `cleanup()` ends it."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


class OneUpstream:
    """The API's router (api.proxy.ModelRouter) for a mesh of one model served by whatever
    `upstream()` is now: every request reaches it, /health follows it, and /v1/models
    answers `listing()` (when it says None: the one model, ready while the upstream is)."""

    def __init__(self, upstream: Callable[[], Upstream], name: str = "m",
                 listing: Callable[[], dict[str, Any] | None] | None = None) -> None:
        self._upstream = upstream
        self._listing = listing
        self.name = name
        self.counted: list[str] = []

    def _model(self) -> ServedModel:
        return ServedModel(self.name, "fp-" + self.name,
                           ready=self._upstream().connect is not None)

    def resolve(self, requested: object) -> ServedModel | ApiError:
        return replace(self._model(), ready=True)  # the relay waits for the upstream

    def upstream_for(self, model: ServedModel) -> Upstream:
        return self._upstream()

    def listing(self) -> dict[str, Any]:
        given = self._listing() if self._listing is not None else None
        return given if given is not None else models_listing([self._model()])

    def unhealthy(self) -> ApiError | None:
        upstream = self._upstream()
        return None if upstream.connect is not None else ApiError(503, upstream.reason)

    def count(self, model: ServedModel) -> None:
        self.counted.append(model.name)
