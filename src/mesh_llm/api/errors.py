"""OpenAI-style JSON error bodies, so every failure a client sees is parseable."""

from __future__ import annotations

from aiohttp import web

_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found",
          408: "timeout", 503: "unavailable"}


def json_error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status)


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
async def json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Turn aiohttp's plain-text HTTP errors (404, 405, 413 …) into JSON bodies."""
    return await answered_in_json(request, handler)
