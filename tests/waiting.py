"""The one "wait until" of the tests: poll a condition with a deadline, never sleep blind.

`wait_until` for plain test code (threads, processes), `wait_until_async` for tests on an
event loop, whose condition may itself be a coroutine. Both return the condition's truthy
value and raise AssertionError naming what was awaited when the time runs out.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], what: str, timeout: float, interval: float = 0.05,
               *, check: Callable[[], None] | None = None,
               ignore: tuple[type[BaseException], ...] = (),
               detail: Callable[[], str] | None = None) -> T:
    """Poll `predicate()` until it returns something truthy.

    `check()` runs before each poll and may fail the wait at once (a process that died);
    exceptions in `ignore` count as "not yet"; `detail()` adds context to the timeout message.
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            found = predicate()
        except ignore:
            found = None  # type: ignore[assignment]
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                                 + (f":\n{detail()}" if detail is not None else ""))
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], T | Awaitable[T]], what: str,
                           timeout: float, interval: float = 0.01) -> T:
    """`wait_until` on the running loop: the loop keeps running between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = predicate()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found  # type: ignore[return-value]
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
