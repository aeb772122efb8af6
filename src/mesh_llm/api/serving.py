"""The HTTP server the API and the console run on: aiohttp's, with hardened edges.

What aiohttp does by itself that we change (checked against aiohttp 3.14.5,
web_protocol.RequestHandler and web_server.Server; pyproject.toml allows 3.14.x only, and
tests/unit/test_private_apis.py checks the private parts used here):
- A malformed request line or header makes `RequestHandler.handle_error` log
  "Error handling request" with a traceback and answer text/plain. Here it logs one debug
  line and answers the contract's JSON error (and closes the connection, as before).
- HTTP errors raised before the app's middlewares run (the `Expect:` handler's 417, a
  route lookup failure) reach the client as text/plain: the server's request handler
  turns every HTTP error into JSON, whatever raised it.
- An idle keep-alive connection, or one that never finishes its request head, holds a
  file descriptor for an hour (keepalive_timeout 3630 s): bounded to HEAD_TIMEOUT_S. The
  keep-alive timer runs from the connection's start and after each answer, and closes
  the connection only while it waits for a request head, so it bounds both.
- Any one address may hold MAX_CONNECTIONS_PER_IP connections; more are reset at once, so
  one client cannot use up the process's file descriptors and lock everyone else out.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from typing import Any

from aiohttp import web, web_protocol, web_server

from .errors import answered_in_json, error_kind, json_error

log = logging.getLogger("mesh_llm.http")

HEAD_TIMEOUT_S = 10.0
MAX_CONNECTIONS_PER_IP = 256
_FALLBACK_NOFILE = 65536  # where the hard limit is "unlimited" (macOS refuses that as soft)


class EdgeRequestHandler(web_protocol.RequestHandler):
    """One client connection: admitted by its address's count, errors answered in JSON."""

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._edge.admit(ip):
            transport.abort()  # frees the descriptor now; aiohttp never saw the connection
            return
        self._ip = ip
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._ip is None:
            return  # refused in connection_made: nothing was set up
        self._edge.release(self._ip)
        self._ip = None
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp calls this for requests it cannot parse (400) and for exceptions that
        escape a handler (500); the reply closes the connection."""
        if status >= 500:
            log.warning("internal error answering %s: %r", _where(request), exc)
            log.debug("internal error", exc_info=exc)
        else:
            log.debug("bad request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: cannot send an error")
        text = _first_line(message) if status < 500 and message else (
            "malformed HTTP request" if status < 500 else "internal error")
        response = json_error(status, text, error_kind(status))
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's other "unhandled" reports: one line, the traceback only at debug."""
        exc = kw.get("exc_info")
        log.warning(*(args or ("aiohttp reported an error",)))
        if exc is not None:
            log.debug("details", exc_info=exc)


class EdgeServer(web_server.Server):
    """aiohttp's Server, making EdgeRequestHandlers and counting connections per address."""

    def __init__(self, base: web_server.Server, max_per_ip: int) -> None:
        super().__init__(_json_http_errors(base.request_handler),
                         request_factory=base.request_factory,
                         handler_cancellation=base.handler_cancellation,
                         loop=base._loop, **base._kwargs)
        self.max_per_ip = max_per_ip
        self.per_ip: Counter[str] = Counter()
        self.refused = 0

    def admit(self, ip: str) -> bool:
        if self.per_ip[ip] >= self.max_per_ip:
            self.refused += 1
            if self.refused in (1, 100) or self.refused % 10_000 == 0:
                log.warning("refusing connections from %s: it already holds %d (refused %d "
                            "so far)", ip, self.max_per_ip, self.refused)
            return False
        self.per_ip[ip] += 1
        return True

    def release(self, ip: str) -> None:
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def __call__(self) -> EdgeRequestHandler:
        return EdgeRequestHandler(self, loop=self._loop, **self._kwargs)


class EdgeRunner(web.AppRunner):
    """web.AppRunner serving through an EdgeServer, with short idle/head timeouts."""

    def __init__(self, app: web.Application, *, head_timeout_s: float = HEAD_TIMEOUT_S,
                 max_per_ip: int = MAX_CONNECTIONS_PER_IP, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", head_timeout_s)
        super().__init__(app, **kwargs)
        self._max_per_ip = max_per_ip

    async def _make_server(self) -> web_server.Server:
        return EdgeServer(await super()._make_server(), self._max_per_ip)


def _json_http_errors(handler):  # type: ignore[no-untyped-def]
    """The app's whole request handling, with any HTTP error answered in JSON."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        return await answered_in_json(request, handler)

    return handle


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (connections are file descriptors);
    returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, _FALLBACK_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, err)
    log.info("open-file limit: %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
    return soft


def _where(request: Any) -> str:
    try:
        return f"{request.method} {request.path}"
    except Exception:  # a request aiohttp could not parse has little to show
        return "a request"


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "malformed HTTP request"
    return line if len(line) <= 200 else line[:197] + "..."
