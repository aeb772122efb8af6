"""The OpenAI-compatible API every node serves, relayed to whichever llama-server is the host's.

The relay reads only the response's HTTP framing (upstream.py): bodies pass through as
they arrive, so streamed tokens are not delayed and llama-server's `timings` reach the
client unchanged. Where the upstream is depends on the model a request names and where
that model runs (a llama-server of this node over loopback TCP, or its host's over a mesh
stream); the proxy asks its `ModelRouter` per request (the node's is node/router.py, the
host's side inference/hosting.py).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from ..changes import ChangeFeed
from .errors import dialect_errors, json_error
from .guard import LOOPBACK, AllowedHosts
from .http1 import ResponseHead, request_bytes
from .jsonbody import BodyError, decode_json_object, read_json_object
from .metrics import MODEL_KEY, ApiMetrics, Scrape, Timing, metrics_handler
from .middleware import host_guard
from .name_match import ApiError, ServedModel
from .request_counts import RouteCounts
from .routes import POST_PATHS, dialect_of, stream_error_event
from .upstream import (
    READ_TIMEOUT_S,
    Connect,
    Exchange,
    UpstreamClosed,
    UpstreamSilent,
    open_exchange,
)

log = logging.getLogger("mesh_llm.api")

QUEUE_WAIT_S = 30.0  # how long a request waits for a llama-server to be ready
MAX_QUEUED = 256  # requests waiting at once; past that, a 503 at once
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
POST_ROUTES = POST_PATHS  # every family llama-server speaks (routes.py's table)
MODELS_PATH = "/v1/models"


@dataclass(frozen=True)
class Upstream:
    """Where requests go now: how to reach the host's llama-server, or why we cannot."""

    connect: Connect | None
    reason: str = "no host is ready"
    key: str = ""  # names the target, so a retry can tell a new upstream from the same one
    headers: Mapping[str, str] = field(default_factory=dict)  # added to the request
    # The request's bytes from (path, headers, body), where the upstream is not a
    # llama-server (a shared server: its own path, key and model name; api/shared.py).
    build: Callable[[str, dict[str, str], bytes], bytes] | None = None


class ModelRouter(Protocol):
    """Which model a request names, and where it goes (the node's router implements it)."""

    def resolve(self, requested: object) -> ServedModel | ApiError:
        """The served model a request's `model` field names (api/model_names.resolve)."""
        ...

    def upstream_for(self, model: ServedModel) -> Upstream:
        """Where a request for `model` goes now, or why it cannot."""
        ...

    def listing(self) -> dict[str, Any]:
        """`GET /v1/models` for the whole mesh."""
        ...

    def unhealthy(self) -> ApiError | None:
        """None when a request for some model would be served now; else what a request
        without `model` is answered (`GET /health`)."""
        ...

    def count(self, model: ServedModel) -> None:
        """One request for `model` reached this node's API (gossiped per minute)."""
        ...


