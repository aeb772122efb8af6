"""The console's live charts in a real Chromium, fed by a real node: after requests, the
charts hold non-empty series for the model used, and a page opened later sees the history."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from nodes import greedy

pytestmark = pytest.mark.browser

MODEL = "SmolLM2-135M-Instruct"
ASK = [{"role": "user", "content": "Name three colours."}]
NODE_S = 120
# A chart's series for the model, as drawn (uPlot's own data): some value above zero.
HAS_VALUE = """([chart, name]) => {
  const series = window.meshCharts && window.meshCharts.series(chart);
  return !!series && (series[name] || []).some((v) => v !== null && v > 0);
}"""


def test_charts_show_the_model_used_and_a_later_page_sees_the_history(
        page: Page, context: BrowserContext, make_node, shoot) -> None:  # type: ignore[no-untyped-def]
    node = make_node("node").wait_ready(NODE_S)
    page.goto(node.console)
    expect(page.locator("#activity")).to_be_visible()
    for stream in (True, False, True):
        assert greedy(node, ASK, 12, stream=stream)
    for chart, name in (("chart-tokens", MODEL), ("chart-requests", MODEL),
                        ("chart-ttft", "median"), ("chart-ttft", "p95")):
        page.wait_for_function(HAS_VALUE, arg=[chart, name], timeout=30_000)
    expect(page.locator("#chart-tokens")).to_have_attribute("data-series", MODEL)
    expect(page.locator("#chart-tokens canvas")).to_have_count(1)
    shoot(page, "charts")

    opened = time.time()
    later = context.new_page()
    later.goto(node.console)
    later.wait_for_function(HAS_VALUE, arg=["chart-tokens", MODEL], timeout=15_000)
    earliest = later.evaluate("window.meshCharts.samples[0].t")
    assert earliest < opened - 1, "the history reaches back before the page was opened"
    before = later.evaluate(f"""() => {{
        const s = window.meshCharts.samples;
        return s.filter((x) => x.t < {opened} && (x.tokens_per_s['{MODEL}'] || 0) > 0).length;
    }}""")
    assert before > 0, "the tokens generated before it opened are in the later page's chart"
