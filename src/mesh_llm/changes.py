"""A version counter that wakes every waiter on change: the node's single "something changed"."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ChangeFeed:
    """Consumers remember the version they saw and wait for a newer one."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_newer(self, seen: int, timeout: float) -> bool:
        """True once `version` > `seen`; False if `timeout` passed first."""
        if self.version > seen:
            return True
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return self.version > seen
        return True

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Whether `condition()` holds, checked now and after every change, within
        `timeout` seconds; False once the time is up and it still does not."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = self.version
            if condition():
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await self.wait_newer(seen, left)
