"""llama-server's answer read by llhttp (httptools), with the relay's own bounds.

llhttp parses the framing in C and calls back per header and per body piece, so a
streamed token costs one callback instead of a Python chunk-line scan. It has no size
limits of its own: the head, the chunk lines and the trailers are bounded here, in its
callbacks and after each read, and the body by the caller's sink.
"""

from __future__ import annotations

from collections.abc import Callable

import httptools

from .http1 import (
    MAX_CHUNK_LINE,
    MAX_HEAD_BYTES,
    MAX_TRAILER_LINES,
    HttpProtocolError,
    ResponseHead,
)

# Bytes that are neither head nor body a chunked answer may carry: a size line and its
# CRLFs per chunk, and the trailer lines (the limits ChunkedDecoder applies line by line).
_PER_CHUNK = MAX_CHUNK_LINE + 4
_TRAILERS = MAX_TRAILER_LINES * (MAX_CHUNK_LINE + 2)


class ResponseReader:
    """Feeds an answer's bytes to llhttp; calls `on_head`, `on_body` per piece, `on_done`."""

    def __init__(self, on_head: Callable[[ResponseHead], None],
                 on_body: Callable[[bytes], None], on_done: Callable[[], None]) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._on_head, self._on_body_piece, self._on_done = on_head, on_body, on_done
        self._reason = b""
        self._headers: dict[str, str] = {}
        self._head_size = 0
        self._head_fed = 0
        self._after_head = 0  # bytes fed in reads that started after the head
        self._body = 0
        self._chunks = 0
        self._trailers = 0
        self.head: ResponseHead | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        in_head = self.head is None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            if isinstance(err.__context__, HttpProtocolError):
                raise err.__context__ from None
            raise HttpProtocolError(str(err)) from err.__context__
        except httptools.HttpParserError as err:
            if not self.done:  # bytes after a complete answer are not ours to judge
                raise HttpProtocolError(str(err)) from None
        if in_head:
            self._head_fed += len(data)
            if self.head is None and self._head_fed > MAX_HEAD_BYTES:
                raise HttpProtocolError("response head too large")
        if self.head is not None and not self.done:
            # Counted from the read that ended the head: its head part is allowed for.
            self._after_head += len(data)
            slack = MAX_HEAD_BYTES + (self._chunks + 1) * _PER_CHUNK + _TRAILERS
            if self._after_head - self._body > slack:
                raise HttpProtocolError("chunk lines or trailers too long")

    # --- llhttp's callbacks ---
    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._count_head(len(reason))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is not None:  # a trailer
            self._trailers += 1
            if self._trailers > MAX_TRAILER_LINES or len(name) + len(value) > MAX_CHUNK_LINE:
                raise HttpProtocolError("trailers too long")
            return
        self._count_head(len(name) + len(value) + 4)
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if self._parser.get_http_version() not in ("1.0", "1.1") or not 100 <= status <= 599:
            raise HttpProtocolError(f"bad status line (HTTP/"
                                    f"{self._parser.get_http_version()} {status})")
        self.head = ResponseHead(status, self._reason.decode("latin-1"), self._headers)
        self._on_head(self.head)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, piece: bytes) -> None:
        if not self.done:
            self._body += len(piece)
            self._on_body_piece(piece)

    def on_message_complete(self) -> None:
        if not self.done:
            self.done = True
            self._on_done()

    def _count_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise HttpProtocolError("response head too large")
