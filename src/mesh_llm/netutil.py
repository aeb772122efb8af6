"""Small network helpers shared by the engine, the CLI and the tests' view of them."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel just handed out on `host` (for a child that binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bearer(api_key: str | None) -> dict[str, str]:
    """The header a node started with --api-key wants (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
