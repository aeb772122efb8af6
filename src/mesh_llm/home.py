"""The node's home dir: logs, keys and a lock that says which process owns it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import UserError

LOCK_NAME = "mesh-llm.lock"


class HomeDir:
    """Holds an exclusive lock on the home dir for as long as the node runs."""

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()
        self.logs = self.path / "logs"
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create home dir {self.path}: {err.strerror}") from None
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = running_pid(self.path)
            raise UserError(
                f"another mesh-llm (pid {other}) is using {self.path}: stop it with "
                f"`mesh-llm stop --home {self.path}` or give this node its own --home"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)
            self._lock_fd = None


def running_pid(home: Path) -> int | None:
    """The pid of the node that holds `home`'s lock, or None when no node does."""
    path = home.expanduser() / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
