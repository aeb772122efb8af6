"""Hosting's re-plans, drains, CPU hold and stand-down on a real event loop, with a fake
llama-server process (tests/fakellama.py). Only the drain and hold bounds run on the clock,
made short where a test is about them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from fakellama import GB, HOST, LAYERS, WAIT_S, B, C, FakeLlama, Host, listening, me, worker
from mesh_llm.inference import hosting as hosting_module
from mesh_llm.inference.election import OUTPUT_ON_HOST
from mesh_llm.mesh.protocol import StreamType

MakeHost = Callable[..., Host]

@pytest.fixture
async def make_host(tmp_path: Path) -> AsyncIterator[MakeHost]:
    made: list[Host] = []

    def make(**spec: Any) -> Host:
        made.append(Host(tmp_path, **spec))
        return made[-1]

    yield make
    for h in made:
        await h.hosting.stop_serving()
        await h.settle()
        assert not h.failures, h.failures


async def stopped(fake: FakeLlama) -> None:
    await asyncio.wait_for(fake.stopped.wait(), WAIT_S)


def label(fake: FakeLlama) -> str:
    return "split" if fake.plan.rpc else "solo"


async def test_a_solo_plan_serves_once_its_llama_server_is_ready(make_host: MakeHost) -> None:
    h = make_host()
    h.converge(me())
    assert h.hosting.state == "loading" and h.hosting.active
    fake = await h.launcher.next()
    assert fake.plan.rpc == () and fake.plan.alias == "tiny"
    assert h.hosting.serving_port() is None, "not ready: requests wait"
    assert h.states() == [("serving", "solo", 0)]
    fake.load()
    assert h.hosting.state == "running"
    assert h.hosting.serving_port() == fake.port
    assert h.hosting.llama_json() == {"pid": fake.pid, "port": fake.port, "load_seconds": 0.5}
    assert h.hosting.plan_json() == {"mode": "solo", "host": HOST, "workers": [], "rpc": [],
                                     "tensor_split": [1.0], "reason": ""}
    h.converge(me())  # the same plan again: nothing restarts
    await h.settle()
    assert h.launcher.log == ["start solo"] and h.held_seen and not any(h.held_seen)


async def test_a_crashed_llama_server_stops_serving_until_it_is_back(make_host: MakeHost) -> None:
    h = make_host()
    fake = await h.serving(me())
    fake.crash()
    assert h.hosting.state == "loading" and h.hosting.serving_port() is None
    fake.load()
    assert h.hosting.state == "running" and h.hosting.serving_port() == fake.port


async def test_restarts_replans_and_stalls_are_counted_for_the_metrics(
        make_host: MakeHost) -> None:
    h = make_host(split=True)
    fake = await h.serving(me())
    assert (h.hosting.plan_changes, h.hosting.restarts, h.hosting.stall_seconds()) == (0, 0, 0)
    fake.crash()
    fake.restart()
    fake.load()
    assert h.hosting.restarts == 1
    stall = h.hosting.stall_seconds()
    assert stall > 0
    assert h.hosting.stall_seconds() == stall, "the stall ended once it served again"
    h.converge(me(), worker(B))
    assert h.hosting.plan_changes == 1
    new = await h.launcher.next()
    new = await h.launcher.next() if new is fake else new  # the restart's start came first
    new.load()
    await h.settle()
    assert h.hosting.restarts == 1, "a new plan's llama-server is no restart"


async def test_too_little_memory_waits_and_stops_what_served(make_host: MakeHost) -> None:
    h = make_host()
    fake = await h.serving(me())
    h.converge(me(vram_gb=4))
    await stopped(fake)
    await h.settle()
    assert h.hosting.state == "waiting" and h.hosting.serving_port() is None
    assert h.hosting.generations_json() == []
    plan = h.hosting.plan_json()
    assert plan is not None and plan["mode"] == "waiting" and "need 11.0 GB" in plan["reason"]


async def test_a_split_starts_tunnels_first_and_closes_them_after_the_server(
        make_host: MakeHost) -> None:
    h = make_host(split=True)
    fake = await h.serving(me(), worker(B))
    assert await asyncio.wait_for(h.streams.get(), WAIT_S) == (B, StreamType.RPC_TUNNEL), \
        "llama-server's RPC connection became a mesh stream to the worker"
    assert len(fake.plan.rpc) == 1
    # A CPU host: the workers' layers by -ngl, the output head pinned to the host.
    assert (fake.plan.gpu_layers, fake.plan.overrides) == (LAYERS // 2 + 1, (OUTPUT_ON_HOST,))
    plan = h.hosting.plan_json()
    assert plan is not None and plan["workers"] == [B] and plan["rpc"] == list(fake.plan.rpc)
    assert h.hosting.rpc_tunnel_stats()["connections"] == 1
    await h.hosting.stop_serving()
    assert fake.rpc_listening_at_stop == [True], "llama-server stops before its tunnels"
    assert not listening(fake.plan.rpc[0])


async def test_a_cpu_host_loads_beside_the_old_server_then_holds_requests_while_it_drains(
        make_host: MakeHost) -> None:
    h = make_host(split=True)
    old = await h.serving(me())
    request = await h.request()  # a stream the old llama-server is answering
    h.converge(me(), worker(B))
    new = await h.launcher.next()
    assert h.hosting.serving_port() == old.port, "the old one serves while the new loads"
    assert h.states() == [("serving", "solo", 1), ("loading", "split", 0)]
    assert h.hosting.plan_json()["mode"] == "solo"  # type: ignore[index]
    new.load()
    assert h.hosting.serving_port() == new.port
    await h.until(lambda: h.hosting.held, "a CPU host: new requests wait while the old "
                  "server computes")
    assert h.states() == [("serving", "split", 0), ("draining", "solo", 1)]
    assert not old.stopped.is_set()
    request.finish()
    await stopped(old)
    await h.settle()
    assert not h.hosting.held and h.held_seen[-1] is False
    assert h.states() == [("serving", "split", 0)] and h.hosting.state == "running"
    assert h.hosting.plan_json()["mode"] == "split"  # type: ignore[index]
    assert h.launcher.log == ["start solo", "start split", "stop solo"]


async def test_the_cpu_hold_ends_after_its_bound_while_the_old_server_finishes(
        make_host: MakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hosting_module, "CPU_HOLD_S", 0.05)
    h = make_host(split=True)
    old = await h.serving(me())
    request = await h.request()
    await h.serving(me(), worker(B))
    await h.until(lambda: True in h.held_seen and not h.hosting.held,
                  "the hold began, and ended after CPU_HOLD_S")
    assert not old.stopped.is_set(), "its open stream still runs (the drain bound is longer)"
    assert h.states() == [("serving", "split", 0), ("draining", "solo", 1)]
    request.finish()
    await stopped(old)


async def test_a_gpu_host_switches_at_once_and_stops_the_old_server_when_it_is_done(
        make_host: MakeHost) -> None:
    h = make_host(split=True, has_gpu=True, vram_bytes=40 * GB)
    old = await h.serving(me())
    request = await h.request()
    new = await h.serving(me(), worker(B))
    await h.until(lambda: h.states() == [("serving", "split", 0), ("draining", "solo", 1)],
                  "the old generation drains")
    assert h.hosting.serving_port() == new.port and not h.hosting.held
    assert not old.stopped.is_set()
    request.finish()
    await stopped(old)
    await h.settle()
    assert h.states() == [("serving", "split", 0)] and not any(h.held_seen)


async def test_the_drain_bound_stops_an_old_server_and_cuts_its_requests(
        make_host: MakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU host with room for both: no hold, and the drain is bounded by DRAIN_S."""
    monkeypatch.setattr(hosting_module, "DRAIN_S", 0.05)
    h = make_host(split=True, has_gpu=True, vram_bytes=40 * GB)
    old = await h.serving(me())
    request = await h.request()
    assert h.states() == [("serving", "solo", 1)]
    new = await h.serving(me(), worker(B))
    assert h.hosting.serving_port() == new.port
    await stopped(old)
    await request.cut()
    await h.settle()
    assert h.states() == [("serving", "split", 0)] and not any(h.held_seen)


