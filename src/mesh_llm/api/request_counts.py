"""Requests per model in the last minute, as this node's API received them (gossiped:
a file-less worker joins the busiest group, and the status shows the load)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 60.0
MAX_MODELS = 64  # the announcement's bound: the least recently asked-for are dropped


class RequestCounter:
    """Timestamps of recent requests per model key, pruned to the last minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._times: dict[str, deque[float]] = {}

    def add(self, key: str) -> None:
        times = self._times.pop(key, None) or deque()
        times.append(self._clock())
        self._times[key] = times  # re-inserted: the dict keeps the most recent last
        while len(self._times) > MAX_MODELS:
            del self._times[next(iter(self._times))]

    def counts(self) -> dict[str, int]:
        """Requests per key in the last minute (keys with none left are forgotten)."""
        cutoff = self._clock() - WINDOW_S
        for key in list(self._times):
            times = self._times[key]
            while times and times[0] < cutoff:
                times.popleft()
            if not times:
                del self._times[key]
        return {key: len(times) for key, times in self._times.items()}


class RouteCounts:
    """Requests per served model and API route since the node started (the status's
    `api_requests`): which API family a client speaks is visible without a log. Routes
    come from the API's own table, models are bounded by MAX_MODELS."""

    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, model: str, route: str) -> None:
        per_route = self._counts.get(model)
        if per_route is None:
            if len(self._counts) >= MAX_MODELS:
                del self._counts[next(iter(self._counts))]
            per_route = self._counts[model] = {}
        per_route[route] = per_route.get(route, 0) + 1

    def to_json(self) -> dict[str, dict[str, int]]:
        return {model: dict(routes) for model, routes in self._counts.items()}
