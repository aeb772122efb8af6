"""The mesh: QUIC between nodes, mutual authentication, gossip and the live peer table.

`Mesh` (mesh.py) is the facade the node uses; the other modules are its parts:
protocol.py (stream types, frames), transport.py (QUIC seam), auth.py, gossip.py, peers.py.
"""

from .mesh import Mesh, MeshError, MeshJoinError, MeshSettings, StreamHandler
from .peers import PeerEvent, PeerInfo, PeerTable, Subscription
from .protocol import MAX_FRAME, PROTOCOL_VERSION, FrameError, StreamType
from .quic import (
    Connection,
    ConnectionClosed,
    Stream,
    StreamReset,
    TransportError,
    TransportSettings,
)

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "Connection",
    "ConnectionClosed",
    "FrameError",
    "Mesh",
    "MeshError",
    "MeshJoinError",
    "MeshSettings",
    "PeerEvent",
    "PeerInfo",
    "PeerTable",
    "Stream",
    "StreamHandler",
    "StreamReset",
    "StreamType",
    "Subscription",
    "TransportError",
    "TransportSettings",
]
