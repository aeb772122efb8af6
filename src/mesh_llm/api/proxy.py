"""The OpenAI-compatible API every node serves, relayed to whichever llama-server is the host's.

The relay does not parse responses: bytes pass through as they arrive, so streamed
tokens are not delayed and llama-server's `timings` reach the client unchanged.
Where the upstream is depends on the node's role (its own llama-server, or a local
end of a tunnel to the host); the proxy only asks `upstream()` per request.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .errors import json_error, json_errors

log = logging.getLogger("mesh_llm.api")

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600)
POST_ROUTES = ("/v1/chat/completions", "/v1/completions")


@dataclass(frozen=True)
class Upstream:
    """Where requests go now: a base URL, or why there is none."""

    url: str | None
    reason: str = "no host is ready"


class ApiProxy:
    """aiohttp handlers for the OpenAI routes, sharing one pooled client session."""

    def __init__(self, upstream: Callable[[], Upstream], *, api_key: str | None = None) -> None:
        self._upstream = upstream
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None
        self.in_flight = 0

    def app(self) -> web.Application:
        middlewares = [json_errors] + ([self._auth] if self._api_key else [])
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.relay_get)
        for path in POST_ROUTES:
            app.router.add_post(path, self.relay_post)
        app.on_cleanup.append(self._close)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self._api_key}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return json_error(401, "missing or wrong API key (Authorization: Bearer KEY)",
                              "authentication_error")
        return await handler(request)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(connector=connector, timeout=UPSTREAM_TIMEOUT,
                                                  auto_decompress=False)
        return self._session

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def health(self, _request: web.Request) -> web.Response:
        upstream = self._upstream()
        if upstream.url is None:
            return json_error(503, upstream.reason, "unavailable")
        return web.json_response({"status": "ok"})

    async def relay_get(self, request: web.Request) -> web.StreamResponse:
        return await self.relay(request, request.path, None)

    async def relay_post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            return json_error(400, f"request body is not valid JSON: {err}",
                              "invalid_request_error")
        if not isinstance(parsed, dict):
            return json_error(400, "request body must be a JSON object", "invalid_request_error")
        return await self.relay(request, request.path, body)

    async def relay(self, request: web.Request, path: str,
                    body: bytes | None) -> web.StreamResponse:
        """Send one request upstream and pass the answer back as it arrives."""
        upstream = self._upstream()
        if upstream.url is None:
            return json_error(503, upstream.reason, "unavailable")
        headers = {"Content-Type": "application/json",
                   "Accept": request.headers.get("Accept", "*/*")}
        self.in_flight += 1
        try:
            for attempt in (1, 2):
                try:
                    return await self._forward(request, upstream.url + path, body, headers)
                except aiohttp.ServerDisconnectedError as err:
                    # A pooled keep-alive connection the server had already closed: nothing
                    # reached the client yet, so one fresh try is safe.
                    if attempt == 2:
                        raise
                    log.debug("upstream closed a pooled connection (%s); retrying", err)
                except aiohttp.ClientConnectorError:
                    # The upstream went away between our look and our connect (a re-plan
                    # stops llama-server): answer with where things stand now.
                    now = self._upstream()
                    if now.url is None:
                        return json_error(503, now.reason, "unavailable")
                    if now.url == upstream.url or attempt == 2:
                        raise
                    upstream = now
            raise AssertionError("unreachable")
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("upstream %s failed: %s", upstream.url, err)
            return json_error(502, f"the host's llama-server did not answer: {err}",
                              "unavailable")
        finally:
            self.in_flight -= 1

    async def _forward(self, request: web.Request, url: str, body: bytes | None,
                       headers: dict[str, str]) -> web.StreamResponse:
        async with self.session().request(
            request.method if body is None else "POST", url, data=body, headers=headers,
        ) as resp:
            content_type = resp.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                data = await resp.content.read(MAX_RESPONSE_BYTES)
                return web.Response(status=resp.status, body=data,
                                    headers={"Content-Type": content_type})
            return await self._stream(request, resp, content_type)

    async def _stream(self, request: web.Request, resp: aiohttp.ClientResponse,
                      content_type: str) -> web.StreamResponse:
        out = web.StreamResponse(status=resp.status, headers={
            "Content-Type": content_type, "Cache-Control": "no-cache",
        })
        await out.prepare(request)
        try:
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
        except ConnectionResetError:
            # The client went away: dropping the upstream connection stops the generation.
            resp.close()
            return out
        except asyncio.CancelledError:
            resp.close()
            raise
        except (aiohttp.ClientError, TimeoutError) as err:
            log.warning("upstream stream broke off: %s", err)
            error = {"error": {"message": f"the host's stream broke off: {err}",
                               "type": "unavailable"}}
            await out.write(f"data: {json.dumps(error)}\n\n".encode())
        await out.write_eof()
        return out
