"""A node's QUIC endpoint: one UDP socket that accepts and dials.

Why not qh3's `serve()`/`connect()`: `serve()` reads one datagram per callback through a
plain asyncio endpoint, and `connect()` gives each dial its own socket. Here one UDP socket
per node does both (the address peers see us dial from is the one we listen on), read and
written through qh3's batched transport (recvmmsg/GRO and GSO sends), with datagrams
routed to connections by destination connection id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection as Qh3Connection
from qh3.quic.packet import QuicPacketType, QuicProtocolVersion

from . import qh3_adapter
from .certificate import base_config, cert_der, make_self_signed_cert
from .connection import QuicConnection
from .errors import CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN, TransportError
from .interface import Connection
from .settings import CID_LENGTH, MIN_INITIAL_DATAGRAM, TransportSettings

log = logging.getLogger("mesh_llm.mesh")


class _Router(qh3_adapter.BatchedDatagramProtocol):
    """The UDP socket's protocol: routes datagrams to connections by destination CID."""

    def __init__(self, accept: Callable[[bytes, Any], QuicConnection | None]) -> None:
        super().__init__()
        self._accept = accept
        self._by_cid: dict[bytes, QuicConnection] = {}
        self.connections: set[QuicConnection] = set()
        # Virtual paths (a relay): address → how to send datagrams along it.
        self.virtual: dict[Any, Callable[[list[bytes]], None]] = {}
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)

    def datagrams_received(self, datagrams: list[bytes], addr: Any) -> None:
        current: QuicConnection | None = None
        batch: list[bytes] = []
        for data in datagrams:
            conn = self._route(data, addr)
            if conn is not current:
                if current is not None and batch:
                    self._deliver(current, batch, addr)
                current, batch = conn, []
            if conn is not None:
                batch.append(data)
        if current is not None and batch:
            self._deliver(current, batch, addr)

    def _deliver(self, conn: QuicConnection, batch: list[bytes], addr: Any) -> None:
        conn.datagrams_received(batch, addr)
        if conn.stillborn():
            conn.abort()

    def _route(self, data: bytes, addr: Any) -> QuicConnection | None:
        header = qh3_adapter.parse_header(data, CID_LENGTH)
        if header is None:
            return None  # not QUIC: ignore
        conn = self._by_cid.get(header.destination_cid)
        if conn is not None:
            return conn
        # Unknown connection: only a full-size QUIC v1 Initial may open one. Other versions
        # are dropped rather than answered with version negotiation (every node speaks v1).
        if (
            header.packet_type == QuicPacketType.INITIAL
            and len(data) >= MIN_INITIAL_DATAGRAM
            and header.version == QuicProtocolVersion.VERSION_1
        ):
            return self._accept(header.destination_cid, addr)
        return None

    def send_many(self, datagrams: list[bytes], addr: Any) -> None:
        send = self.virtual.get(tuple(addr[:2])) if self.virtual else None
        if send is not None:  # qh3 hands an IPv6 path back as (host, port, flow, scope)
            send(datagrams)
        else:
            super().send_many(datagrams, addr)

    def add(self, conn: QuicConnection, *cids: bytes) -> None:
        self.connections.add(conn)
        for cid in cids:
            self._by_cid[cid] = conn

    # ---- connection.Router

    def register(self, cid: bytes, conn: QuicConnection) -> None:
        self._by_cid[cid] = conn

    def unregister(self, cid: bytes, conn: QuicConnection) -> None:
        if self._by_cid.get(cid) is conn:
            del self._by_cid[cid]

    def forget(self, conn: QuicConnection) -> None:
        for cid in [c for c, owner in self._by_cid.items() if owner is conn]:
            del self._by_cid[cid]
        self.connections.discard(conn)


