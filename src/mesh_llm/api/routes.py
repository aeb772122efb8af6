"""The API's routes as one table: every POST route is relayed to the llama-server of the
request's `model` the same way; only the dialect of the mesh's own errors differs.

Why a table: the node's API (proxy.py) and the host's end of the QUIC API tunnel
(tunnel_gate.py) must agree on exactly which routes reach llama-server; llama-server
has other endpoints (`/props`, `/slots`, `/metrics`) that are not the mesh's to hand out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

Dialect = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class Route:
    """One relayed POST route: its path and the shape its callers expect errors in."""

    path: str
    dialect: Dialect = "openai"


RELAYED: tuple[Route, ...] = (
    Route("/v1/chat/completions"),
    Route("/v1/completions"),
    Route("/v1/messages", "anthropic"),
    Route("/v1/messages/count_tokens", "anthropic"),
    Route("/v1/responses"),
    Route("/v1/embeddings"),
    Route("/v1/rerank"),
)
POST_PATHS: tuple[str, ...] = tuple(r.path for r in RELAYED)
GET_PATHS: tuple[str, ...] = ("/v1/models", "/health")
_BY_PATH = {r.path: r for r in RELAYED}

# Anthropic's error types (its API's documented list) by status; the rest map below.
_ANTHROPIC_KINDS = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error"}


def dialect_of(path: str) -> Dialect:
    """The error dialect of a request path; paths outside the table speak OpenAI's."""
    route = _BY_PATH.get(path)
    return route.dialect if route is not None else "openai"


def anthropic_kind(status: int) -> str:
    if status in _ANTHROPIC_KINDS:
        return _ANTHROPIC_KINDS[status]
    return "invalid_request_error" if status < 500 else "api_error"


def anthropic_error_body(status: int, message: str) -> dict[str, object]:
    """`{"type": "error", "error": {"type": ..., "message": ...}}`: what Anthropic's
    clients (the SDKs, Claude Code) parse and show."""
    return {"type": "error", "error": {"type": anthropic_kind(status), "message": message}}


def stream_error_event(dialect: Dialect, message: str) -> bytes:
    """The last SSE event of a stream the host broke off, in the caller's dialect."""
    if dialect == "anthropic":
        return (f"event: error\ndata: {json.dumps(anthropic_error_body(503, message))}\n\n"
                ).encode()
    return f"data: {json.dumps({'error': {'message': message, 'type': 'unavailable'}})}\n\n" \
        .encode()
