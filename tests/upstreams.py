"""Loopback servers and a plain TCP upstream for relay tests (the node's own connects also count
connections per llama-server: `inference.generation.counted_tcp_connect`)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from mesh_llm.api.proxy import Upstream


def tcp_upstream(host: str, port: int) -> Upstream:
    """An upstream that opens a new TCP connection to host:port per request."""
    async def connect(protocol: asyncio.Protocol) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: protocol, host, port)
    return Upstream(connect, key=f"tcp {host}:{port}")


async def serve_on_loopback(app: web.Application) -> web.AppRunner:
    """Run `app` on 127.0.0.1 at a free port (`runner.addresses[0][1]`); `cleanup()` ends it."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner
