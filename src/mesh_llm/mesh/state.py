"""What the parts of the mesh share: who we are, our credential, the links, the tasks.

A `Link` is our state for one QUIC connection; `MeshState.peer_links` holds the
authenticated ones by peer, oldest first (normally one; two while a duplicate is resolved).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..logutil import RateLimitedLog
from .auth import AuthResult, Grant
from .identity import Identity
from .invites import Invite
from .observed import ObservedAddrs
from .peers import PeerTable
from .quic import Connection, QuicTransport, Stream
from .settings import MeshSettings

if TYPE_CHECKING:
    from .session import GossipSession

log = logging.getLogger("mesh_llm.mesh")


@dataclass(eq=False)
class Link:
    """Our state for one QUIC connection."""

    conn: Connection
    dialed: bool
    peer_id: str | None = None
    auth: AuthResult | None = None
    auth_started: bool = False
    pending: list[Stream] = field(default_factory=list)  # held until authenticated
    session: GossipSession | None = None
    goodbye: bool = False
    deliberate: bool = False  # we closed it on purpose: no reconnect
    replaced: bool = False  # lost the duplicate tie-break
    kind: str = "direct"  # how the path was found: "direct", "punched", "relayed (via X)"
    via: str | None = None  # the relaying member, for a relayed link
    control: set[int] = field(default_factory=set)  # its gossip streams' ids
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.session is not None:
            self.session.stop()

    @property
    def authenticated(self) -> bool:
        return self.auth is not None

    @property
    def grant(self) -> Grant | None:
        return None if self.auth is None else self.auth.grant


class MeshState:
    """The state every part of the mesh reads and the few operations they all need."""

    def __init__(self, identity: Identity, secret: bytes | None,
                 settings: MeshSettings) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.settings = settings
        self.secret = secret
        self.invite: Invite | None = None  # a lite client's credential (it has no secret)
        self.transport: QuicTransport | None = None
        self.table = PeerTable()
        self.links: dict[Connection, Link] = {}
        self.peer_links: dict[str, list[Link]] = {}  # authenticated, oldest first
        self.refusals = RateLimitedLog(log)  # what outsiders and unprivileged peers trigger
        self.refused = 0  # connections refused so far (tests wait on it, not on the log)
        self.stopping = False
        self.own_addrs: set[str] = set()  # addresses that reach this very node
        # --mdns: the members of a secret's mesh seen on the LAN, (id, addresses) (join.py)
        self.lan_members: Callable[[bytes], Awaitable[list[tuple[str, list[str]]]]] | None \
            = None
        self.observed = ObservedAddrs()  # where peers see us
        # Peers we send to right now: "intro" (an introduction), "dial" (a gossip hint).
        self.punching: dict[str, str] = {}
        # Peer → the address of its punched path: a later link on that path (a duplicate,
        # a reconnect) is punched too.
        self.punched_paths: dict[str, str] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def transport_fingerprint(self) -> bytes:
        """Our own certificate's fingerprint (b"" before the transport exists)."""
        return b"" if self.transport is None else self.transport.cert_fingerprint

    # links

    def active_link(self, peer: str) -> Link | None:
        """The link in use for `peer`: its newest authenticated one."""
        links = self.peer_links.get(peer)
        return links[-1] if links else None

    def linked_directly(self, peer: str) -> bool:
        """Whether we hold a link to `peer` that no relay carries."""
        return any(link.via is None for link in self.peer_links.get(peer, []))

    def adopted_links(self) -> list[Link]:
        return [link for links in self.peer_links.values() for link in links]

    def close_link(self, link: Link, code: int, reason: str) -> None:
        link.deliberate = True
        link.conn.close(code, reason)

    def notify_active(self, peer: str) -> None:
        """A link to `peer` was adopted: wake whoever waits for one."""
        for waiter in self._waiters.pop(peer, []):
            if not waiter.done():
                waiter.set_result(None)

    async def wait_active(self, peer: str, timeout: float, direct: bool = False) -> None:
        """Wait up to `timeout` s for a link to `peer` to be adopted (either direction;
        `direct`: one that no relay carries)."""
        if self.linked_directly(peer) if direct else peer in self.peer_links:
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(peer, [])
        waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters and self._waiters.get(peer) is waiters:
                del self._waiters[peer]

    # tasks

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` in the background; a failure is logged, never lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("mesh task %s failed", task.get_name(), exc_info=exc)

    async def cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
