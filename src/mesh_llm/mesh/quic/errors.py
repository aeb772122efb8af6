"""What the QUIC layer raises, and the application codes it sends in CONNECTION_CLOSE and
RESET_STREAM."""

from __future__ import annotations

# qh3 reports transport errors (an idle timeout is code 1) in the same field as ours, so
# ours live apart, at 0x4D00+.
CLOSE_NORMAL = 0
CLOSE_GOODBYE = 0x4D01
CLOSE_DUPLICATE = 0x4D02
CLOSE_AUTH_FAILED = 0x4D03
CLOSE_PROTOCOL_ERROR = 0x4D04
CLOSE_SHUTDOWN = 0x4D05
RESET_CANCELLED = 0x4D10
RESET_OVERFLOW = 0x4D11
RESET_REFUSED = 0x4D12


class TransportError(ConnectionError):
    """Dial, bind or stream-open failures."""


class StreamReset(ConnectionError):
    """The peer reset the stream (or stopped reading it); `code` is its error code."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class ConnectionClosed(ConnectionError):
    """The connection under a stream is gone."""
