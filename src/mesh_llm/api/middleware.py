"""The one Host/Origin check in front of every API and console route (rule: guard.py)."""

from __future__ import annotations

from aiohttp import web

from .errors import json_error
from .guard import AllowedHosts, host_allowed, origin_allowed

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_guard(allowed: AllowedHosts):  # type: ignore[no-untyped-def]
    """403 JSON for a `Host` we do not serve (DNS rebinding), and for a state-changing
    request whose `Origin` is a page of some other host (cross-site requests)."""

    @web.middleware
    async def guard(request: web.Request, handler):  # type: ignore[no-untyped-def]
        hosts = request.headers.getall("Host", [])
        if len(hosts) > 1 or not host_allowed(hosts[0] if hosts else None, allowed):
            return json_error(403, "this node does not serve that Host name (open it as "
                              "127.0.0.1 or localhost, or a name given with --advertise)",
                              "permission_error")
        if request.method not in SAFE_METHODS:
            origins = request.headers.getall("Origin", [])
            if len(origins) > 1 or not origin_allowed(origins[0] if origins else None,
                                                      allowed):
                return json_error(403, "cross-origin requests are refused: this Origin is "
                                  "not a page of this node", "permission_error")
        return await handler(request)

    return guard
