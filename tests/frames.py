"""An incremental frame decoder for tests: the node reads frames with `read_frame`, one at a
time from a stream; tests feed bytes in arbitrary cuts to check the codec's bounds."""

from __future__ import annotations

from typing import Any

from mesh_llm.mesh.protocol import HEADER, MAX_FRAME, FrameError, check_length, decode_body


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get whole frames back.

    Buffers at most one header plus one body of at most `max_size`; after a FrameError
    the decoder is poisoned (the stream must be dropped, there is no resynchronising).
    """

    def __init__(self, max_size: int = MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._need: int | None = None
        self._error: FrameError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self._error is not None:
            raise self._error
        self._buf += data
        frames: list[dict[str, Any]] = []
        try:
            while True:
                if self._need is None:
                    if len(self._buf) < HEADER.size:
                        break
                    (length,) = HEADER.unpack_from(self._buf)
                    check_length(length, self.max_size)
                    del self._buf[: HEADER.size]
                    self._need = length
                if len(self._buf) < self._need:
                    break
                body = bytes(self._buf[: self._need])
                del self._buf[: self._need]
                self._need = None
                frames.append(decode_body(body))
        except FrameError as err:
            self._error = err
            self._buf.clear()
            raise
        return frames

    @property
    def pending(self) -> int:
        """Bytes held that do not yet make a whole frame (0 at a frame boundary)."""
        return len(self._buf) + (HEADER.size if self._need is not None else 0)
