"""The console's chart samples: rates from cumulative readings, requests in the last minute,
TTFT percentiles, bounds; and the SSE stream that hands the history to a page opened later."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import aiohttp

from mesh_llm.api.proxy import ApiProxy, Upstream
from mesh_llm.api.serving import EdgeRunner
from mesh_llm.changes import ChangeFeed
from mesh_llm.console.charts import MAX_SERIES, Reading, Sampler, SampleRing, percentile
from upstreams import OneUpstream
from waiting import wait_until_async

T0 = 1_800_000_000.0


def reading(tokens: Mapping[str, int] | None = None, requests: Mapping[str, int] | None = None,
            ttft: list[float] | None = None,
            rtt: Mapping[str, float | None] | None = None) -> Reading:
    return Reading(tokens or {}, requests or {}, ttft or [], rtt or {})


def test_tokens_per_second_is_the_rate_between_two_readings() -> None:
    ring = SampleRing()
    first = ring.add(T0, reading(tokens={"m": 10}))
    assert first["tokens_per_s"] == {"m": 10.0}  # counted from zero, a period before
    assert ring.add(T0 + 1, reading(tokens={"m": 40}))["tokens_per_s"] == {"m": 30.0}
    assert ring.add(T0 + 3, reading(tokens={"m": 50}))["tokens_per_s"] == {"m": 5.0}
    # a model that went away and came back counted afresh: never a negative rate
    assert ring.add(T0 + 4, reading(tokens={"m": 2}))["tokens_per_s"] == {"m": 0.0}


def test_requests_per_minute_look_back_one_window() -> None:
    ring = SampleRing(window_s=60)
    counts = [ring.add(T0 + s, reading(requests={"a": s, "b": 2 * s}))["requests_per_min"]
              for s in range(0, 121)]
    assert counts[30] == {"a": 30, "b": 60}  # under a minute of history: since the start
    assert counts[60] == {"a": 60, "b": 120}
    assert counts[90] == {"a": 60, "b": 120}  # one a second, over the last minute
    assert counts[120] == {"a": 60, "b": 120}
    assert len(ring._requests) <= 62, "only a window of readings is kept"


def test_ttft_percentiles_and_rtt_per_peer() -> None:
    ring = SampleRing()
    sample = ring.add(T0, reading(ttft=[0.1 * i for i in range(1, 21)],
                                  rtt={"peer-a": 1.23456, "peer-b": None}))
    assert sample["ttft_p50_ms"] == 1000.0 and sample["ttft_p95_ms"] == 1900.0
    assert sample["rtt_ms"] == {"peer-a": 1.235, "peer-b": None}
    empty = ring.add(T0 + 1, reading())
    assert empty["ttft_p50_ms"] is None and empty["ttft_p95_ms"] is None
    assert percentile([], 0.5) is None and percentile([3.0], 0.95) == 3.0


def test_the_ring_keeps_its_size_and_hands_out_what_is_new() -> None:
    ring = SampleRing(size=5)
    for s in range(8):
        ring.add(T0 + s, reading())
    assert [x["t"] for x in ring.history()] == [T0 + s for s in range(3, 8)]
    assert ring.seq == 8
    assert [x["t"] for x in ring.since(6)] == [T0 + 6, T0 + 7]
    assert ring.since(8) == []
    assert len(ring.since(0)) == 5, "a reader further behind gets what is still kept"


def test_series_are_bounded() -> None:
    many = {f"model-{i}": i for i in range(40)}
    sample = SampleRing().add(T0, reading(tokens=many, requests=many, rtt=dict.fromkeys(many, 1.0)))
    for field in ("tokens_per_s", "requests_per_min", "rtt_ms"):
        assert len(sample[field]) == MAX_SERIES


async def next_samples(resp: aiohttp.ClientResponse) -> dict:  # type: ignore[type-arg]
    """The next `samples` event's data (status events and comments skipped)."""
    event = None
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "samples":
            return json.loads(line[6:])


async def test_a_page_opened_later_gets_the_history_then_each_new_sample() -> None:
    from mesh_llm.console.server import Console

    tokens = {"m": 0}
    sampler = Sampler(lambda: reading(tokens=dict(tokens)), period_s=0.05)
    console = Console(lambda: {"state": "running"}, ChangeFeed(),
                      ApiProxy(OneUpstream(lambda: Upstream(None))), sampler=sampler)
    runner = EdgeRunner(console.app(), handler_cancellation=True, access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/api/events"
    try:
        tokens["m"] = 100
        await wait_until_async(lambda: sampler.ring.seq >= 5, "five samples", 10)
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            first = await next_samples(resp)
            assert first["history"] is True and len(first["samples"]) >= 5
            assert any(s["tokens_per_s"].get("m", 0) > 0 for s in first["samples"])
            later = await next_samples(resp)
            assert later["history"] is False and len(later["samples"]) >= 1
            assert later["samples"][0]["t"] > first["samples"][-1]["t"]
    finally:
        await runner.cleanup()
