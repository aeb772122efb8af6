"""ChangeFeed.wait_until: a condition checked now and after every change, within a bound."""

from __future__ import annotations

import asyncio

from mesh_llm.changes import ChangeFeed


async def test_a_condition_that_holds_returns_at_once() -> None:
    assert await ChangeFeed().wait_until(lambda: True, 0.0)


async def test_a_change_that_makes_it_hold_wakes_the_waiter() -> None:
    feed, state, checks = ChangeFeed(), {"ready": False}, []

    def ready() -> bool:
        checks.append(1)
        return state["ready"]

    waiter = asyncio.create_task(feed.wait_until(ready, 30.0))
    await asyncio.sleep(0)  # one loop pass: the waiter checks once, then blocks on the feed
    assert len(checks) == 1 and not waiter.done()
    state["ready"] = True
    feed.bump()
    assert await waiter
    assert len(checks) == 2, "checked again on the change, not polled"


async def test_it_is_false_when_the_time_runs_out() -> None:
    checks: list[int] = []
    assert not await ChangeFeed().wait_until(lambda: bool(checks.append(1)), 0.01)
    assert len(checks) >= 1
