"""The mesh: QUIC between nodes, mutual authentication, gossip and the live peer table.

`Mesh` (mesh.py) is the facade the node uses; the other modules are its parts:
protocol.py (stream types, frames), quic/ (QUIC seam), auth.py, announcement.py,
gossip.py, session.py and membership.py, peers.py, dialler.py and join.py, inbound.py,
link_rule.py and adoption.py, addresses.py, observed.py (where peers see us), punch.py
(introductions and hole punching), settings.py, state.py.
"""

from .announcement import Announcement
from .inbound import StreamHandler
from .mesh import Mesh, MeshError, MeshJoinError
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
from .settings import MeshSettings

__all__ = [
    "MAX_FRAME",
    "PROTOCOL_VERSION",
    "Announcement",
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
