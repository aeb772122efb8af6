"""The host's end of an HTTP tunnel lets through one request to one of the API's routes.

A peer's HTTP tunnel reaches the host's llama-server, which has endpoints of its own
(`/props`, `/slots`, ...) and no key: a member or a lite client may use the API, nothing else.
The gate sits in the tunnel's byte path (the relay's decoder seam): it reads the request
head (bounded), checks method and path, rewrites the head so the connection closes after
the answer, lets exactly the declared body through, and fails on anything more. What it
parsed (`RequestHead`) is kept for the router, so the head is read once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .routes import GET_PATHS, POST_PATHS

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024  # the API's own limit
ROUTES = frozenset({("GET", p) for p in GET_PATHS} | {("POST", p) for p in POST_PATHS})

_REQUEST_LINE = re.compile(rb"([A-Z]{1,10}) (/[!-~]{0,2047}) HTTP/1\.1")
_HEADER = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):[ \t]*([ -~\t\x80-\xff]{0,8192}?)[ \t]*")
_DROPPED = frozenset({b"host", b"connection", b"keep-alive", b"upgrade", b"expect", b"te",
                      b"proxy-connection", b"proxy-authorization"})


class GateRefusal(ValueError):
    """The tunnelled request is not one the API serves; the tunnel is dropped."""


@dataclass(frozen=True)
class RequestHead:
    """An allowed request's head as the gate parsed it, and the head it forwards."""

    method: str
    target: str  # the path and any query, as sent
    headers: tuple[tuple[str, str], ...]  # every field received: lower-cased name, value
    content_length: int
    forwarded: bytes  # the rewritten head llama-server gets (Host, Connection: close)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), None when it was not sent."""
        low = name.lower()
        return next((value for key, value in self.headers if key == low), None)


@dataclass(frozen=True)
class TunnelledRequest:
    """A whole request as the gate let it through: its head and the bytes it forwarded."""

    head: RequestHead
    preface: bytes  # the forwarded head, then the body

    @property
    def body(self) -> bytes:
        return self.preface[len(self.head.forwarded):]


def check_head(head: bytes) -> RequestHead:
    """The parsed head of an allowed request (ending in the blank line); GateRefusal if not."""
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else []
    match = _REQUEST_LINE.fullmatch(lines[0]) if lines else None
    if match is None:
        raise GateRefusal("not an HTTP/1.1 request line")
    method, target = match.group(1).decode(), match.group(2).decode()
    path = target.split("?", 1)[0]
    if (method, path) not in ROUTES:
        raise GateRefusal(f"{method} {path[:80]} is not an API route")
    length: int | None = None
    kept: list[bytes] = []
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None:
            raise GateRefusal("malformed header line")
        name = header.group(1).lower()
        fields.append((name.decode(), header.group(2).decode("latin-1")))
        if name == b"transfer-encoding":
            raise GateRefusal("chunked request bodies are not accepted")
        if name == b"content-length":
            value = header.group(2)
            if not value.isdigit() or len(value) > 10 or (length is not None
                                                          and int(value) != length):
                raise GateRefusal("bad Content-Length")
            length = int(value)
            continue
        if name not in _DROPPED:
            kept.append(line)
    if method == "POST" and length is None:
        raise GateRefusal("a POST needs a Content-Length")
    length = length or 0
    if length > MAX_BODY_BYTES:
        raise GateRefusal("request body too large")
    if method == "GET" and length:
        raise GateRefusal("a GET has no body")
    out = [match.group(0), b"Host: 127.0.0.1", b"Connection: close", *kept]
    if method == "POST":
        out.append(b"Content-Length: " + str(length).encode())
    return RequestHead(method, target, tuple(fields), length,
                       b"\r\n".join(out) + b"\r\n\r\n")


class ApiRequestGate:
    """A tunnel decoder (feed/finish) that passes one allowed request and nothing after it;
    `head` is what it parsed, once the head has passed."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._body_left: int | None = None  # None until the head has been checked
        self.head: RequestHead | None = None

    def feed(self, data: bytes) -> bytes:
        if self._body_left is None:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if (len(self._buf) if end < 0 else end + 4) > MAX_HEAD_BYTES:
                raise GateRefusal("request head too large")
            if end < 0:
                return b""
            head, rest = bytes(self._buf[:end + 4]), bytes(self._buf[end + 4:])
            self._buf = bytearray()
            self.head = check_head(head)
            self._body_left = self.head.content_length
            return self.head.forwarded + self._body(rest)
        return self._body(data)

    def _body(self, data: bytes) -> bytes:
        assert self._body_left is not None
        if len(data) > self._body_left:
            raise GateRefusal("bytes after the request (one request per tunnel stream)")
        self._body_left -= len(data)
        return data

    @property
    def complete(self) -> bool:
        """The whole request (head and body) has passed: anything more is refused."""
        return self._body_left == 0

    def finish(self) -> None:
        if self._body_left != 0:
            raise GateRefusal("the request ended before its body did")