@pytest.mark.parametrize(("spec", "first", "then", "why"), [
    ({"has_gpu": True}, (), (B,), "cannot hold both llama-servers"),
    ({}, (B,), (B, C), "is in both plans"),
])
async def test_without_room_for_both_the_old_server_finishes_before_the_new_starts(
        make_host: MakeHost, caplog: pytest.LogCaptureFixture, spec: dict[str, Any],
        first: tuple[str, ...], then: tuple[str, ...], why: str) -> None:
    caplog.set_level(logging.INFO, logger="mesh_llm.hosting")
    h = make_host(split=True, **spec)
    old = await h.serving(me(), *(worker(w) for w in first))
    gen = h.hosting.current
    request = await h.request()
    h.converge(me(), *(worker(w) for w in then))
    await h.until(lambda: gen in h.hosting.draining, "the old generation drains")
    assert why in caplog.text
    assert h.hosting.state == "loading" and h.hosting.serving_port() is None
    assert h.launcher.waiting() == 0 and not old.stopped.is_set()
    request.finish()
    new = await h.launcher.next()
    assert h.launcher.log[-2:] == [f"stop {label(old)}", "start split"]
    assert len(new.plan.rpc) == len(then)
    new.load()
    assert h.hosting.state == "running" and h.hosting.serving_port() == new.port


