"""The console on :3131: the page, the status JSON, live updates over SSE, and chat."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from ..api.errors import json_error, json_errors
from ..api.proxy import ApiProxy
from ..changes import ChangeFeed

log = logging.getLogger("mesh_llm.console")

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0
RETRY_MS = 1000  # how soon a browser's EventSource reconnects after the node went away
MAX_CHAT_BYTES = 1024 * 1024
CHAT_PATH = "/v1/chat/completions"


def chat_body_error(body: Any) -> str | None:
    """Why a parsed /api/chat body cannot be relayed, or None when it can."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "`messages` must be a non-empty list"
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages[{i}] must be an object with a string `role`"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages[{i}].content must be a string or a list of parts"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "`stream` must be true or false"
    return None


class Console:
    """Serves what the browser needs; all state comes from `status()` and `changes`."""

    def __init__(self, status: Callable[[], dict[str, Any]], changes: ChangeFeed,
                 api: ApiProxy, heartbeat_s: float = HEARTBEAT_S) -> None:
        self._status = status
        self._changes = changes
        self._api = api
        self._heartbeat_s = heartbeat_s
        self.open_streams = 0
        self._streams: set[asyncio.Task[Any]] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_CHAT_BYTES, middlewares=[json_errors])
        app.router.add_get("/", self.index)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/events", self.events)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_static("/static/", STATIC, show_index=False)
        app.on_shutdown.append(self._end_streams)
        return app

    async def _end_streams(self, _app: web.Application) -> None:
        """Event streams never end by themselves: end them, or shutdown waits on them."""
        for task in list(self._streams):
            task.cancel()

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
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        self.open_streams += 1
        try:
            await out.write(f"retry: {RETRY_MS}\n\n".encode())
            seen = -1
            while True:
                if seen != self._changes.version:
                    seen = self._changes.version
                    payload = json.dumps(self._status(), separators=(",", ":"))
                    await out.write(f"event: status\ndata: {payload}\n\n".encode())
                elif not await self._changes.wait_newer(seen, self._heartbeat_s):
                    await out.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the browser went away (the node runs with handler cancellation, so rare)
        finally:
            self.open_streams -= 1
            self._streams.discard(task)
        return out

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """The page's chat: a checked body, streamed by default, relayed like the API's."""
        if not same_origin(request):
            return json_error(403, "cross-origin chat requests are refused", "permission_error")
        raw = await request.read()  # over MAX_CHAT_BYTES: 413 JSON from the middleware
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            return json_error(400, f"request body is not valid JSON: {err}",
                              "invalid_request_error")
        problem = chat_body_error(body)
        if problem is not None:
            return json_error(400, problem, "invalid_request_error")
        body.setdefault("stream", True)
        return await self._api.relay(request, CHAT_PATH, json.dumps(body).encode())


def same_origin(request: web.Request) -> bool:
    """A browser's POST from another site carries its Origin; tools like curl send none."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host
