"""QUIC between nodes, on qh3, behind a small seam: QuicTransport → Connection → Stream.

The rest of mesh-llm types against the `Stream` and `Connection` protocols (interface.py);
only the mesh's dial/accept code holds a `QuicTransport` (endpoint.py). Inside:

  settings.py      timers, limits and the constants both ends agree on
  errors.py        exceptions and the application close/reset codes
  certificate.py   the throwaway self-signed TLS certificate and qh3's configuration
  endpoint.py      the UDP socket, the datagram router and QuicTransport (accept, dial)
  connection.py    one connection: QUIC events in, stream and connection state out
  timers.py        when a connection wakes on its own (transmit, deadlines, keepalive)
  streams.py       a connection's streams: event routing, new peer ids, blocked writers
  stream.py        one stream's buffers, waiters and push-mode callbacks
  qh3_adapter.py   every use of qh3's private parts, checked against one qh3 version

The data path is callback-driven (no task per stream): QUIC events are turned into stream
buffers or `Stream.set_receiver` callbacks, and sends are coalesced into one transmit per
event-loop pass. Writers are paused by the stream's not-yet-sent byte count
(`QuicConnection.get_send_buffer_size`), since qh3's own StreamWriter.drain() never waits.
"""

from .endpoint import QuicTransport
from .errors import (
    CLOSE_AUTH_FAILED,
    CLOSE_DUPLICATE,
    CLOSE_GOODBYE,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_SHUTDOWN,
    RESET_CANCELLED,
    RESET_OVERFLOW,
    RESET_REFUSED,
    ConnectionClosed,
    StreamReset,
    TransportError,
)
from .interface import Connection, Stream
from .settings import TransportSettings

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_DUPLICATE",
    "CLOSE_GOODBYE",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_SHUTDOWN",
    "RESET_CANCELLED",
    "RESET_OVERFLOW",
    "RESET_REFUSED",
    "Connection",
    "ConnectionClosed",
    "QuicTransport",
    "Stream",
    "StreamReset",
    "TransportError",
    "TransportSettings",
]
