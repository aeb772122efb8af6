"""A plain loopback TCP upstream for relay tests (the node's own connects also count
connections per llama-server: `inference.generation.counted_tcp_connect`)."""

from __future__ import annotations

import asyncio

from mesh_llm.api.proxy import Upstream


def tcp_upstream(host: str, port: int) -> Upstream:
    """An upstream that opens a new TCP connection to host:port per request."""
    async def connect(protocol: asyncio.Protocol) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: protocol, host, port)
    return Upstream(connect, key=f"tcp {host}:{port}")
