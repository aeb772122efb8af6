"""The host's end of an HTTP tunnel lets through one request to one of the API's routes.

A peer's HTTP tunnel reaches the host's llama-server, which has endpoints of its own
(`/props`, `/slots`, ...) and no key: a member or a lite client may use the API, nothing else.
The gate sits in the tunnel's byte path (the relay's decoder seam): it reads the request
head (bounded), checks method and path, rewrites the head so the connection closes after
the answer, lets exactly the declared body through, and fails on anything more.
"""

from __future__ import annotations

import re

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


def check_head(head: bytes) -> tuple[bytes, int]:
    """(the head to forward, the body length) for an allowed request; GateRefusal if not."""
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
    for line in lines[1:]:
        header = _HEADER.fullmatch(line)
        if header is None:
            raise GateRefusal("malformed header line")
        name = header.group(1).lower()
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
    return b"\r\n".join(out) + b"\r\n\r\n", length


class ApiRequestGate:
    """A tunnel decoder (feed/finish) that passes one allowed request and nothing after it."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._body_left: int | None = None  # None until the head has been checked

    def feed(self, data: bytes) -> bytes:
        if self._body_left is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    raise GateRefusal("request head too large")
                return b""
            head, rest = bytes(self._head[:end + 4]), bytes(self._head[end + 4:])
            self._head = bytearray()
            forwarded, self._body_left = check_head(head)
            return forwarded + self._body(rest)
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
