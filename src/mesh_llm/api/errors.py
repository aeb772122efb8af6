"""OpenAI-style JSON error bodies, so every failure a client sees is parseable; on the
Anthropic routes (api/routes.py) the mesh's own errors are re-shaped into Anthropic's."""

from __future__ import annotations

import json

from aiohttp import web

from .routes import anthropic_error_body, dialect_of

_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found",
          408: "timeout", 503: "unavailable"}


class MeshError(web.Response):
    """An error the mesh itself answers (not one relayed from llama-server): marked, so
    that `dialect_errors` can re-shape it for the route's callers."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        body = {"error": {"message": message, "type": kind, "code": status}}
        super().__init__(status=status, text=json.dumps(body), content_type="application/json")
        self.message = message


def json_error(status: int, message: str, kind: str) -> web.Response:
    return MeshError(status, message, kind)


def error_kind(status: int) -> str:
    if status in _KINDS:
        return _KINDS[status]
    return "invalid_request_error" if status < 500 else "server_error"


def from_http_exception(exc: web.HTTPException, method: str, path: str) -> web.Response:
    """The JSON twin of one of aiohttp's plain-text HTTP errors (404, 405, 413, 417 …)."""
    if exc.status == 404:
        message = f"no route {method} {path}"
    elif exc.status == 413:
        message = "request body too large"
    elif exc.status == 405:
        message = f"method {method} is not allowed on {path}"
    else:
        message = exc.reason
    response = json_error(exc.status, message, error_kind(exc.status))
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


async def answered_in_json(request: web.BaseRequest, handler):  # type: ignore[no-untyped-def]
    """`handler(request)`, with an HTTP error it raises answered as a JSON body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc, request.method, request.path)


@web.middleware
async def dialect_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """The mesh's own errors on an Anthropic route (401, 403, 404, 413, 503 ...) in
    Anthropic's shape, so Claude Code and the SDKs show the reason; outermost, so errors
    from every other middleware are re-shaped too. llama-server's own answers pass as is."""
    response = await answered_in_json(request, handler)
    if not isinstance(response, MeshError) or dialect_of(request.path) != "anthropic":
        return response
    out = web.json_response(anthropic_error_body(response.status, response.message),
                            status=response.status)
    for name in ("Allow", "WWW-Authenticate"):
        if name in response.headers:
            out.headers[name] = response.headers[name]
    return out


@web.middleware
async def json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Turn aiohttp's plain-text HTTP errors (404, 405, 413 …) into JSON bodies."""
    return await answered_in_json(request, handler)
