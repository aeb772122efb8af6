"""The console on :3131: the page, the status JSON, live updates over SSE, chat, and the
chat's model list (whatever the node's API answers at GET /v1/models)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from ..api.errors import json_error, json_errors
from ..api.guard import LOOPBACK, AllowedHosts
from ..api.jsonbody import BodyError, decode_json, read_body, read_json_object
from ..api.metrics import Scrape, metrics_handler
from ..api.middleware import host_guard
from ..api.proxy import ApiProxy
from ..changes import ChangeFeed
from .auth import COOKIE, ConsoleKey, login_page
from .charts import Sampler

log = logging.getLogger("mesh_llm.console")

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0
RETRY_MS = 1000  # how soon a browser's EventSource reconnects after the node went away
MAX_CHAT_BYTES = 1024 * 1024
CHAT_PATH = "/v1/chat/completions"


def chat_body_error(body: dict[str, Any]) -> str | None:
    """Why a parsed /api/chat body cannot be relayed, or None when it can."""
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
    if body.get("model") is not None and not isinstance(body["model"], str):
        return "`model` must be a string naming a model (or left out for the mesh's default)"
    return None


class Console:
    """Serves what the browser needs; all state comes from `status()` and `changes`.

    With `api_key` (a node that listens beyond loopback) every route but the page and the
    login needs that key, as a Bearer header or as the session cookie the login sets."""

    def __init__(self, status: Callable[[], dict[str, Any]], changes: ChangeFeed,
                 api: ApiProxy, heartbeat_s: float = HEARTBEAT_S, *,
                 api_key: str | None = None, allowed: AllowedHosts = LOOPBACK,
                 scrape: Scrape | None = None, sampler: Sampler | None = None) -> None:
        self._status = status
        self._scrape = scrape  # GET /metrics
        self._sampler = sampler  # the charts' samples, sent on the event stream
        self._sampling: asyncio.Task[None] | None = None
        self._changes = changes
        self._api = api
        self._heartbeat_s = heartbeat_s
        self._key = ConsoleKey(api_key) if api_key else None
        self._allowed = allowed
        self.open_streams = 0
        self._streams: set[asyncio.Task[Any]] = set()

    def app(self) -> web.Application:
        middlewares = [json_errors, host_guard(self._allowed)]
        if self._api.metrics is not None:  # the chat's answers count with the API's
            middlewares.insert(0, self._api.metrics.middleware(frozenset({"/api/chat"})))
        if self._key is not None:
            middlewares.append(self._login_required)
        app = web.Application(client_max_size=MAX_CHAT_BYTES, middlewares=middlewares)
        if self._scrape is not None:
            app.router.add_get("/metrics", metrics_handler(self._scrape))
        if self._sampler is not None:
            app.on_startup.append(self._start_sampling)
        app.router.add_get("/", self.index)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/session", self.session)
        app.router.add_get("/api/events", self.events, allow_head=False)  # a stream: no HEAD
        app.router.add_post("/api/chat", self.chat)
        app.router.add_get("/api/models", self.models, allow_head=False)  # relayed: no HEAD
        if self._key is not None:
            app.router.add_post("/login", self.login)
        app.router.add_static("/static/", STATIC, show_index=False)
        app.on_shutdown.append(self._end_streams)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return self._key is None or self._key.allows(request.headers.get("Authorization"),
                                                     request.cookies.get(COOKIE))

    @web.middleware
    async def _login_required(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        """The page answers with the login form and /login checks the key itself; every
        other route needs the key."""
        if request.path in ("/", "/login") or self._authorised(request):
            return await handler(request)
        return json_error(401, "log in first: this console needs the node's API key "
                          "(Authorization: Bearer KEY, or the login form at /)",
                          "authentication_error")

    async def login(self, request: web.Request) -> web.Response:
        """The form's POST (or JSON {"key": ...}): right key → session cookie and back to
        the page; wrong key → 401 (the form again for a browser, JSON for a tool)."""
        assert self._key is not None
        try:
            given = _given_key(await read_body(request), request.content_type)
        except BodyError as err:
            return err.response()
        if given is None or not self._key.key_matches(given):
            log.warning("console login with a wrong key from %s", request.remote)
            if "text/html" in request.headers.get("Accept", ""):
                return web.Response(status=401, text=login_page("Wrong key: try again."),
                                    content_type="text/html",
                                    headers={"Cache-Control": "no-store"})
            return json_error(401, "wrong API key", "authentication_error")
        response = web.Response(status=303, headers={"Location": "/",
                                                     "Cache-Control": "no-store"})
        response.set_cookie(COOKIE, self._key.session, httponly=True, samesite="Strict",
                            path="/")
        return response

    async def session(self, _request: web.Request) -> web.Response:
        """200 for a viewer who may use the console (the page asks after its stream is
        refused, to tell a lapsed login from a node that went away)."""
        return web.json_response({"authenticated": True,
                                  "login_required": self._key is not None},
                                 headers={"Cache-Control": "no-store"})

    async def _end_streams(self, _app: web.Application) -> None:
        """Event streams never end by themselves: end them, or shutdown waits on them."""
        for task in list(self._streams):
            task.cancel()
        if self._sampling is not None:
            self._sampling.cancel()

    async def _start_sampling(self, _app: web.Application) -> None:
        assert self._sampler is not None
        self._sampling = asyncio.get_running_loop().create_task(self._sampler.run())

    async def index(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return web.Response(text=login_page(), content_type="text/html",
                                headers={"Cache-Control": "no-store"})
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response(self._status(), headers={"Cache-Control": "no-cache"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """SSE: the status now, again on every change, and a comment now and then; with
        charts, their history at once (`samples`) and each new sample as it is taken."""
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
            seen, sampled = -1, -1
            ring = self._sampler.ring if self._sampler is not None else None
            wait_s = min(self._heartbeat_s, 1.0) if ring is not None else self._heartbeat_s
            while True:
                if seen != self._changes.version:
                    seen = self._changes.version
                    payload = json.dumps(self._status(), separators=(",", ":"))
                    await out.write(f"event: status\ndata: {payload}\n\n".encode())
                elif ring is not None and sampled != ring.seq:
                    whole = sampled < 0  # a new page: everything kept, to replace
                    new = ring.history() if whole else ring.since(sampled)
                    sampled = ring.seq
                    payload = json.dumps({"history": whole, "samples": new},
                                         separators=(",", ":"))
                    await out.write(f"event: samples\ndata: {payload}\n\n".encode())
                elif not await self._changes.wait_newer(seen, wait_s) and ring is None:
                    await out.write(b": keep-alive\n\n")
        except ConnectionResetError:
            pass  # the browser went away (the node runs with handler cancellation, so rare)
        finally:
            self.open_streams -= 1
            self._streams.discard(task)
        return out

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """The page's chat: a checked body, streamed by default, relayed like the API's."""
        try:  # over MAX_CHAT_BYTES: 413 JSON from the middleware
            _, body = await read_json_object(request)
        except BodyError as err:
            return err.response()
        problem = chat_body_error(body)
        if problem is not None:
            return json_error(400, problem, "invalid_request_error")
        body.setdefault("stream", True)
        return await self._api.relay(request, CHAT_PATH, json.dumps(body).encode())

    async def models(self, request: web.Request) -> web.StreamResponse:
        """The chat's model picker: what this node's API answers at GET /v1/models. The
        console's guards stand in for the API's: the page is already let in."""
        return await self._api.models(request)


def _given_key(raw: bytes, content_type: str) -> str | None:
    """The key from a login body: form-encoded (the page's form) or JSON."""
    if content_type == "application/json":
        value = decode_json(raw)
        key = value.get("key") if isinstance(value, dict) else None
        return key if isinstance(key, str) else None
    try:
        fields = parse_qs(raw.decode("utf-8"), max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise BodyError("the login form must be UTF-8 form fields") from None
    keys = fields.get("key", [])
    return keys[0] if len(keys) == 1 else None
