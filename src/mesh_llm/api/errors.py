"""OpenAI-style JSON error bodies, so every failure a client sees is parseable."""

from __future__ import annotations

from aiohttp import web


def json_error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status)


@web.middleware
async def json_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Turn aiohttp's plain-text HTTP errors (404, 405, 413 …) into JSON bodies."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "not_found" if exc.status == 404 else "invalid_request_error"
        message = exc.reason if exc.status != 404 else f"no route {request.method} {request.path}"
        if exc.status == 413:
            message = "request body too large"
        return json_error(exc.status, message, kind)
