"""Moving a peer to a better link: the punch retry schedule and the drain decision."""

from __future__ import annotations

import pytest

from mesh_llm.mesh.link_move import drain_end, retry_delays
from mesh_llm.mesh.settings import MeshSettings


def test_retries_start_at_the_interval_double_and_stop_at_the_cap_and_count() -> None:
    assert retry_delays(60.0, 600.0, 6) == [60.0, 120.0, 240.0, 480.0, 600.0, 600.0]
    assert retry_delays(3.0, 3.0, 3) == [3.0, 3.0, 3.0]


def test_a_cap_below_the_interval_never_shortens_it() -> None:
    assert retry_delays(60.0, 10.0, 2) == [60.0, 60.0]


@pytest.mark.parametrize(("first", "count"), [(0.0, 8), (-1.0, 8), (60.0, 0)])
def test_no_interval_or_no_count_means_no_retries(first: float, count: int) -> None:
    assert retry_delays(first, 600.0, count) == []


def test_the_defaults_retry_for_a_bounded_time() -> None:
    s = MeshSettings()
    delays = retry_delays(s.punch_retry_s, s.punch_retry_max_s, s.punch_retries)
    assert delays[0] == 60.0 and len(delays) == s.punch_retries
    assert sum(delays) <= 2 * 3600  # gives up within two hours


@pytest.mark.parametrize(
    ("busy", "elapsed", "silent", "why"),
    [
        (0, 0.0, 0.0, "streams done"),  # nothing open: close at once
        (1, 0.0, 0.0, None),  # a stream open: wait for it
        (3, 29.9, 7.9, None),  # still within the bound, and the far end answers
        (1, 30.0, 0.0, "drain bound"),  # the bound: close whatever is still open
        (2, 31.0, 9.0, "drain bound"),
        (1, 5.0, 8.1, "no answer"),  # the far end is gone: its streams would only hang
        (0, 5.0, 9.0, "streams done"),
    ],
)
def test_a_replaced_link_closes_when_its_streams_are_done_its_time_is_up_or_its_peer_is_gone(
        busy: int, elapsed: float, silent: float, why: str | None) -> None:
    assert drain_end(busy, elapsed, silent, bound_s=30.0, silence_s=8.0) == why


def test_without_a_bound_a_replaced_link_drains_while_its_far_end_answers() -> None:
    """The default (drain_s 0): a split's tunnel on the old link is never cut by time."""
    assert drain_end(1, 86_400.0, 1.0, bound_s=0.0, silence_s=8.0) is None
    assert drain_end(1, 86_400.0, 8.5, bound_s=0.0, silence_s=8.0) == "no answer"
    assert drain_end(0, 1.0, 0.0, bound_s=0.0, silence_s=8.0) == "streams done"
