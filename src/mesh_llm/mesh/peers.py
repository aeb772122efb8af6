"""The peer table: who is in the mesh, what they announced, how to reach them.

Readers (the console's SSE stream, the election) either `subscribe()` to an async stream of
`PeerEvent`s or register a plain callback with `add_listener`. Only the mesh mutates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .announcement import Announcement
from .quic import Connection

log = logging.getLogger("mesh_llm.mesh")

PeerState = Literal["connected", "reconnecting"]
EventKind = Literal["added", "updated", "disconnected", "reconnected", "removed"]


@dataclass
class PeerInfo:
    """One peer. `announcement` is what it last gossiped about itself (validated)."""

    node_id: str
    announcement: Announcement
    connection: Connection | None = None
    state: PeerState = "connected"
    addrs: list[str] = field(default_factory=list)  # where to redial it, best first
    ping_rtt_ms: float | None = None  # measured over the gossip stream (app-level)
    grant: str = "member"  # what it proved: "member", or "client" for a client invite
    link: str = "direct"  # how our connection's path was found: "direct" or "punched"

    @property
    def rtt_ms(self) -> float | None:
        """Round trip to the peer: our gossip ping when measured, else QUIC's estimate.
        The one RTT every reader uses (status, console, bench, election, duplicate probe)."""
        if self.ping_rtt_ms is not None:
            return self.ping_rtt_ms
        conn = self.connection
        return None if conn is None else conn.rtt_ms

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    @property
    def role(self) -> str:
        return self.announcement.role

    @property
    def vram_bytes(self) -> int:
        return self.announcement.vram_bytes

    @property
    def models(self) -> list[str]:
        return list(self.announcement.models)

    @property
    def model_file(self) -> bool:
        """Whether it holds a file of its models (a worker without one serves the host's)."""
        return self.announcement.model_file

    def to_status(self) -> dict[str, Any]:
        """The console's per-peer shape: {id, role, vram_bytes, models, rtt_ms, ...}."""
        rtt = self.rtt_ms
        return {
            "id": self.node_id,
            "role": self.role,
            "vram_bytes": self.vram_bytes,
            "models": self.models,
            "rtt_ms": None if rtt is None else round(rtt, 3),
            "ready": self.announcement.ready,
            "model_file": self.model_file,
            "state": self.state,
            "addrs": list(self.addrs),
            "grant": self.grant,
            "link": self.link,
        }


@dataclass(frozen=True)
class PeerEvent:
    """A change to the table. `peer` is the live entry (None only for "removed")."""

    kind: EventKind
    node_id: str
    peer: PeerInfo | None
    at: float = field(default_factory=time.monotonic)


class Subscription:
    """An async stream of PeerEvents. Bounded: if the reader falls behind by more than
    `maxsize`, the oldest events are dropped and `dropped` counts them (re-read the table)."""

    def __init__(self, table: PeerTable, maxsize: int) -> None:
        self._table = table
        self._queue: deque[PeerEvent] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self.dropped = 0

    def _push(self, event: PeerEvent) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def get_nowait(self) -> PeerEvent | None:
        return self._queue.popleft() if self._queue else None

    async def get(self, timeout: float | None = None) -> PeerEvent:
        """The next event; TimeoutError after `timeout` s; StopAsyncIteration once closed."""
        async with asyncio.timeout(timeout):
            while not self._queue:
                if self._closed:
                    raise StopAsyncIteration
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._queue.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> PeerEvent:
        return await self.get()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._table._unsubscribe(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PeerTable(Mapping[str, PeerInfo]):
    """node id → PeerInfo, with change notification. A read-only Mapping to everyone but
    the mesh, which calls the mutators below."""

    def __init__(self) -> None:
        self._peers: dict[str, PeerInfo] = {}
        self._subs: list[Subscription] = []
        self._listeners: list[Callable[[PeerEvent], None]] = []

    # Mapping
    def __getitem__(self, node_id: str) -> PeerInfo:
        return self._peers[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._peers))

    def __len__(self) -> int:
        return len(self._peers)

    # notification
    def subscribe(self, maxsize: int = 1024) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subs.append(sub)
        return sub

    def add_listener(self, callback: Callable[[PeerEvent], None]) -> Callable[[], None]:
        """`callback(event)` synchronously on every change; returns a function to remove it."""
        self._listeners.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(callback)

        return remove

    def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def _emit(self, kind: EventKind, node_id: str, peer: PeerInfo | None) -> None:
        event = PeerEvent(kind, node_id, peer)
        for sub in list(self._subs):
            sub._push(event)
        for callback in list(self._listeners):
            try:
                callback(event)
            except Exception:
                log.exception("peer-table listener failed")

    # mutators (mesh only)
    def upsert(
        self,
        node_id: str,
        announcement: Announcement,
        connection: Connection,
        addrs: list[str],
        grant: str = "member",
        link: str = "direct",
    ) -> PeerInfo:
        """Record a (new or fresh) announcement from a connected peer."""
        peer = self._peers.get(node_id)
        if peer is None:
            peer = PeerInfo(node_id, announcement, connection, "connected", addrs, grant=grant,
                            link=link)
            self._peers[node_id] = peer
            self._emit("added", node_id, peer)
            return peer
        changed = (peer.announcement != announcement or peer.addrs != addrs
                   or peer.grant != grant or peer.link != link)
        was_reconnecting = peer.state != "connected"
        peer.announcement = announcement
        peer.addrs = addrs
        peer.grant = grant
        peer.link = link
        peer.connection = connection
        peer.state = "connected"
        if was_reconnecting:
            self._emit("reconnected", node_id, peer)
        elif changed:
            self._emit("updated", node_id, peer)
        return peer

    def set_connection(self, node_id: str, connection: Connection,
                       grant: str | None = None, link: str | None = None) -> None:
        """A peer's connection was replaced (duplicate resolution, reconnect); a new
        connection brings what the peer proved on it."""
        peer = self._peers.get(node_id)
        if peer is None:
            return
        peer.connection = connection
        if grant is not None:
            peer.grant = grant
        if link is not None and link != peer.link:
            peer.link = link
            if peer.state == "connected":
                self._emit("updated", node_id, peer)
        if peer.state != "connected":
            peer.state = "connected"
            self._emit("reconnected", node_id, peer)

    def set_rtt(self, node_id: str, rtt_ms: float) -> None:
        """Store a ping measurement (not an event: it changes every few seconds)."""
        peer = self._peers.get(node_id)
        if peer is not None:
            old = peer.ping_rtt_ms
            peer.ping_rtt_ms = rtt_ms if old is None else 0.7 * old + 0.3 * rtt_ms

    def mark_disconnected(self, node_id: str) -> None:
        peer = self._peers.get(node_id)
        if peer is None or peer.state == "reconnecting":
            return
        peer.state = "reconnecting"
        peer.connection = None
        self._emit("disconnected", node_id, peer)

    def remove(self, node_id: str) -> PeerInfo | None:
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            peer.connection = None
            self._emit("removed", node_id, None)
        return peer

    def clear(self) -> None:
        for node_id in list(self._peers):
            self.remove(node_id)
        for sub in list(self._subs):
            sub.close()
