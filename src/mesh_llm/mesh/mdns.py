"""LAN discovery's I/O (--mdns, zeroconf): advertise this member, browse for the others,
follow this machine's addresses, and `discover` for the CLI. The records and every
decision about them are lan.py's.

zeroconf is bound to this machine's own interface addresses only (never "all"), IPv4; it
is created only when asked for, so a node without --mdns sends nothing to the LAN. When the
machine's addresses change (DHCP), zeroconf is reopened on the new ones and the record
re-advertised under a host name that names the new addresses, so a browser's cached
address of the old one is never taken for the new.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from .addresses import WILDCARDS, local_ips
from .lan import (
    MAX_RECORDS,
    SERVICE_TYPE,
    LanMesh,
    LanRecord,
    instance_name,
    meshes,
    parse,
    properties,
)

log = logging.getLogger("mesh_llm.mesh")

WATCH_S = 1.0  # how often this machine's addresses are read (the DHCP case)
RESOLVE_MS = 1500  # one query for a record's details


def _zeroconf(ips: list[str]) -> Any:
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    return AsyncZeroconf(interfaces=list(ips), ip_version=IPVersion.V4Only)


class LanPresence:
    """Our record on the LAN and the records of others (by node id, bounded).
    `on_record(record)` hears every record resolved (ours excluded); `on_ips(ips)` hears
    this machine's addresses when they change."""

    def __init__(self, node_id: str, bind_host: str,
                 on_record: Callable[[LanRecord], None],
                 on_ips: Callable[[list[str]], None]) -> None:
        self.node_id = node_id
        self.bind_host = bind_host
        self.on_record = on_record
        self.on_ips = on_ips
        self.records: dict[str, LanRecord] = {}
        self.ips: list[str] = []
        self._zc: Any = None
        self._browser: Any = None
        self._wanted: LanRecord | None = None  # what we advertise (None: nothing yet)
        self._advertised: LanRecord | None = None  # what the LAN was told (None: nothing)
        self._lock = asyncio.Lock()
        self._names: dict[str, str] = {}  # instance name → node id
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    def _current_ips(self) -> list[str]:
        return local_ips() if self.bind_host in WILDCARDS else [self.bind_host]

    async def start(self) -> None:
        await self._open(self._current_ips())
        self._watch = asyncio.get_running_loop().create_task(self._follow_addresses())

    async def _open(self, ips: list[str]) -> None:
        self.ips = ips
        if not ips:
            log.warning("--mdns: this machine has no LAN address; nothing to advertise on")
            return
        from zeroconf.asyncio import AsyncServiceBrowser

        self._zc = _zeroconf(ips)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE_TYPE],
                                            handlers=[self._on_change])
        await self._register()

    async def _close_zc(self) -> None:
        zc, browser, self._zc, self._browser = self._zc, self._browser, None, None
        self._advertised = None
        if zc is None:
            return
        with contextlib.suppress(Exception):
            await browser.async_cancel()
        with contextlib.suppress(Exception):
            await zc.async_unregister_all_services()
        with contextlib.suppress(Exception):
            await zc.async_close()

    async def _follow_addresses(self) -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            ips = self._current_ips()
            if ips != self.ips:
                log.info("this machine's addresses changed (%s → %s): re-advertising on the "
                         "LAN", ", ".join(self.ips) or "none", ", ".join(ips) or "none")
                self.on_ips(ips)
                async with self._lock:
                    await self._close_zc()
                await self._open(ips)

    # ------------------------------------------------------------- advertising

    def advertise(self, record: LanRecord) -> None:
        """Advertise `record` from now on (the same one again costs nothing)."""
        if record == self._wanted:
            return
        self._wanted = record
        self._spawn(self._register())

    async def _register(self) -> None:
        """Bring what the LAN knows of us up to `_wanted` (one registration at a time:
        zeroconf refuses a name registered twice)."""
        from zeroconf.asyncio import AsyncServiceInfo

        async with self._lock:
            record, zc = self._wanted, self._zc
            if zc is None or record is None or record == self._advertised:
                return
            digest = hashlib.sha256(",".join(self.ips).encode()).hexdigest()[:6]
            info = AsyncServiceInfo(
                SERVICE_TYPE, instance_name(self.node_id), port=record.port,
                properties=properties(record),
                server=f"mesh-llm-{self.node_id[:16]}-{digest}.local.",
                addresses=[socket.inet_aton(ip) for ip in self.ips])
            try:
                if self._advertised is None:
                    await (await zc.async_register_service(info, cooperating_responders=True))
                else:
                    await (await zc.async_update_service(info))
                self._advertised = record
            except Exception as err:  # the LAN is best effort: say why, carry on
                log.warning("--mdns: could not advertise on the LAN: %s",
                            str(err) or type(err).__name__)

    # ------------------------------------------------------------- browsing

    def _on_change(self, zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            node_id = self._names.pop(name, None)
            if node_id is not None:
                self.records.pop(node_id, None)
            return
        self._spawn(self.resolve(name))

    async def resolve(self, name: str) -> LanRecord | None:
        """Ask the LAN for one instance's record (the cache first); None if none answers or
        it fails a check."""
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        zc = self._zc
        if zc is None or not name.endswith("." + SERVICE_TYPE) or len(name) > 255:
            return None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc.zeroconf, RESOLVE_MS):
            return None
        record = parse(info.properties or {}, info.parsed_addresses(IPVersion.V4Only),
                       info.port)
        if record is None or record.node_id == self.node_id:
            return None
        if record.node_id not in self.records and len(self.records) >= MAX_RECORDS:
            self.records.pop(next(iter(self.records)))
        self.records[record.node_id] = record
        self._names[name] = record.node_id
        self._changed.set()
        self._changed = asyncio.Event()
        self.on_record(record)
        return record

    def lookup(self, node_id: str) -> None:
        """Look for one member on the LAN by its node id (a lost peer)."""
        self._spawn(self.resolve(instance_name(node_id)))

    async def wait_for(self, accept: Callable[[LanRecord], bool], timeout: float) -> bool:
        """Wait until a record `accept` takes is known, at most `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(accept(r) for r in self.records.values()):
            remaining = deadline - loop.time()
            if remaining <= 0 or self._zc is None:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Withdraw our record and stop listening."""
        if self._watch is not None:
            self._watch.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *([self._watch] if self._watch else []),
                             return_exceptions=True)
        await self._close_zc()


async def discover(timeout: float) -> list[LanMesh]:
    """The meshes advertised on this machine's LANs within `timeout` seconds; joins
    nothing and advertises nothing (its queries are all it sends)."""
    seen: list[LanRecord] = []
    presence = LanPresence("0" * 64, "0.0.0.0", seen.append, lambda ips: None)
    await presence.start()
    try:
        await asyncio.sleep(timeout)
    finally:
        await presence.close()
    return meshes(presence.records.values())
