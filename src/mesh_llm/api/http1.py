"""The little of HTTP/1.1 the relay speaks to llama-server: a request, a response head, chunks.

Pure and incremental, so the relay can pass each streamed token on from the callback that
received it (see upstream.py). Everything read is bounded: llama-server is ours, but the
port it listens on might not be by the time we connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD_BYTES = 64 * 1024
MAX_CHUNK_LINE = 256
MAX_TRAILER_LINES = 64

_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([^\r\n]*))?")


class HttpProtocolError(ValueError):
    """The upstream's bytes are not the HTTP/1.1 they should be."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased; a repeated name keeps its last value

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "application/json")

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def content_length(self) -> int | None:
        """Declared body length; None when the body is chunked or runs to the close."""
        if self.chunked or "content-length" not in self.headers:
            return None
        value = self.headers["content-length"].strip()
        if not value.isdigit() or len(value) > 15:
            raise HttpProtocolError(f"bad Content-Length {value[:20]!r}")
        return int(value)


def request_bytes(method: str, authority: str, path: str, headers: dict[str, str],
                  body: bytes | None) -> bytes:
    """One request on a connection of its own (`Connection: close`)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {authority}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def parse_head(raw: bytes) -> ResponseHead:
    """Parse the status line and header fields (the bytes before the blank line)."""
    status_line, _, fields = raw.partition(b"\r\n")
    match = _STATUS.fullmatch(status_line)
    if match is None:
        raise HttpProtocolError(f"bad status line {status_line[:60]!r}")
    headers: dict[str, str] = {}
    for line in fields.split(b"\r\n") if fields else ():
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise HttpProtocolError(f"bad header line {line[:60]!r}")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    return ResponseHead(int(match[1]), (match[2] or b"").decode("latin-1"), headers)


def frame_chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class ChunkedDecoder:
    """Turns a chunked body, fed in arbitrary pieces, back into its payload pieces."""

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self) -> None:
        self._state = self._SIZE
        self._need = 0
        self._trailers = 0
        self._rest = b""
        self.done = False

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data if self._rest else data
        pieces: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end and not self.done:
            if self._state == self._DATA:
                take = min(self._need, end - pos)
                pieces.append(buf[pos:pos + take])
                pos += take
                self._need -= take
                if not self._need:
                    self._state = self._DATA_END
            elif self._state == self._DATA_END:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise HttpProtocolError("chunk data not followed by CRLF")
                pos += 2
                self._state = self._SIZE
            else:
                eol = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE)
                if eol < 0:
                    if end - pos >= MAX_CHUNK_LINE:
                        raise HttpProtocolError("chunk line too long")
                    break
                line = buf[pos:eol]
                pos = eol + 2
                if self._state == self._TRAILER:
                    self._trailers += 1
                    if not line:
                        self.done = True
                    elif self._trailers > MAX_TRAILER_LINES:
                        raise HttpProtocolError("too many trailer lines")
                    continue
                size = line.split(b";", 1)[0].strip()
                if _HEX.fullmatch(size) is None:
                    raise HttpProtocolError(f"bad chunk size {line[:20]!r}")
                self._need = int(size, 16)
                self._state = self._DATA if self._need else self._TRAILER
        self._rest = buf[pos:] if not self.done else b""
        return pieces
