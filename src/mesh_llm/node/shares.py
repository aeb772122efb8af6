"""The servers this node shares (`--share URL`): each one's model list kept fresh, and the
requests for their models relayed to them, from our own API or from a peer's API tunnel.

A server is re-read every REFRESH_S, sooner while it fails (RETRY_S) and at once when a
relayed request cannot reach it, so that its models leave the mesh within 30 s of it
stopping and come back soon after it returns. Only the sharing node knows the server's
key: it is added to the request here (api/shared.server_request) and shown nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..api.proxy import Upstream
from ..api.share_client import ShareFetchError, connect, fetch_models, ssl_context
from ..api.shared import MAX_SHARED_MODELS, SHARED_KEY_PREFIX, ShareTarget, server_request
from ..api.tunnel_gate import ApiRequestGate, TunnelledRequest
from ..mesh.quic import Stream
from ..mesh.tunnel import relay_to_tcp

log = logging.getLogger("mesh_llm.share")

REFRESH_S = 20.0  # + the list's 5 s timeout: a stopped server leaves within 30 s
RETRY_S = 5.0  # while a server fails: how soon it is tried again


class SharedServer:
    """One --share: its target and what its last read found."""

    def __init__(self, target: ShareTarget) -> None:
        self.target = target
        self.models: tuple[str, ...] = ()
        self.ok = False
        self.last_error: str | None = "not read yet"
        self.wake = asyncio.Event()  # read again now

    def status_json(self) -> dict[str, Any]:
        """The status's entry: never the key."""
        return {"url": self.target.url, "models": list(self.models), "ok": self.ok,
                "last_error": self.last_error}

    async def connect(self, protocol: asyncio.Protocol) -> None:
        """`connect`, and a failure makes the server read again at once."""
        try:
            await connect(self.target, protocol)
        except (OSError, TimeoutError):
            self.wake.set()
            raise


class SharedServers:
    """Every --share of this node; `on_change` hears when the models shared change."""

    def __init__(self, targets: Sequence[ShareTarget], on_change: Callable[[], None]) -> None:
        self.servers = [SharedServer(t) for t in targets]
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []

    def __bool__(self) -> bool:
        return bool(self.servers)

    def names(self) -> tuple[str, ...]:
        """The models shared now (answering servers only), each once, the first server's
        first; at most what an announcement carries."""
        out: list[str] = []
        for server in self.servers:
            out += [n for n in server.models if n not in out]
        return tuple(out[:MAX_SHARED_MODELS])

    def server_of(self, name: str) -> SharedServer | None:
        """The first answering server that lists `name`."""
        return next((s for s in self.servers if s.ok and name in s.models), None)

    def status_json(self) -> list[dict[str, Any]]:
        return [s.status_json() for s in self.servers]

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep_fresh(s)) for s in self.servers]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _keep_fresh(self, server: SharedServer) -> None:
        while True:
            server.wake.clear()
            try:
                await self._read(server)
            except Exception as err:  # never let one odd answer end the polling for good
                log.warning("shared server %s: %s", server.target.url, err)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wake.wait(), REFRESH_S if server.ok else RETRY_S)

    async def _read(self, server: SharedServer) -> None:
        """Read the server's list once; log and tell the node when what it shares changes."""
        url = server.target.url
        try:
            models, error = tuple(await fetch_models(server.target)), None
        except ShareFetchError as err:
            models, error = (), str(err)
        before, was_ok, was_error = server.models, server.ok, server.last_error
        server.models, server.ok, server.last_error = models, error is None, error
        if error is not None and (was_ok or was_error != error):
            log.warning("shared server %s does not answer: %s", url, error)
        elif error is None and (not was_ok or models != before):
            log.info("sharing %s from %s", ", ".join(models) or "no model", url)
        if models != before:
            self._on_change()

    # --- requests for a shared model ---
    def upstream(self, name: str) -> Upstream:
        """Where our own API sends a request for `name`: straight to its server."""
        server = self.server_of(name)
        if server is None:
            return Upstream(None, f"model {name}: its server does not answer")
        target = server.target

        def build(path: str, headers: dict[str, str], body: bytes) -> bytes:
            return server_request(target, path, name, body, headers.get("Accept", "*/*"))
        return Upstream(server.connect, key=f"share {target.url} {name}", build=build)

    async def relay_tunnel(self, peer_id: str, stream: Stream, gate: ApiRequestGate,
                           request: TunnelledRequest, key: str) -> None:
        """A peer's API request for a model we share (`key`: shared:NAME): sent on to the
        server with its key, its answer streamed back over the tunnel as it arrives. Only
        the API's POST routes ever reach the server (the gate checked the route)."""
        name = key[len(SHARED_KEY_PREFIX):]
        server = self.server_of(name)
        if server is None or request.head.method != "POST":
            stream.abort()  # the caller's relay looks again (the model left, or soon will)
            return
        try:
            preface = server_request(server.target, request.head.path, name, request.body,
                                     request.head.header("accept") or "*/*")
        except ValueError as err:
            log.warning("refused a tunnelled request from %s: %s", peer_id[:12], err)
            stream.abort()
            return
        target = server.target
        context = ssl_context(target)
        transport = await relay_to_tcp(
            stream, target.host, target.port, decoder=gate, preface=preface,
            ssl=context, server_hostname=target.host if context is not None else None,
            on_decode_error=functools.partial(_refused, peer_id))
        if transport is None:
            server.wake.set()  # the server did not take the connection: read it again now


def _refused(peer_id: str, err: ValueError) -> None:
    log.warning("refused a tunnelled request from %s: %s", peer_id[:12], err)
