"""The console's live charts: a bounded ring of one-second samples (the last 15 minutes),
so that a page opened later sees the history, and new samples go out on the SSE stream.

The node hands over a `Reading` of cumulative numbers each second; the ring turns them
into rates (tokens per second, requests in the last minute per model), the median and
95th percentile of recent times to first token, and the RTT to each peer. Pure but for
`Sampler.run`, which reads and adds once a second.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HISTORY = 900  # samples kept: 15 minutes of one a second
PERIOD_S = 1.0
WINDOW_S = 60.0  # requests per minute look this far back
MAX_SERIES = 16  # models or peers per chart: the first ones seen


@dataclass(frozen=True)
class Reading:
    """The node's numbers at one instant."""

    tokens: Mapping[str, int]  # per model: tokens so far (streamed ones as they pass)
    requests: Mapping[str, int]  # per model: requests relayed so far
    ttft_s: Sequence[float]  # times to first token observed in the last minute
    rtt_ms: Mapping[str, float | None]  # per peer: its round trip now


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q` quantile (0 < q ≤ 1) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _capped(items: Mapping[str, Any]) -> dict[str, Any]:
    return dict(list(items.items())[:MAX_SERIES])


class SampleRing:
    """The last `size` samples, each a JSON-ready dict; `seq` counts every sample added."""

    def __init__(self, size: int = HISTORY, window_s: float = WINDOW_S) -> None:
        self._samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._window_s = window_s
        self._requests: deque[tuple[float, Mapping[str, int]]] = deque()  # per sample
        self._last: tuple[float, Mapping[str, int]] | None = None  # the last tokens seen
        self.seq = 0

    def add(self, t: float, reading: Reading) -> dict[str, Any]:
        """The sample for `reading`, taken at `t` (seconds since the epoch)."""
        prev_t, prev = self._last if self._last is not None else (t - PERIOD_S, {})
        dt = max(t - prev_t, 1e-3)
        tokens = {m: max(0, n - prev.get(m, 0)) / dt for m, n in reading.tokens.items()}
        self._last = (t, dict(reading.tokens))
        # The newest reading at least a window old is the baseline (none yet: zero, as
        # the counts start at zero with the node).
        self._requests.append((t, dict(reading.requests)))
        while len(self._requests) > 1 and self._requests[1][0] <= t - self._window_s:
            self._requests.popleft()
        first_t, first = self._requests[0]
        base = first if first_t <= t - self._window_s else {}
        per_min = {m: max(0, n - base.get(m, 0)) for m, n in reading.requests.items()}
        p50, p95 = percentile(reading.ttft_s, 0.5), percentile(reading.ttft_s, 0.95)
        sample = {
            "t": round(t, 3),
            "tokens_per_s": _capped({m: round(v, 2) for m, v in tokens.items()}),
            "requests_per_min": _capped(per_min),
            "ttft_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "ttft_p95_ms": None if p95 is None else round(p95 * 1000, 1),
            "rtt_ms": _capped({p: None if v is None else round(v, 3)
                               for p, v in reading.rtt_ms.items()}),
        }
        self._samples.append(sample)
        self.seq += 1
        return sample

    def history(self) -> list[dict[str, Any]]:
        return list(self._samples)

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The samples added after the ring's `seq` was `seq` (all it still has, if more)."""
        new = self.seq - seq
        if new <= 0:
            return []
        return list(self._samples)[-min(new, len(self._samples)):]


class Sampler:
    """Adds a sample each second while the console runs."""

    def __init__(self, read: Callable[[], Reading], period_s: float = PERIOD_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.ring = SampleRing()
        self._read = read
        self._period_s = period_s
        self._clock = clock

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.ring.add(self._clock(), self._read())
            next_at = max(next_at + self._period_s, loop.time())  # no burst after a stall
            await asyncio.sleep(max(0.0, next_at - loop.time()))
