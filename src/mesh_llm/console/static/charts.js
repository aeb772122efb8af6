"use strict";
// The console's live charts, drawn with uPlot (vendored: uPlot.iife.min.js, MIT). The node
// keeps the last 15 minutes of one-second samples and sends them on the event stream
// (`samples`: the whole history when the page connects, then each new sample).

const meshCharts = (() => {
  const KEEP = 900;
  const HEIGHT = 170;
  const MIN_SPAN_S = 120;
  const COLORS = ["#4b3fd1", "#0f7a6b", "#b35309", "#b42318", "#1f6feb", "#8250df",
                  "#1a7f37", "#9a6700"];
  // Each chart: a sample field holding a series per name (model, peer), or fixed series.
  const DEFS = [
    { id: "chart-tokens", field: "tokens_per_s", unit: "tok/s" },
    { id: "chart-ttft", fixed: [["median", "ttft_p50_ms"], ["p95", "ttft_p95_ms"]], unit: "ms" },
    { id: "chart-requests", field: "requests_per_min", unit: "req/min" },
    { id: "chart-rtt", field: "rtt_ms", unit: "ms" },
  ];
  let samples = [];
  const plots = {};  // chart id → { plot, names }

  /** The series of a chart: its fixed ones, or every name seen in the samples, in order. */
  function namesOf(def, list) {
    if (def.fixed) return def.fixed.map(([label]) => label);
    const seen = new Set();
    for (const s of list) for (const name of Object.keys(s[def.field] || {})) seen.add(name);
    return [...seen];
  }

  /** uPlot's columns: times, then one array per series (null where a sample has none). */
  function columnsOf(def, list, names) {
    const xs = list.map((s) => s.t);
    const ys = def.fixed
      ? def.fixed.map(([, key]) => list.map((s) => s[key] ?? null))
      : names.map((n) => list.map((s) => (s[def.field] || {})[n] ?? null));
    return [xs, ...ys];
  }

  function textColor() {
    return getComputedStyle(document.body).color || "#1b2230";
  }

  function make(def, names, data, box) {
    const ink = textColor();
    const axis = { stroke: ink, grid: { stroke: "#8884", width: 1 }, ticks: { show: false } };
    const opts = {
      width: Math.max(box.clientWidth, 200), height: HEIGHT,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: {
        x: { time: true, range: (_u, min, max) => {  // at least the last two minutes
          const end = max ?? Date.now() / 1000;
          return [Math.min(min ?? end, end - MIN_SPAN_S), end];
        } },
        y: { range: (_u, _min, max) => [0, Math.max(1, max ?? 1)] },
      },
      axes: [axis, { ...axis, size: 56, values: (_u, ticks) => ticks.map((v) => v + "") }],
      series: [{}, ...names.map((name, i) => ({
        label: name.length > 28 ? name.slice(0, 27) + "…" : name,
        stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false,
        value: (_u, v) => (v == null ? "–" : `${v} ${def.unit}`),
      }))],
    };
    return new uPlot(opts, data, box);
  }

  function draw() {
    if (typeof uPlot === "undefined") return;
    for (const def of DEFS) {
      const box = document.getElementById(def.id);
      if (!box) continue;
      const names = namesOf(def, samples);
      const data = columnsOf(def, samples, names);
      const had = plots[def.id];
      box.dataset.series = names.join("\n");
      box.dataset.points = String(samples.length);
      if (had && had.names.join("\n") === names.join("\n")) {
        had.plot.setData(data);
        continue;
      }
      if (had) had.plot.destroy();
      plots[def.id] = { plot: make(def, names, data, box), names };
    }
  }

  /** One `samples` event: the whole history (`history`), or samples to append. */
  function add(message) {
    if (!message || !Array.isArray(message.samples)) return;
    samples = message.history ? message.samples.slice() : samples.concat(message.samples);
    if (samples.length > KEEP) samples = samples.slice(-KEEP);
    const section = document.getElementById("activity");
    if (section) section.hidden = false;
    draw();
  }

  addEventListener("resize", () => {
    for (const def of DEFS) {
      const had = plots[def.id];
      const box = document.getElementById(def.id);
      if (had && box) had.plot.setSize({ width: Math.max(box.clientWidth, 200), height: HEIGHT });
    }
  });

  /** For tests and the curious: a chart's series names and its data as drawn. */
  function series(id) {
    const had = plots[id];
    if (!had) return null;
    const data = had.plot.data;
    return Object.fromEntries(had.names.map((name, i) => [name, Array.from(data[i + 1])]));
  }

  return { add, series, get samples() { return samples; } };
})();

window.meshCharts = meshCharts;
