"""One check for request bodies, shared by the API and the console (its chat and its login):
a body is strict UTF-8 JSON or the client gets a 400 that says why — never a 500 from the
decoder."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .errors import json_error

BODY_TIMEOUT_S = 30.0  # a client that stops sending half-way through a body is dropped


class BodyError(ValueError):
    """The body cannot be used; the message is safe to show the client."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def response(self) -> web.Response:
        """The JSON error the client gets."""
        return json_error(self.status, str(self), "invalid_request_error")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json(raw: bytes) -> Any:
    """Parse `raw` as one JSON value. Refuses what llama-server would choke on too:
    non-UTF-8 bytes (json.loads would guess UTF-16/32), NaN/Infinity, and nesting too
    deep for the decoder (RecursionError)."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise BodyError("request body is not valid JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise BodyError(f"request body is not valid JSON: {_short(err)}") from None


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """`decode_json`, and the value must be an object (every route's body is one)."""
    value = decode_json(raw)
    if not isinstance(value, dict):
        raise BodyError("request body must be a JSON object")
    return value


async def read_body(request: web.Request) -> bytes:
    """The whole body, within the app's size limit (413 from aiohttp) and BODY_TIMEOUT_S."""
    try:
        return await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise BodyError(f"request body not received within {BODY_TIMEOUT_S:.0f} s",
                        408) from None
    except RequestPayloadError as err:  # bad chunking, a body cut short
        raise BodyError(f"malformed request body: {_short(err)}") from None


async def read_json_object(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The body as received and as parsed: a JSON object, or a ``BodyError`` saying why not."""
    raw = await read_body(request)
    return raw, decode_json_object(raw)


def _short(err: Exception) -> str:
    text = str(err)
    return text if len(text) <= 200 else text[:197] + "..."
