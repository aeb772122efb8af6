"""The console on :3131: the page, the status JSON, live updates over SSE, and chat."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..api.errors import json_errors
from ..api.proxy import ApiProxy
from ..changes import ChangeFeed

log = logging.getLogger("mesh_llm.console")

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0
MAX_CHAT_BYTES = 1024 * 1024


class Console:
    """Serves what the browser needs; all state comes from `status()` and `changes`."""

    def __init__(self, status: Callable[[], dict[str, Any]], changes: ChangeFeed,
                 api: ApiProxy, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._status = status
        self._changes = changes
        self._api = api
        self._heartbeat_s = heartbeat_s
        self.open_streams = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CHAT_BYTES, middlewares=[json_errors])
        app.router.add_get("/", self.index)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/events", self.events)
        app.router.add_post("/api/chat", self._api.relay_post)
        app.router.add_static("/static/", STATIC, show_index=False)
        return app

    async def index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response(self._status(), headers={"Cache-Control": "no-cache"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """SSE: the status now, again on every change, and a comment now and then."""
        out = web.StreamResponse(headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })
        await out.prepare(request)
        self.open_streams += 1
        try:
            seen = -1
            while True:
                if seen != self._changes.version:
                    seen = self._changes.version
                    payload = json.dumps(self._status(), separators=(",", ":"))
                    await out.write(f"event: status\ndata: {payload}\n\n".encode())
                elif not await self._changes.wait_newer(seen, self._heartbeat_s):
                    await out.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the browser went away; with handler cancellation this is rare
        finally:
            self.open_streams -= 1
        return out
