"""What api/serving.py relies on in aiohttp beyond its public API, checked against the
installed release: pyproject.toml allows only the minor release this was read against, and
this test is the first to fail when an upgrade moves one of these parts. (qh3's private
parts are in mesh/quic/qh3_adapter.py, checked by tests/mesh/test_quic_adapter.py.)"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

from aiohttp import web, web_protocol, web_server

from mesh_llm.api.serving import EdgeRunner, EdgeServer

CHECKED_AIOHTTP = "3.14."  # the minor release serving.py was read against (and pyproject's)
CHECKED_QH3 = "2.1."  # likewise for qh3_adapter.py


def test_the_installed_releases_are_the_checked_ones() -> None:
    assert version("aiohttp").startswith(CHECKED_AIOHTTP), version("aiohttp")
    assert version("qh3").startswith(CHECKED_QH3), version("qh3")


def test_aiohttp_still_has_the_hooks_serving_overrides() -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)
    params = inspect.signature(web_protocol.RequestHandler.handle_error).parameters
    assert list(params) == ["self", "request", "status", "exc", "message"]
    for name in ("connection_made", "connection_lost", "log_exception"):
        assert callable(getattr(web_protocol.RequestHandler, name)), name
    assert "manager" in inspect.signature(web_protocol.RequestHandler.__init__).parameters


async def test_an_edge_server_copies_what_aiohttp_built() -> None:
    """EdgeServer rebuilds aiohttp's Server from its private `_loop` and `_kwargs`: the
    runner's options (the keep-alive bound) must survive the copy."""
    runner = EdgeRunner(web.Application(), head_timeout_s=7.0, max_per_ip=3)
    await runner.setup()
    try:
        server = runner.server
        assert isinstance(server, EdgeServer) and isinstance(server, web_server.Server)
        assert server._loop is asyncio.get_running_loop()
        assert server._kwargs["keepalive_timeout"] == 7.0
        assert server.max_per_ip == 3
        handler = server()
        assert isinstance(handler, web_protocol.RequestHandler)
    finally:
        await runner.cleanup()