async def test_an_old_server_that_lost_its_worker_is_stopped_without_a_drain(
        make_host: MakeHost) -> None:
    h = make_host(split=True)
    await h.serving(me(), worker(B))
    request = await h.request()  # it cannot finish: the worker is gone
    del h.peers[B]
    h.converge(me())
    new = await h.launcher.next()
    assert h.launcher.log[-2:] == ["stop split", "start solo"]
    await request.cut()
    new.load()
    assert h.states() == [("serving", "solo", 0)]


async def test_a_draining_server_whose_worker_goes_is_stopped_at_once(make_host: MakeHost) -> None:
    h = make_host(split=True)
    old = await h.serving(me(), worker(B))
    request = await h.request()
    await h.serving(me(), worker(C))  # B still connected: both run, the old one drains
    await h.until(lambda: h.hosting.held, "the old generation drains, requests held")
    del h.peers[B]
    h.converge(me(), worker(C))  # the same plan: only the draining generations are checked
    await stopped(old)
    await request.cut()
    await h.until(lambda: not h.hosting.held, "nothing left to wait for")


async def test_a_leaving_worker_bounds_the_drain(make_host: MakeHost) -> None:
    """A worker that announced leaving waits LEAVE_WAIT_S: the old server is stopped before
    that, however long its streams would run (here at the one-second floor)."""
    h = make_host(split=True, has_gpu=True, vram_bytes=40 * GB)
    old = await h.serving(me(), worker(B))
    request = await h.request()
    h.hosting.leaving_since = {B: asyncio.get_running_loop().time() - 1000}
    await h.serving(me(), worker(C))
    await stopped(old)
    await request.cut()


async def test_a_newer_plan_replaces_one_still_loading(make_host: MakeHost) -> None:
    h = make_host(split=True)
    old = await h.serving(me())
    h.converge(me(), worker(B))
    loading = await h.launcher.next()
    h.converge(me(), worker(B), worker(C))  # a newer plan before the split to B is ready
    newer = await h.launcher.next()
    assert loading.stopped.is_set() and not old.stopped.is_set()
    assert h.hosting.serving_port() == old.port and len(newer.plan.rpc) == 2
    newer.load()
    await stopped(old)
    await h.settle()
    assert h.states() == [("serving", "split", 0)]
    assert h.launcher.log == ["start solo", "start split", "stop split", "start split",
                              "stop solo"]


async def test_a_superseded_replan_starts_nothing(make_host: MakeHost) -> None:
    h = make_host(split=True)
    h.converge(me())
    h.converge(me(), worker(B))  # before the first re-plan ran
    fake = await h.launcher.next()
    await h.settle()
    assert len(fake.plan.rpc) == 1 and h.launcher.log == ["start split"]


async def test_standing_down_stops_every_llama_server(make_host: MakeHost) -> None:
    h = make_host(split=True)
    old = await h.serving(me())
    h.converge(me(), worker(B))
    loading = await h.launcher.next()
    h.hosting.stand_down()
    await stopped(old)
    await stopped(loading)
    await h.settle()
    assert not h.hosting.active and h.hosting.plan_json() is None
    assert h.hosting.generations_json() == [] and h.hosting.serving_port() is None
    assert loading.rpc_listening_at_stop == [True] and not listening(loading.plan.rpc[0])
