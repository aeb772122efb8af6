"""Talking to a shared server (api/shared.py): reading its model list, and connecting to
it for a relayed request. The server is untrusted input like any network peer: every
wait is bounded, the list's size is bounded, redirects are not followed (a redirect could
send the key elsewhere)."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from .shared import MAX_LIST_BYTES, ShareTarget, parse_model_list

LIST_TIMEOUT_S = 5.0  # a model list that takes longer counts as a server that stopped
CONNECT_TIMEOUT_S = 10.0


class ShareFetchError(Exception):
    """The server's model list could not be read; the message is one line for the status."""


def ssl_context(target: ShareTarget) -> ssl.SSLContext | None:
    """TLS with the system's CAs for an https server, else None."""
    return ssl.create_default_context() if target.scheme == "https" else None


async def fetch_models(target: ShareTarget, timeout: float = LIST_TIMEOUT_S) -> list[str]:
    """The model names the server lists now (GET BASE/models with its key)."""
    limits = aiohttp.ClientTimeout(total=timeout)
    try:
        async with aiohttp.ClientSession(timeout=limits) as session, session.get(
                target.models_url, headers=target.auth_headers(), allow_redirects=False,
                ssl=ssl_context(target) or False) as resp:
            if resp.status != 200:
                raise ShareFetchError(f"GET {target.models_url} answered {resp.status}")
            body = await _read_bounded(resp.content, MAX_LIST_BYTES + 1)
    except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
        raise ShareFetchError(f"GET {target.models_url}: no answer within {timeout:g} s") \
            from None
    except (aiohttp.ClientError, OSError, ValueError) as err:
        raise ShareFetchError(f"GET {target.models_url}: {_one_line(err)}") from None
    try:
        return parse_model_list(body)
    except ValueError as err:
        raise ShareFetchError(f"GET {target.models_url}: {err}") from None


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, or its first `limit` bytes when it is longer (the parser refuses those)."""
    out = bytearray()
    while len(out) < limit:
        chunk = await content.read(limit - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


async def connect(target: ShareTarget, protocol: asyncio.Protocol) -> None:
    """Run `protocol` on a new connection to the server (TLS for https): the API relay's
    `Connect` for a model this node shares."""
    loop = asyncio.get_running_loop()
    context = ssl_context(target)
    await asyncio.wait_for(loop.create_connection(
        lambda: protocol, target.host, target.port, ssl=context,
        server_hostname=target.host if context is not None else None), CONNECT_TIMEOUT_S)


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())[:300]