class QuicTransport:
    """A node's QUIC endpoint: one UDP socket that accepts and dials."""

    def __init__(
        self,
        settings: TransportSettings | None = None,
        *,
        on_connection: Callable[[Connection], None] | None = None,
    ) -> None:
        self.settings = settings or TransportSettings()
        self.on_connection = on_connection
        self._router: _Router | None = None
        self._server_config: QuicConfiguration | None = None
        self._cert_der = b""
        self._family = socket.AF_INET
        self.port = 0
        self.batched_io = False

    @property
    def cert_fingerprint(self) -> bytes:
        """SHA-256 of our own certificate: a dial whose server shows it reached us."""
        return hashlib.sha256(self._cert_der).digest()

    def send_raw(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram from the mesh socket that no QUIC endpoint reads (hole punching:
        it opens our NAT's mapping towards `addr`)."""
        router = self._router
        if router is not None and router.transport is not None:
            router.transport.sendto(data, addr)

    @property
    def connections(self) -> list[Connection]:
        return [] if self._router is None else list(self._router.connections)

    async def listen(self, host: str = "0.0.0.0", port: int = 0) -> int:
        """Bind the UDP socket and accept connections; returns the bound port."""
        if self._router is not None:
            raise TransportError("transport is already bound")
        cert_pem, key_pem = make_self_signed_cert()
        config = base_config(self.settings, is_client=False)
        config.load_cert_chain(cert_pem, key_pem)
        self._server_config = config
        self._cert_der = cert_der(cert_pem)
        await self._bind(host, port)
        return self.port

    async def _bind(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, self.settings.socket_buffer)
            sock.bind((host, port))
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            failure = TransportError(f"cannot bind UDP {host}:{port}: {err.strerror or err}")
            failure.errno = err.errno  # so the caller can tell "in use" from "not ours"
            raise failure from None
        router = _Router(self._accept)
        await qh3_adapter.open_udp(router, sock)
        self.batched_io = router.batched_sends
        self._router = router
        self._family = family
        self.port = int(sock.getsockname()[1])

    def _accept(self, original_dcid: bytes, addr: Any) -> QuicConnection | None:
        router = self._router
        if self._server_config is None or router is None:
            return None
        if len(router.connections) >= self.settings.max_connections:
            log.warning("refusing a QUIC connection from %s: %d connections open",
                        addr, len(router.connections))
            return None
        quic = Qh3Connection(
            configuration=self._server_config,
            original_destination_connection_id=original_dcid,
        )
        conn = QuicConnection(router, self.settings, quic, addr, is_client=False,
                              server_cert_der=self._cert_der)
        router.add(conn, original_dcid, quic.host_cid)
        if self.on_connection is not None:
            try:
                self.on_connection(conn)
            except Exception:
                log.exception("connection handler failed; dropping %r", conn)
                conn.close(CLOSE_PROTOCOL_ERROR, "internal error")
        return conn

    def add_virtual(self, addr: tuple[str, int], send: Callable[[list[bytes]], None]) -> None:
        """A virtual path: datagrams to `addr` go to `send` (a relay), and `inject` delivers
        what comes back as if from `addr`. QUIC runs over it as over the socket."""
        if self._router is not None:
            self._router.virtual[addr] = send

    def remove_virtual(self, addr: tuple[str, int]) -> None:
        """The path is gone: what its connections still send is dropped (they die by their
        own timers), never sent to the socket. Paths are named per pair, so few exist."""
        if self._router is not None and addr in self._router.virtual:
            self._router.virtual[addr] = _drop

    def inject(self, datagrams: list[bytes], addr: tuple[str, int]) -> None:
        """Datagrams that arrived along virtual path `addr`."""
        router = self._router
        if router is not None and router.virtual.get(addr, _drop) is not _drop:
            router.datagrams_received(datagrams, addr)

    async def connect_virtual(self, addr: tuple[str, int], timeout: float = 10.0) -> Connection:
        """Dial the far end of virtual path `addr` (see `add_virtual`)."""
        router = self._router
        if router is None or router.virtual.get(addr, _drop) is _drop:
            raise TransportError(f"no path {addr[0]}")
        return await self._handshake(router, addr, addr[0], timeout)

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> Connection:
        """Dial host:port and finish the QUIC handshake within `timeout` seconds."""
        if self._router is None:
            await self._bind("127.0.0.1" if _is_loopback(host) else "0.0.0.0", 0)
        router = self._router
        assert router is not None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, family=self._family,
                                               type=socket.SOCK_DGRAM)
        except (OSError, TimeoutError) as err:
            raise TransportError(f"cannot resolve {host}:{port}: {err}") from None
        if not infos:
            raise TransportError(f"cannot resolve {host}:{port}")
        addr: Any = infos[0][4]
        if self._family == socket.AF_INET6 and len(addr) == 2:  # pragma: no cover
            addr = ("::ffff:" + addr[0], addr[1], 0, 0)
        return await self._handshake(router, addr, f"{host}:{port}", timeout)

    async def _handshake(self, router: _Router, addr: Any, label: str,
                         timeout: float) -> Connection:
        quic = Qh3Connection(configuration=base_config(self.settings, is_client=True))
        conn = QuicConnection(router, self.settings, quic, addr, is_client=True,
                              server_cert_der=None)
        router.add(conn, quic.host_cid)
        try:
            conn.start_client(addr)
            async with asyncio.timeout(timeout):
                await conn.wait_connected()
        except TimeoutError:
            conn.close(CLOSE_PROTOCOL_ERROR, "handshake timeout")
            raise TransportError(f"no QUIC answer from {label} within {timeout:.1f} s") \
                from None
        except ConnectionError as err:
            conn.close(CLOSE_PROTOCOL_ERROR, "handshake failed")
            raise TransportError(f"QUIC handshake with {label} failed: {err}") from None
        except BaseException:
            conn.close(CLOSE_PROTOCOL_ERROR, "dial cancelled")
            raise
        return conn

    async def close(self, code: int = CLOSE_SHUTDOWN, reason: str = "shutdown") -> None:
        """Close every connection (CONNECTION_CLOSE is sent) and then the socket."""
        router = self._router
        if router is None:
            return
        for conn in list(router.connections):
            conn.close(code, reason)  # sends CONNECTION_CLOSE right away
        self._shutdown()  # the UDP transport still flushes anything queued before closing
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(router.lost)

    def abort(self) -> None:
        """Drop the socket and every connection without a word to peers (crash simulation)."""
        router = self._router
        if router is None:
            return
        for conn in list(router.connections):
            conn.abort()
        self._shutdown()

    def _shutdown(self) -> None:
        router = self._router
        if router is None:
            return
        for conn in list(router.connections):
            conn.finalize()
        if router.transport is not None:
            router.transport.close()
        self._router = None


def _drop(datagrams: list[bytes]) -> None:
    """Where a closed virtual path's datagrams go."""


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
