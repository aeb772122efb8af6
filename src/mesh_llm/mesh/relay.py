"""Relaying through a member: where punching fails, a member linked to both carries the
pair's QUIC packets over its two links.

The end that asks opens a RELAY stream to the relay naming the other end ({"t": "relay",
"to": id}); the relay opens a RELAY stream to that end ({"t": "relay", "from": id}) and
answers {"t": "ok"} (or {"t": "error", "reason"}). From then on both streams carry
datagrams, each a u16 length and its bytes, which the relay forwards whole from one to the
other. Each end sees a virtual path, an address in 100::/64 (the IPv6 discard-only block:
nothing real is there) derived from the relay's and the peer's ids, that its QUIC endpoint
sends along and receives from (never the socket), so the end-to-end connection is an
ordinary one: encrypted and mutually authenticated between the two ends, the relay sees
only ciphertext.

A relay forwards only to members it is linked to (from a member or a lite client), for at
most `relay_max_pairs` pairs, within `relay_rate` bytes per second per pair, and none with
`relay_enabled` off; it drops (never queues without bound) what its links cannot take, as
a UDP path would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .identity import is_node_id
from .invites import TokenError, format_addr, parse_addr
from .protocol import FrameError, StreamType, read_frame, write_frame
from .quic import Stream
from .state import MeshState

log = logging.getLogger("mesh_llm.mesh")

MAX_DATAGRAM = 1500
LENGTH = struct.Struct(">H")
REQUEST_MAX = 1024
REQUEST_TIMEOUT_S = 5.0
VIRTUAL_NET = ipaddress.IPv6Network("100::/64")
DEFAULT_PAIRS = 8
DEFAULT_RATE = 8_000_000  # bytes per second, each way, per pair

OpenStream = Callable[[str, int], Awaitable[Stream]]


# ------------------------------------------------------------------ pure parts


def virtual_addr(relay: str, peer: str) -> tuple[str, int]:
    """The virtual path's address to `peer` through `relay` (each end names its own)."""
    digest = hashlib.sha256(f"{relay}/{peer}".encode()).digest()
    host = VIRTUAL_NET[int.from_bytes(digest[:8], "big")]
    return str(host), 1 + int.from_bytes(digest[8:10], "big") % 65535


def is_virtual(addr: str) -> bool:
    """Whether HOST:PORT is a relay's virtual path (never gossiped, never dialled)."""
    try:
        host, _ = parse_addr(addr)
        return ipaddress.ip_address(host) in VIRTUAL_NET
    except (TokenError, ValueError):
        return False


def parse_relay_limit(text: str) -> tuple[int, int]:
    """`--relay-limit PAIRS[,MB/S]` → (pairs, bytes per second per pair); ValueError."""
    pairs_text, _, rate_text = text.partition(",")
    try:
        pairs = int(pairs_text)
        rate = float(rate_text) if rate_text else DEFAULT_RATE / 1e6
    except ValueError:
        raise ValueError(f"{text!r}: expected PAIRS or PAIRS,MB/S (e.g. 4,2)") from None
    if not 1 <= pairs <= 1024 or not 0.01 <= rate <= 10_000:
        raise ValueError(f"{text!r}: 1 to 1024 pairs, 0.01 to 10000 MB/s each")
    return pairs, int(rate * 1e6)


def frame(datagram: bytes) -> bytes:
    return LENGTH.pack(len(datagram)) + datagram