class ApiProxy:
    """aiohttp handlers for the API's routes (OpenAI's, Anthropic's); each request gets its
    own upstream connection."""

    def __init__(self, router: ModelRouter, *, api_key: str | None = None,
                 allowed: AllowedHosts = LOOPBACK, changes: ChangeFeed | None = None,
                 metrics: ApiMetrics | None = None, scrape: Scrape | None = None) -> None:
        self._router = router
        self._api_key = api_key
        self._allowed = allowed
        self._changes = changes  # wakes requests that wait for an upstream
        self.in_flight = 0
        self.queued = 0  # requests waiting for an upstream now
        self.requests = RouteCounts()  # per model and route, since start (status)
        self.metrics = metrics  # None: nothing measured (--no-metrics)
        self.scrape = scrape  # GET /metrics here too (--metrics-on-api)

    def app(self) -> web.Application:
        # dialect_errors answers every HTTP error in JSON (Anthropic's shape on its routes)
        middlewares = [dialect_errors, host_guard(self._allowed)]
        if self.metrics is not None:  # outermost: every answer counts, errors included
            middlewares.insert(0, self.metrics.middleware())
        if self._api_key:
            middlewares.append(self._auth)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
        app.router.add_get("/health", self.health)
        if self.scrape is not None:
            app.router.add_get("/metrics", metrics_handler(self.scrape))
        # No HEAD: relayed, llama-server's body-less answer would read as a broken one.
        app.router.add_get(MODELS_PATH, self.models, allow_head=False)
        for path in POST_ROUTES:
            app.router.add_post(path, self.relay_post)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        """`Authorization: Bearer KEY`, or `x-api-key: KEY` as Anthropic's clients send it."""
        assert self._api_key is not None
        bearer = request.headers.get("Authorization", "").encode()
        key = request.headers.get("x-api-key", "").encode()
        if not (hmac.compare_digest(bearer, f"Bearer {self._api_key}".encode())
                or hmac.compare_digest(key, self._api_key.encode())):
            return json_error(401, "missing or wrong API key (Authorization: Bearer KEY, "
                              "or x-api-key: KEY)", "authentication_error")
        return await handler(request)

    async def health(self, _request: web.Request) -> web.Response:
        """200 when some model of the mesh would be served now, else a 503 saying why."""
        problem = self._router.unhealthy()
        if problem is not None:
            return json_error(problem.status, problem.message, problem.kind)
        return web.json_response({"status": "ok"})

    async def models(self, _request: web.Request) -> web.StreamResponse:
        """Every model in the mesh, answered by this node (no llama-server knows them all).
        The console's model picker calls it too."""
        return web.json_response(self._router.listing())

    async def relay_post(self, request: web.Request) -> web.StreamResponse:
        try:
            body, parsed = await read_json_object(request)
        except BodyError as err:
            return err.response()
        return await self._relay_model(request, request.path, body, parsed.get("model"))

    async def relay(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        """Send one JSON request where its `model` says."""
        try:
            requested = decode_json_object(body).get("model")
        except BodyError as err:
            return err.response()
        return await self._relay_model(request, path, body, requested)

    async def _relay_model(self, request: web.Request, path: str, body: bytes,
                           requested: object) -> web.StreamResponse:
        """The request's model resolved (400/404 at once, 503 after the wait), then relayed
        to where that model runs."""
        loop = asyncio.get_running_loop()
        arrived = self.metrics.clock() if self.metrics is not None else 0.0
        deadline = loop.time() + QUEUE_WAIT_S
        found = await self._resolve(requested, deadline)
        if isinstance(found, ApiError):
            return json_error(found.status, found.message, found.kind)
        self.requests.add(found.name, path)
        request[MODEL_KEY] = found.name
        timing = self.metrics.timing(found.name, arrived) if self.metrics is not None else None
        router = self._router
        return await self._relay(request, path, body, lambda: router.upstream_for(found),
                                 deadline, timing)

    async def _resolve(self, requested: object, deadline: float) -> ServedModel | ApiError:
        """The model a request names; a known one without a ready host is waited for
        (woken by the change feed) until `deadline`, then its 503 is the answer."""
        found = self._router.resolve(requested)
        if isinstance(found, ServedModel):
            self._router.count(found)
        if not (isinstance(found, ApiError) and found.status == 503) or self._changes is None:
            return found
        if self.queued >= MAX_QUEUED:
            return ApiError(503, f"{found.message} (and {MAX_QUEUED} requests already wait)")
        router, changes = self._router, self._changes

        def settled() -> bool:
            nonlocal found
            found = router.resolve(requested)
            return not (isinstance(found, ApiError) and found.status == 503)

        self.queued += 1
        try:
            await changes.wait_until(settled, deadline - asyncio.get_running_loop().time())
        finally:
            self.queued -= 1
        if isinstance(found, ServedModel):
            self._router.count(found)
        return found

    async def _relay(self, request: web.Request, path: str, body: bytes,
                     pick: Callable[[], Upstream], deadline: float | None = None,
                     timing: Timing | None = None) -> web.StreamResponse:
        """Send one request upstream and pass the answer back as it arrives.

        With no upstream ready (a host loading, a re-plan, no host yet) the request waits
        for one, up to QUEUE_WAIT_S, in a queue of at most MAX_QUEUED; the 503 says why
        only when the wait runs out. A connection closed before one byte of answer is
        tried once more at once on a fresh connection (closed under us just as we sent the
        request; the routes relayed change no state, so sending again is safe). An
        upstream that refuses or closes before answering again is retried whenever the
        upstream changes (it was just replaced), within the same wait."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + QUEUE_WAIT_S
        upstream = await self._await_upstream(deadline, pick)
        if upstream.connect is None:
            return json_error(503, upstream.reason, "unavailable")
        headers = {"Content-Type": "application/json",
                   "Accept": request.headers.get("Accept", "*/*")}
        self.in_flight += 1
        fresh_retry = True
        try:
            while True:
                seen = self._changes.version if self._changes is not None else 0
                try:
                    return await self._forward(request, upstream.connect, path, body,
                                               {**headers, **upstream.headers}, upstream.build,
                                               timing)
                except OSError as err:
                    if _client_gone(request):
                        log.debug("client hung up (%s)", err)
                        return web.Response(status=499)
                    if fresh_retry and isinstance(err, UpstreamSilent):
                        fresh_retry = False
                        log.debug("upstream %s closed before answering (%s); trying a fresh "
                                  "connection", upstream.key, err)
                        continue
                    # Nothing answered: the upstream went away between our look and our
                    # connect (a re-plan stops llama-server). The same one again: wait for
                    # a change (within the deadline) before trying it once more.
                    if upstream.key == pick().key and not (
                            self._changes is not None and await self._changes.wait_newer(
                                seen, max(0.0, deadline - loop.time()))):
                        raise UpstreamClosed(f"cannot connect: {err}") from err
                    now = await self._await_upstream(deadline, pick)
                    if now.connect is None:
                        return json_error(503, now.reason, "unavailable")
                    log.debug("upstream %s refused (%s); retrying with %s", upstream.key, err,
                              now.key)
                    upstream = now
        except (UpstreamClosed, TimeoutError) as err:
            if _client_gone(request):
                log.debug("client hung up (%s)", err)
                return web.Response(status=499)
            log.warning("upstream %s failed: %s", upstream.key, err)
            return json_error(502, f"the host's llama-server did not answer: {err or 'timeout'}",
                              "unavailable")
        finally:
            self.in_flight -= 1

    async def _await_upstream(self, deadline: float, pick: Callable[[], Upstream]) -> Upstream:
        """The upstream now, or once one is ready (woken by the node's change feed), or
        the last word on why there is none when `deadline` passes or the queue is full."""
        upstream = pick()
        if upstream.connect is not None or self._changes is None:
            return upstream
        if self.queued >= MAX_QUEUED:
            return Upstream(None, f"{upstream.reason} (and {MAX_QUEUED} requests already wait)")
        def ready() -> bool:
            nonlocal upstream
            upstream = pick()
            return upstream.connect is not None

        self.queued += 1
        try:
            await self._changes.wait_until(ready, deadline - asyncio.get_running_loop().time())
        finally:
            self.queued -= 1
        return upstream

    async def _forward(self, request: web.Request, connect: Connect, path: str,
                       body: bytes, headers: dict[str, str],
                       build: Callable[[str, dict[str, str], bytes], bytes] | None = None,
                       timing: Timing | None = None) -> web.StreamResponse:
        raw = build(path, headers, body) if build is not None else \
            request_bytes("POST", "127.0.0.1", path, headers, body)
        exchange = await open_exchange(connect, raw, MAX_RESPONSE_BYTES)
        try:
            try:
                head = await asyncio.wait_for(exchange.head, READ_TIMEOUT_S)
            except UpstreamSilent:
                raise  # not one byte came back: the relay may send the request again
            except UpstreamClosed as err:
                raise ConnectionResetError(str(err)) from err  # nothing answered: retry
            if not head.content_type.startswith("text/event-stream"):
                data = await exchange.body()
                if timing is not None:
                    timing.whole(data, head.content_type)
                return web.Response(status=head.status, body=data,
                                    headers={"Content-Type": head.content_type})
            return await self._stream(request, exchange, head, timing)
        finally:
            exchange.close()

    async def _stream(self, request: web.Request, exchange: Exchange, head: ResponseHead,
                      timing: Timing | None = None) -> web.StreamResponse:
        out = web.StreamResponse(status=head.status, headers={
            "Content-Type": head.content_type, "Cache-Control": "no-cache",
        })
        out.enable_chunked_encoding()
        await out.prepare(request)  # sends the head now, so chunks may follow on the socket
        client = request.transport
        if client is None or client.is_closing():
            return out
        exchange.splice_chunked(client, timing)
        try:
            await exchange.wait_done()
        except UpstreamClosed as err:
            if client.is_closing():
                # The client went away: dropping the upstream connection stops generation.
                return out
            log.warning("upstream stream broke off: %s", err)
            await out.write(stream_error_event(dialect_of(request.path),
                                               f"the host's stream broke off: {err}"))
        finally:
            if timing is not None:
                timing.ended()
        await out.write_eof()
        return out


def _client_gone(request: web.Request) -> bool:
    """Whether the client hung up: its connection is closing or gone."""
    transport = request.transport
    return transport is None or transport.is_closing()
