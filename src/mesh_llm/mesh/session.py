"""The gossip on one link: our state out, the peer's in, pings for RTT and liveness.

Each side opens one GOSSIP stream to the other (see gossip.py for the messages) and sends
its state on connect and on every change. Every `ping_interval_s` a ping goes out; its
pong gives the RTT a tunnelled request really pays. A peer we hear nothing from for
`silence_timeout_s` is treated as lost: a killed peer sends nothing, not even a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from .gossip import (
    GoodbyeMsg,
    GossipError,
    Intro,
    IntroRequest,
    PingMsg,
    StateMsg,
    goodbye_message,
    parse_gossip,
    ping_message,
)
from .protocol import FrameError, StreamType, encode_frame, read_frame
from .quic import Connection, Stream
from .settings import MeshSettings

log = logging.getLogger("mesh_llm.mesh")

MAX_PINGS_IN_FLIGHT = 8


class GossipSession:
    """Gossip over `conn` with `peer_id`. `state()` builds our state message; the peer's
    messages go to `on_state`, `on_goodbye`, `on_rtt` (ms), `on_intro` (introductions
    asked for or given) and `on_bad` (a reason)."""

    def __init__(self, conn: Connection, peer_id: str, settings: MeshSettings, *,
                 state: Callable[[], dict[str, Any]],
                 on_state: Callable[[StateMsg], None],
                 on_goodbye: Callable[[], None],
                 on_rtt: Callable[[float], None],
                 on_bad: Callable[[str], None],
                 on_intro: Callable[[IntroRequest | Intro], None] | None = None) -> None:
        self.conn = conn
        self.peer_id = peer_id
        self.settings = settings
        self._state = state
        self._on_state = on_state
        self._on_goodbye = on_goodbye
        self._on_rtt = on_rtt
        self._on_bad = on_bad
        self._on_intro = on_intro
        self._out: Stream | None = None
        self._ping_n = 0
        self._pings: dict[int, float] = {}
        self._ping_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self.last_heard = time.monotonic()
        self.on_stream: Callable[[int], None] | None = None  # our GOSSIP stream's id

    async def start(self) -> None:
        """Open our GOSSIP stream and send our state; pings follow."""
        try:
            stream = await self.conn.open_stream()
            stream.write_nowait(bytes((StreamType.GOSSIP,)))
        except ConnectionError as err:
            log.debug("no gossip stream to %s: %s", self.peer_id[:12], err)
            return
        self._out = stream
        if self.on_stream is not None:
            self.on_stream(stream.stream_id)
        self.send_state()
        if self._stopped:
            return
        # First ping a moment later: right now the peer is busy setting the link up, and
        # that would inflate the first sample. Until then rtt_ms falls back to QUIC's.
        self._ping_timer = asyncio.get_running_loop().call_later(
            min(1.0, self.settings.ping_interval_s), self._ping)

    def stop(self) -> None:
        """No more pings (the stream stays open for a goodbye)."""
        self._stopped = True
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None

    def send_state(self) -> None:
        self._send(self._state())

    def say_goodbye(self) -> None:
        """Tell the peer we leave on purpose (it forgets us instead of redialling)."""
        if self._out is not None:
            with contextlib.suppress(ConnectionError):
                self._out.write_nowait(encode_frame(goodbye_message()))

    def send(self, message: dict[str, Any]) -> None:
        """One more message on our GOSSIP stream (dropped if the link is gone)."""
        self._send(message)

    def _send(self, message: dict[str, Any]) -> None:
        stream = self._out
        if stream is None or self.conn.is_closed:
            return
        try:
            stream.write_nowait(encode_frame(message))
        except (ConnectionError, FrameError) as err:
            log.debug("gossip to %s failed: %s", self.peer_id[:12], err)

    def _ping(self) -> None:
        if self.conn.is_closed or self._stopped:
            return
        silent = time.monotonic() - self.last_heard
        if silent > self.settings.silence_timeout_s:
            # QUIC alone would wait for its 120 s idle timeout: treat the silence as a lost
            # connection (reconnect follows).
            log.info("nothing from %s for %.0f s", self.peer_id[:12], silent)
            self.conn.abort()
            return
        loop = asyncio.get_running_loop()
        self._ping_n += 1
        self._pings[self._ping_n] = loop.time()
        while len(self._pings) > MAX_PINGS_IN_FLIGHT:
            self._pings.pop(next(iter(self._pings)))
        self._send(ping_message(self._ping_n, time.time()))
        self._ping_timer = loop.call_later(self.settings.ping_interval_s, self._ping)

    async def read(self, stream: Stream) -> None:
        """Serve the peer's GOSSIP stream until it ends (its type byte already read)."""
        try:
            while True:
                message = await read_frame(stream)
                if message is None:
                    return
                self.last_heard = time.monotonic()
                parsed = parse_gossip(message, self.peer_id)
                if isinstance(parsed, StateMsg):
                    self._on_state(parsed)
                elif isinstance(parsed, PingMsg):
                    self._on_ping(parsed)
                elif isinstance(parsed, GoodbyeMsg):
                    self._on_goodbye()
                    return
                elif isinstance(parsed, IntroRequest | Intro) and self._on_intro is not None:
                    self._on_intro(parsed)
        except (FrameError, GossipError) as err:
            log.warning("bad gossip from %s: %s; dropping the connection", self.peer_id[:12],
                        err)
            self._on_bad("bad gossip")
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            stream.close()

    def _on_ping(self, msg: PingMsg) -> None:
        if not msg.pong:
            self._send(ping_message(msg.n, msg.ts, pong=True))
            return
        sent = self._pings.pop(msg.n, None)
        if sent is not None:
            self._on_rtt((asyncio.get_running_loop().time() - sent) * 1000.0)
