"""Where the node listens: the HTTP servers (API and console) and the mesh's UDP socket,
with one clear line for a port that cannot be had."""

from __future__ import annotations

import errno

from aiohttp import web

from ..api.serving import EdgeRunner, raise_open_file_limit
from ..errors import UserError


async def serve_http(app: web.Application, host: str, port: int, what: str,
                     flag: str, runners: list[web.AppRunner]) -> None:
    """Serve `app` on host:port (kept in `runners` for shutdown); a UserError naming
    `flag` when the port is taken."""
    if not runners:
        raise_open_file_limit()  # every connection is a file descriptor
    runner = EdgeRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    runners.append(runner)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(f"{what} port {port} is already in use: stop what holds it "
                            f"or choose another with {flag}") from None
        raise UserError(f"cannot listen on {what} port {port}: {err.strerror}") from None


def bind_problem(err: OSError, host: str, port: int) -> str:
    """One line for a QUIC socket that cannot be bound."""
    if err.errno == errno.EADDRINUSE:
        return (f"UDP port {port} on {host} is already in use: stop what holds it or choose "
                "another --bind-port")
    if err.errno == errno.EADDRNOTAVAIL:
        return f"--bind-host {host} is not an address of this machine"
    return f"cannot listen for the mesh on UDP {host}:{port}: {err.strerror or err}"