class Framer:
    """Cuts a byte stream into the datagrams it carries; ValueError for a bad length."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buf)
            if not 0 < length <= MAX_DATAGRAM:
                raise ValueError(f"relayed datagram of {length} bytes")
            if len(self._buf) < LENGTH.size + length:
                break
            out.append(bytes(self._buf[LENGTH.size:LENGTH.size + length]))
            del self._buf[:LENGTH.size + length]
        return out


class Bucket:
    """A token bucket of `rate` bytes per second (one second's worth of burst)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._tokens = float(rate)
        self._at = time.monotonic()

    def take(self, n: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


def refusal(enabled: bool, pairs: int, max_pairs: int, src_admitted: bool,
            dst_member: bool) -> str | None:
    """Why a relay refuses a pair, or None when it relays it. The asker may be a member or
    a lite client; the other end must be a member (a client accepts no connection)."""
    if not enabled:
        return "this node does not relay (--no-relay)"
    if not (src_admitted and dst_member):
        return "a relay carries packets only to members it is linked to"
    if pairs >= max_pairs:
        return f"this relay carries its limit of {max_pairs} pairs"
    return None


# ------------------------------------------------------------------ I/O


class _Pipe:
    """Datagrams from `source` written to `sink`, whole, while it keeps up."""

    def __init__(self, sink: Stream, on_datagrams: Callable[[list[bytes]], None]) -> None:
        self.sink = sink
        self.framer = Framer()
        self.blocked = False
        self.on_datagrams = on_datagrams

    def write(self, datagrams: list[bytes]) -> int:
        """Write what the sink takes; returns the bytes written (the rest is dropped)."""
        if self.blocked:
            return 0
        data = b"".join(frame(d) for d in datagrams if 0 < len(d) <= MAX_DATAGRAM)
        if not data:
            return 0
        try:
            if not self.sink.write_nowait(data):
                self.blocked = True
                self.sink.on_writable(self._unblock)
        except ConnectionError:
            return 0
        return len(data)

    def _unblock(self) -> None:
        self.blocked = False


class Relays:
    """Both roles: the relay in the middle and the two ends of relayed paths."""

    def __init__(self, state: MeshState, open_stream: OpenStream) -> None:
        self._state = state
        self._open = open_stream
        self._pairs: set[frozenset[str]] = set()
        self.paths: dict[str, str] = {}  # our virtual path's address → its relay
        self._ends: dict[str, Stream] = {}  # our virtual path's address → its stream
        self.forwarded_bytes = 0
        self.dropped = 0
        self.refused = 0

    def stats(self) -> dict[str, Any]:
        settings = self._state.settings
        return {"enabled": settings.relay_enabled, "pairs": len(self._pairs),
                "max_pairs": settings.relay_max_pairs, "rate": settings.relay_rate,
                "forwarded_bytes": self.forwarded_bytes, "dropped": self.dropped,
                "refused": self.refused}

    async def serve(self, peer: str, stream: Stream) -> None:
        """A RELAY stream a peer opened: a request to relay, or a path from a relay."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                request = await read_frame(stream, REQUEST_MAX)
        except (TimeoutError, FrameError, ConnectionError, asyncio.IncompleteReadError):
            stream.abort()
            return
        if request is None or request.get("t") != "relay":
            stream.abort()
        elif is_node_id(request.get("to")):
            await self._relay(peer, str(request["to"]), stream)
        elif is_node_id(request.get("from")):
            self._path_end(peer, str(request["from"]), stream)
        else:
            stream.abort()

    async def _relay(self, src: str, dst: str, src_stream: Stream) -> None:
        state = self._state
        settings = state.settings
        src_link, dst_link = state.active_link(src), state.active_link(dst)
        pair = frozenset((src, dst))
        why = refusal(settings.relay_enabled, len(self._pairs), settings.relay_max_pairs,
                      src_link is not None and src_link.grant in ("member", "client"),
                      dst != src and dst != state.node_id and dst_link is not None
                      and dst_link.grant == "member")
        if why is None and pair in self._pairs:
            why = "this pair is relayed already"
        if why is not None:
            self.refused += 1
            with contextlib.suppress(ConnectionError, FrameError):
                await write_frame(src_stream, {"t": "error", "reason": why}, REQUEST_MAX)
            src_stream.close()
            return
        self._pairs.add(pair)
        try:
            dst_stream = await self._open(dst, StreamType.RELAY)
            await write_frame(dst_stream, {"t": "relay", "from": src}, REQUEST_MAX)
            await write_frame(src_stream, {"t": "ok"}, REQUEST_MAX)
        except (ConnectionError, FrameError, Exception) as err:  # the pair is not relayed
            self._pairs.discard(pair)
            log.info("relaying %s → %s failed: %s", src[:12], dst[:12], err)
            src_stream.abort()
            return
        log.info("relaying between %s and %s", src[:12], dst[:12])
        self._join(pair, src_stream, dst_stream)

    def _join(self, pair: frozenset[str], a: Stream, b: Stream) -> None:
        rate = self._state.settings.relay_rate
        buckets = (Bucket(rate), Bucket(rate))

        def forward(source_pipe: _Pipe, sink_pipe: _Pipe, bucket: Bucket) -> Callable[
                [bytes], None]:
            def on_data(data: bytes) -> None:
                try:
                    datagrams = source_pipe.framer.feed(data)
                except ValueError:
                    end(None)
                    return
                allowed = [d for d in datagrams if bucket.take(len(d))]
                written = sink_pipe.write(allowed)
                self.forwarded_bytes += written
                self.dropped += len(datagrams) - len(allowed) + (0 if written else len(allowed))
            return on_data

        ended = False

        def end(_: BaseException | None) -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            self._pairs.discard(pair)
            for stream in (a, b):
                stream.abort()

        pipe_a, pipe_b = _Pipe(a, lambda _: None), _Pipe(b, lambda _: None)
        a.set_receiver(forward(pipe_a, pipe_b, buckets[0]), end)
        b.set_receiver(forward(pipe_b, pipe_a, buckets[1]), end)

    # ---------------------------------------------------------------- path ends

    async def open_path(self, relay: str, peer: str, timeout: float) -> str:
        """Ask `relay` to carry our packets to `peer`; returns the virtual address to dial
        (ConnectionError with the relay's reason when it will not)."""
        stream = await self._open(relay, StreamType.RELAY)
        try:
            async with asyncio.timeout(timeout):
                await write_frame(stream, {"t": "relay", "to": peer}, REQUEST_MAX)
                answer = await read_frame(stream, REQUEST_MAX)
        except (TimeoutError, FrameError, asyncio.IncompleteReadError) as err:
            stream.abort()
            raise ConnectionError(f"relay {relay[:12]} did not answer: {err}") from None
        if answer is None or answer.get("t") != "ok":
            reason = answer.get("reason") if answer is not None else None
            stream.abort()
            raise ConnectionError(f"relay {relay[:12]} refused: "
                                  f"{reason[:200] if isinstance(reason, str) else 'no reason'}")
        return self._attach(relay, peer, stream)

    def release(self, addr: str) -> None:
        """A connection over our virtual path `addr` closed (its peer moved to a direct
        link, or left): end the path unless another connection uses it, so the relay frees
        the pair."""
        if any(format_addr(*link.conn.remote_address) == addr and not link.conn.is_closed
               for link in self._state.links.values()):
            return
        stream = self._ends.pop(addr, None)
        if stream is not None:
            stream.close()

    def _path_end(self, relay: str, peer: str, stream: Stream) -> None:
        link = self._state.active_link(relay)
        if link is None or link.grant != "member" or peer == self._state.node_id:
            stream.abort()
            return
        self._attach(relay, peer, stream)

    def _attach(self, relay: str, peer: str, stream: Stream) -> str:
        transport = self._state.transport
        key = virtual_addr(relay, peer)
        addr = format_addr(*key)
        if transport is None:
            stream.abort()
            return addr
        self.paths[addr] = relay
        while len(self.paths) > 4 * self._state.settings.relay_max_pairs + 64:
            self.paths.pop(next(iter(self.paths)))
        pipe = _Pipe(stream, lambda _: None)

        def on_data(data: bytes) -> None:
            try:
                datagrams = pipe.framer.feed(data)
            except ValueError:
                on_end(None)
                return
            if datagrams:
                transport.inject(datagrams, key)

        def on_end(_: BaseException | None) -> None:
            if self._ends.get(addr) is stream:  # (not a newer path to the same peer)
                del self._ends[addr]
                transport.remove_virtual(key)
            stream.abort()

        transport.add_virtual(key, pipe.write)
        self._ends[addr] = stream
        stream.set_receiver(on_data, on_end)
        return addr
