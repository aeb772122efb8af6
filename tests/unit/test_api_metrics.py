"""What the API records per request: histograms, the tokens an answer reports (each API
family's shape), a stream's first token and gaps, and the bounds on labels."""

from __future__ import annotations

import json

from mesh_llm.api.metrics import (
    MAX_ANSWER_KEYS,
    MAX_MODELS,
    ApiMetrics,
    Histogram,
    TokenCounts,
    token_counts,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 4), (float("inf"), 5)]
    assert h.count == 5 and abs(h.sum - 8.65) < 1e-9


def test_token_counts_read_each_api_familys_shape() -> None:
    openai = {"usage": {"completion_tokens": 7, "prompt_tokens": 30},
              "timings": {"predicted_n": 7, "prompt_n": 12, "draft_n": 5, "draft_n_accepted": 3}}
    assert token_counts([openai]) == TokenCounts(7, 30, 5, 3)
    timings_only = {"timings": {"predicted_n": 9, "prompt_n": 4, "cache_n": 20}}
    assert token_counts([timings_only]) == TokenCounts(9, 24)
    anthropic = {"type": "message_delta", "usage": {"output_tokens": 11, "input_tokens": 8}}
    assert token_counts([anthropic]) == TokenCounts(11, 8)
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 9,
                                                            "output_tokens": 1}}}
    delta = {"type": "message_delta", "usage": {"output_tokens": 12}}
    assert token_counts([start, delta]) == TokenCounts(12, 9), "each from its last event"
    responses = {"type": "response.completed",
                 "response": {"usage": {"input_tokens": 5, "output_tokens": 6}}}
    assert token_counts([responses]) == TokenCounts(6, 5)
    assert token_counts([{"choices": []}]) is None
    hostile = {"usage": {"completion_tokens": -3, "prompt_tokens": True}, "timings": "x"}
    assert token_counts([hostile]) == TokenCounts(None, None)


def test_a_stream_records_its_first_token_gaps_and_reported_tokens() -> None:
    clock = Clock()
    metrics = ApiMetrics(clock)
    timing = metrics.timing("m", clock.now)
    final = sse({"choices": [{"delta": {}}], "usage": {"completion_tokens": 3,
                                                         "prompt_tokens": 12}})
    pieces = [sse({"choices": [{"delta": {"content": w}}]}) for w in ("a", "b", "c")]
    pieces += [final[:20], final[20:], b"data: [DONE]\n\n"]  # the last event cut in two
    for step, piece in zip((0.5, 0.1, 0.1, 0.1, 0.0, 0.0), pieces, strict=True):
        clock.now += step
        timing(piece)
    timing.ended()
    stats = metrics.models["m"]
    assert stats.ttft.count == 1 and abs(stats.ttft.sum - 0.5) < 1e-9
    assert stats.gaps.count == 5
    assert (stats.generated, stats.prompt, stats.requests) == (3, 12, 1)
    assert stats.live_tokens == 6, "the live count is the chunks as they passed"
    assert [round(t, 3) for t in metrics.ttft_since(60)] == [0.5]
    clock.now += 61
    assert metrics.ttft_since(60) == []


def test_a_long_anthropic_stream_counts_the_input_tokens_of_its_first_event() -> None:
    metrics = ApiMetrics(Clock())
    timing = metrics.timing("m", 0.0)
    timing(b"event: message_start\n" + sse({"type": "message_start", "message": {
        "usage": {"input_tokens": 21, "output_tokens": 0}}}))
    for _ in range(10):
        timing(sse({"type": "content_block_delta", "delta": {"text": "x"}}))
    timing(sse({"type": "message_delta", "usage": {"output_tokens": 10}}))
    timing(sse({"type": "message_stop"}))
    timing.ended()
    assert (metrics.models["m"].generated, metrics.models["m"].prompt) == (10, 21)


def test_a_stream_cut_off_counts_its_chunks() -> None:
    metrics = ApiMetrics(Clock())
    timing = metrics.timing("m", 0.0)
    for _ in range(4):
        timing(sse({"choices": [{"delta": {"content": "x"}}]}))
    timing.ended()
    assert metrics.models["m"].generated == 4


def test_a_whole_answer_counts_its_usage_once_and_big_bodies_are_not_parsed() -> None:
    metrics = ApiMetrics(Clock())
    body = json.dumps({"choices": [], "usage": {"completion_tokens": 5, "prompt_tokens": 9},
                       "timings": {"draft_n": 4, "draft_n_accepted": 2}}).encode()
    metrics.timing("m", 0.0).whole(body, "application/json; charset=utf-8")
    metrics.timing("m", 0.0).whole(b"not json", "application/json")
    metrics.timing("m", 0.0).whole(body, "text/html")
    metrics.timing("m", 0.0).whole(b" " * (2 << 20) + body, "application/json")
    stats = metrics.models["m"]
    assert (stats.generated, stats.prompt, stats.draft_proposed, stats.draft_accepted,
            stats.live_tokens, stats.requests) == (5, 9, 4, 2, 5, 4)
    assert stats.ttft.count == 0, "no first token without a stream"


def test_models_and_label_sets_are_bounded() -> None:
    metrics = ApiMetrics(Clock())
    for i in range(MAX_MODELS + 10):
        metrics.timing(f"model-{i}", 0.0)
    assert len(metrics.models) == MAX_MODELS and "model-0" not in metrics.models
    for i in range(MAX_ANSWER_KEYS + 10):
        metrics.answered("/v1/chat/completions", 200, f"model-{i}")
    metrics.answered("/v1/chat/completions", 200, "model-0")
    assert len(metrics.answers) == MAX_ANSWER_KEYS
    assert metrics.answers[("/v1/chat/completions", "200", "model-0")] == 2
