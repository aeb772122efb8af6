"""When a QUIC connection acts on its own, apart from what it does then.

A connection is driven by events: datagrams in, application calls, and the wake-ups kept
here: one coalesced transmit per event-loop pass (or within cork_s of a write that says
more of its message follows), qh3's next deadline (loss detection,
ACK, idle timeout), the keepalive PING and one-shot timers (handshake timeout, the linger
after a close). `stop()` cancels all of them for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .settings import ACK_HOLD_PACKETS, ACK_HOLD_S


class ConnectionTimers:
    """The handles of one connection's wake-ups; the callbacks are the connection's."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        transmit: Callable[[], None],
        on_deadline: Callable[[float], None],
        keepalive: Callable[[], None],
        keepalive_s: float,
        cork_s: float,
    ) -> None:
        self._loop = loop
        self._transmit = transmit
        self._on_deadline = on_deadline
        self._keepalive = keepalive
        self._keepalive_s = keepalive_s
        self._cork_s = cork_s
        self._transmit_handle: asyncio.Handle | None = None
        self._cork_handle: asyncio.TimerHandle | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._deadline_at: float | None = None
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._oneshots: list[asyncio.TimerHandle] = []
        self._unacked = 0  # datagrams received since we last sent one
        self._unacked_since = 0.0
        self.stopped = False

    # ---- the transmit: once per loop pass, however many writes asked for it

    def transmit_soon(self) -> None:
        if self._transmit_handle is None and not self.stopped:
            self._transmit_handle = self._loop.call_soon(self._transmit)

    def transmit_corked(self) -> None:
        """A transmit within cork_s, unless one happens sooner (the rest of the message
        arriving asks for one at once)."""
        if self._transmit_handle is None and self._cork_handle is None and not self.stopped:
            self._cork_handle = self._loop.call_later(self._cork_s, self._transmit)

    def transmitting(self) -> None:
        """A transmit runs now: a scheduled one would find nothing left to send."""
        handle, self._transmit_handle = self._transmit_handle, None
        if handle is not None:
            handle.cancel()  # no-op when we are that handle
        cork, self._cork_handle = self._cork_handle, None
        if cork is not None:
            cork.cancel()

    # ---- qh3's deadline, with the ACK hold

    def received(self, datagrams: int, now: float) -> None:
        if not self._unacked:
            self._unacked_since = now
        self._unacked += datagrams

    def ack_may_wait(self) -> bool:
        """Few enough packets await our ACK for it to wait for data to carry it."""
        return 1 <= self._unacked <= ACK_HOLD_PACKETS

    def sent(self) -> None:
        self._unacked = 0  # whatever we send carries the pending ACK

    def rearm(self, timer: tuple[str, float] | None) -> None:
        """Wake at qh3's next deadline `(kind, at)`, except that the ACK of a few packets
        waits up to ACK_HOLD_S for a packet of ours to carry it."""
        at = None if timer is None else self._hold_ack(*timer)
        if self._deadline_handle is not None and self._deadline_at != at:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if self._deadline_handle is None and at is not None:
            self._deadline_handle = self._loop.call_at(at, self._fire_deadline)
        self._deadline_at = at

    def _hold_ack(self, kind: str, at: float) -> float:
        if kind == "ack_application" and self.ack_may_wait():
            return max(at, self._unacked_since + ACK_HOLD_S)
        return at

    def _fire_deadline(self) -> None:
        self._deadline_handle = None
        if self.stopped:
            return
        now = max(self._deadline_at or 0.0, self._loop.time())
        self._deadline_at = None
        self._on_deadline(now)

    # ---- keepalive and one-shots

    def restart_keepalive(self) -> None:
        """The keepalive fires `keepalive_s` from now (0 turns it off)."""
        if self._keepalive_s <= 0 or self.stopped:
            return
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._keepalive_handle = self._loop.call_later(self._keepalive_s, self._keepalive)

    def later(self, delay: float, callback: Callable[[], None]) -> None:
        self._oneshots.append(self._loop.call_later(delay, callback))

    def stop(self) -> None:
        self.stopped = True
        handles: list[asyncio.Handle | None] = [
            *self._oneshots, self._keepalive_handle, self._deadline_handle,
            self._transmit_handle, self._cork_handle,
        ]
        for handle in handles:
            if handle is not None:
                handle.cancel()
        self._oneshots.clear()
        self._keepalive_handle = None
        self._deadline_handle = None
        self._transmit_handle = None
        self._cork_handle = None
