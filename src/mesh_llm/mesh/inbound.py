"""What peers open: connections (authenticated within `auth_timeout_s` or dropped) and
streams (held until the link is authenticated, then served by type).

The dialer opens the AUTH stream first; until it succeeds, other streams are held (a few)
and served by nobody. A peer admitted by a client invite may open only the stream types
registered for clients. A node that joined with a client invite holds no secret: it
accepts nobody.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from .addresses import remote, source
from .auth import AuthError, AuthResult, run_acceptor
from .protocol import StreamType
from .quic import CLOSE_AUTH_FAILED, CLOSE_SHUTDOWN, RESET_REFUSED, Connection, Stream
from .state import Link, MeshState

log = logging.getLogger("mesh_llm.mesh")

StreamHandler = Callable[[str, Stream], Awaitable[None] | None]

RESERVED_TYPES = (StreamType.AUTH, StreamType.GOSSIP)


class Inbound:
    """Accepts connections and serves peer-opened streams. `register(conn, dialed)` makes
    a Link; `adopt(link, result)` takes an authenticated one into use."""

    def __init__(self, state: MeshState, *,
                 register: Callable[[Connection, bool], Link],
                 adopt: Callable[[Link, AuthResult], bool]) -> None:
        self._state = state
        self._register = register
        self._adopt = adopt
        self._handlers: dict[int, StreamHandler] = {}
        self._client_types: set[int] = set()  # stream types a client-invite peer may open

    def add_handler(self, stream_type: int, handler: StreamHandler, clients: bool) -> None:
        if not 0 < int(stream_type) < 256 or stream_type in RESERVED_TYPES:
            raise ValueError(f"stream type {stream_type} is reserved or out of range")
        self._handlers[int(stream_type)] = handler
        if clients:
            self._client_types.add(int(stream_type))
        else:
            self._client_types.discard(int(stream_type))

    # ---------------------------------------------------------------- connections

    def on_accepted(self, conn: Connection) -> None:
        state = self._state
        if state.stopping:
            conn.close(CLOSE_SHUTDOWN, "shutting down")
            return
        if state.secret is None:  # a client-invite node cannot check anyone: it only dials
            conn.close(CLOSE_AUTH_FAILED, "a lite client accepts no connections")
            return
        link = self._register(conn, False)
        link.timers.append(asyncio.get_running_loop().call_later(
            state.settings.auth_timeout_s, self._auth_deadline, link))

    def _auth_deadline(self, link: Link) -> None:
        if not link.authenticated and not link.conn.is_closed:
            self._state.refusals.warning(
                source(link.conn), "dropping connection from %s: no authentication within "
                "%g s", remote(link.conn), self._state.settings.auth_timeout_s)
            self._state.close_link(link, CLOSE_AUTH_FAILED, "authentication timeout")

    async def _accept_auth(self, link: Link, stream: Stream) -> None:
        state, conn = self._state, link.conn
        try:
            async with asyncio.timeout(state.settings.first_byte_timeout_s):
                head = await stream.readexactly(1)
            if head[0] != StreamType.AUTH:
                raise AuthError(f"first stream has type {head[0]}, not auth")
            if state.secret is None:
                raise AuthError("this node holds no mesh secret")
            result = await run_acceptor(stream, state.identity, state.secret,
                                        conn.server_cert_fingerprint,
                                        state.settings.auth_timeout_s)
        except (AuthError, TimeoutError, ConnectionError, asyncio.IncompleteReadError) as err:
            state.refused += 1
            if not state.stopping:
                state.refusals.warning(source(conn), "refused connection from %s: %s",
                                       remote(conn), err or type(err).__name__)
            state.close_link(link, CLOSE_AUTH_FAILED, "authentication failed")
            return
        stream.write_eof()
        self._adopt(link, result)

    # ---------------------------------------------------------------- streams

    def on_stream(self, link: Link, stream: Stream) -> None:
        if link.authenticated:
            self.serve_soon(link, stream)
        elif not link.dialed and not link.auth_started:
            link.auth_started = True
            self._state.spawn(self._accept_auth(link, stream), "mesh-auth")
        elif len(link.pending) < self._state.settings.max_pending_streams:
            link.pending.append(stream)  # held, not served, until auth succeeds
        else:
            stream.abort(RESET_REFUSED)

    def serve_soon(self, link: Link, stream: Stream) -> None:
        self._state.spawn(self._serve(link, stream), "mesh-stream")

    async def _serve(self, link: Link, stream: Stream) -> None:
        peer = link.peer_id
        assert peer is not None
        try:
            async with asyncio.timeout(self._state.settings.first_byte_timeout_s):
                head = await stream.readexactly(1)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            stream.abort(RESET_REFUSED)
            return
        kind = head[0]
        if kind == StreamType.GOSSIP:
            if link.session is not None:
                link.control.add(stream.stream_id)
                await link.session.read(stream)
            else:
                stream.abort(RESET_REFUSED)
            return
        refusals = self._state.refusals
        handler = self._handlers.get(kind)
        if handler is None:
            refusals.info(f"type {peer}", "peer %s opened a stream of unknown type %d; "
                          "refused", peer[:12], kind)
            stream.abort(RESET_REFUSED)
            return
        if link.grant == "client" and kind not in self._client_types:
            refusals.warning(f"grant {peer}", "peer %s (client invite) opened a stream of "
                             "type %d, which only members may open; refused", peer[:12], kind)
            stream.abort(RESET_REFUSED)
            return
        try:
            result = handler(peer, stream)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            stream.abort()
            raise
        except ConnectionError as err:
            log.debug("stream type %d from %s ended: %s", kind, peer[:12], err)
            stream.abort()
        except Exception:
            log.exception("handler for stream type %d from %s failed", kind, peer[:12])
            stream.abort()
