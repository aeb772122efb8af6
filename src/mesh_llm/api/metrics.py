"""What the API measures of the requests it answers, kept as plain numbers on the event loop.

Per route, status code and model: how many answers. Per model: time to first token, the
gaps between streamed chunks, and the tokens llama-server reports. node/metrics.py reads
these when /metrics is scraped; the console's charts sample them every second.

Cheap on purpose: a streamed chunk costs a clock read, a bisect and a few integer
additions, no lock (everything runs on the loop) and no allocation beyond the float. The
tokens a response carried are read once, at its end, from the `usage` (else `timings`)
llama-server puts in the last streamed event or in the JSON body; a stream that ends
without either (cut off) counts its streamed chunks instead, one per token as llama-server
sends them.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
MAX_MODELS = 64  # as the status's counts: the least recently added are dropped
MAX_ANSWER_KEYS = 2048  # (route, code, model) combinations; past it, new ones are not kept
RECENT_TTFT = 4096  # the charts' percentiles look at most this many recent first tokens
MAX_BODY_PARSED = 1024 * 1024  # a larger JSON answer (embeddings) is not read for usage
TAIL = 4  # streamed pieces kept to read the last event's usage from
UNMATCHED = "unmatched"  # the route label of a path no route serves (bounded labels)
MODEL_KEY = web.RequestKey("mesh_llm_model", str)  # set on a request once its model is known

Scrape = Callable[[], tuple[bytes, str]]  # the metrics page: (body, content type)


class Histogram:
    """Counts per bucket (upper bounds, Prometheus's `le`), their sum and count."""

    __slots__ = ("bounds", "buckets", "count", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations ≤ it) per bucket, +inf last."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass
class ModelStats:
    """One model's numbers since the node started."""

    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    gaps: Histogram = field(default_factory=lambda: Histogram(GAP_BUCKETS))
    requests: int = 0  # relayed to the model's llama-server
    live_tokens: int = 0  # streamed chunks as they pass, whole answers' tokens at their end
    generated: int = 0  # tokens, as llama-server reports them at the end of each answer
    prompt: int = 0
    draft_proposed: int = 0
    draft_accepted: int = 0


@dataclass(frozen=True)
class TokenCounts:
    generated: int | None = None
    prompt: int | None = None
    draft_proposed: int = 0
    draft_accepted: int = 0


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else None


def token_counts(events: list[dict[str, Any]]) -> TokenCounts | None:
    """The tokens an answer reports, each figure from the last event that gives it: OpenAI's
    and Anthropic's `usage` (Anthropic's input tokens are in its first event, under
    `message`), the Responses API's `response.usage`, llama-server's `timings`."""
    found: TokenCounts | None = None
    for event in events:
        for obj in (event, event.get("response"), event.get("message")):
            if not isinstance(obj, dict):
                continue
            usage, timings = obj.get("usage"), obj.get("timings")
            usage = usage if isinstance(usage, dict) else {}
            timings = timings if isinstance(timings, dict) else {}
            if not usage and not timings:
                continue
            generated = _int(usage.get("completion_tokens", usage.get("output_tokens")))
            prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            if generated is None:
                generated = _int(timings.get("predicted_n"))
            if prompt is None and _int(timings.get("prompt_n")) is not None:
                prompt = (_int(timings.get("prompt_n")) or 0) + \
                    (_int(timings.get("cache_n")) or 0)
            before = found or TokenCounts()
            found = TokenCounts(
                generated if generated is not None else before.generated,
                prompt if prompt is not None else before.prompt,
                _int(timings.get("draft_n")) or before.draft_proposed,
                _int(timings.get("draft_n_accepted")) or before.draft_accepted)
    return found


def sse_events(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON objects of the `data:` lines in `data` (a partial first line is skipped)."""
    for line in data.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            value = json.loads(line[5:])
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value


class Timing:
    """One relayed request: called with each streamed piece as it passes; `ended` once."""

    __slots__ = ("_clock", "_first", "_last", "_metrics", "_stats", "_t0", "_tail", "chunks")

    def __init__(self, metrics: ApiMetrics, stats: ModelStats, t0: float) -> None:
        self._metrics = metrics
        self._stats = stats
        self._clock = metrics.clock
        self._t0 = t0
        self._last: float | None = None
        self._first = b""
        self._tail: list[bytes] = [b""] * TAIL
        self.chunks = 0

    def __call__(self, piece: bytes) -> None:
        now = self._clock()
        stats = self._stats
        if self._last is None:
            self._first = piece
            stats.ttft.observe(now - self._t0)
            self._metrics.recent_ttft.append((now, now - self._t0))
        else:
            stats.gaps.observe(now - self._last)
        self._last = now
        stats.live_tokens += 1
        self._tail[self.chunks % TAIL] = piece
        self.chunks += 1

    def ended(self) -> None:
        """The stream is over (done or broken off): count the tokens it reported."""
        n = self.chunks
        tail = b"".join(self._tail[i % TAIL] for i in range(max(0, n - TAIL), n))
        if n > TAIL:
            tail = self._first + b"\n" + tail
        counts = token_counts(list(sse_events(tail)))
        if counts is None or counts.generated is None:
            counts = TokenCounts(n, counts.prompt if counts else None)
        self._metrics.add_tokens(self._stats, counts, live=False)

    def whole(self, body: bytes, content_type: str) -> None:
        """A whole (not streamed) answer: its JSON body's `usage` or `timings`."""
        if not content_type.startswith("application/json") or len(body) > MAX_BODY_PARSED:
            return
        try:
            value = json.loads(body)
        except ValueError:
            return
        counts = token_counts([value]) if isinstance(value, dict) else None
        if counts is not None:
            self._metrics.add_tokens(self._stats, counts, live=True)


class ApiMetrics:
    """The API's numbers since the node started, bounded in models and label sets."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.answers: dict[tuple[str, str, str], int] = {}  # (route, code, model) → count
        self.models: dict[str, ModelStats] = {}
        self.recent_ttft: deque[tuple[float, float]] = deque(maxlen=RECENT_TTFT)

    def model(self, name: str) -> ModelStats:
        stats = self.models.get(name)
        if stats is None:
            if len(self.models) >= MAX_MODELS:
                del self.models[next(iter(self.models))]
            stats = self.models[name] = ModelStats()
        return stats

    def timing(self, model: str, t0: float) -> Timing:
        """A request for `model` that arrived at `t0` (this clock) is relayed."""
        stats = self.model(model)
        stats.requests += 1
        return Timing(self, stats, t0)

    def add_tokens(self, stats: ModelStats, counts: TokenCounts, *, live: bool) -> None:
        stats.generated += counts.generated or 0
        stats.prompt += counts.prompt or 0
        stats.draft_proposed += counts.draft_proposed
        stats.draft_accepted += counts.draft_accepted
        if live:
            stats.live_tokens += counts.generated or 0

    def answered(self, route: str, status: int, model: str) -> None:
        key = (route, str(status), model)
        if key in self.answers or len(self.answers) < MAX_ANSWER_KEYS:
            self.answers[key] = self.answers.get(key, 0) + 1

    def ttft_since(self, seconds: float) -> list[float]:
        """Times to first token observed in the last `seconds`."""
        cutoff = self.clock() - seconds
        recent = self.recent_ttft
        while recent and recent[0][0] < cutoff:
            recent.popleft()
        return [ttft for _, ttft in recent]

    def middleware(self, only: frozenset[str] | None = None):  # type: ignore[no-untyped-def]
        """Counts every answer by route, status code and model (`only`: these routes);
        outermost, so the 401s, 403s and 404s of the other middlewares count too."""

        @web.middleware
        async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else UNMATCHED
            if only is not None and route not in only:
                return await handler(request)
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            except BaseException:
                status = 499 if _client_gone(request) else 500
                raise
            finally:
                self.answered(route, status, request.get(MODEL_KEY, ""))

        return count


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def metrics_handler(scrape: Scrape):  # type: ignore[no-untyped-def]
    """GET /metrics: the page `scrape` renders (the Prometheus text format)."""

    async def metrics(_request: web.Request) -> web.Response:
        body, content_type = scrape()
        response = web.Response(body=body, headers={"Cache-Control": "no-store"})
        response.headers["Content-Type"] = content_type
        return response

    return metrics
