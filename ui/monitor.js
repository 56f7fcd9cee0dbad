// The Monitor page: a service's request rate, error rate and latency (p50/p95/p99) over time,
// and its operations, from Jaeger's metrics API, which Skein answers from its RED pre-aggregates
// (whole-minute steps) or the stored spans.

import { api } from "./api.js";
import { h, link, replace, svg } from "./dom.js";

const WINDOWS = [
  ["15m", "Last 15 minutes", 15 * 60e3],
  ["1h", "Last hour", 3600e3],
  ["6h", "Last 6 hours", 6 * 3600e3],
  ["24h", "Last 24 hours", 24 * 3600e3],
];

/** Requests per second, readable from thousands down to a few per hour. */
function fmtRate(v) {
  if (v >= 10) return v.toFixed(0);
  if (v >= 1) return v.toFixed(1);
  return v === 0 ? "0" : v.toPrecision(2);
}

/**
 * Up to 60 points per plot, each over the step before it, in whole minutes: the server answers
 * those from its RED pre-aggregates instead of reading every span of the window.
 */
function stepFor(windowMs) {
  return Math.max(60e3, Math.round(windowMs / 60 / 60e3) * 60e3);
}

const COLUMNS = [
  ["name", "Operation"],
  ["calls", "Requests"],
  ["rate", "Req/s"],
  ["errors", "Errors"],
  ["p95", "p95"],
];

export function renderMonitor(main, params, navigate) {
  document.title = "Monitor · Skein";
  const chosen = WINDOWS.find(([v]) => v === params.get("lookback")) ?? WINDOWS[1];
  const service = params.get("service") ?? "";
  const sort = COLUMNS.some(([k]) => k === params.get("sort")) ? params.get("sort") : "calls";
  const go = (changes) => {
    const next = new URLSearchParams({ service, lookback: chosen[0], sort, ...changes });
    navigate(`/monitor?${next}`);
  };
  const services = h("select", { "aria-label": "Service", onchange: (e) => go({ service: e.target.value }) });
  const windows = h(
    "select",
    { "aria-label": "Time window", onchange: (e) => go({ lookback: e.target.value }) },
    WINDOWS.map(([v, label]) => h("option", { value: v }, label)),
  );
  windows.value = chosen[0];
  const body = h("div", { class: "monitor-body" }, h("p", { class: "muted" }, "Loading…"));
  replace(main, h("div", { class: "monitor-page pad" }, h("div", { class: "deps-head" }, h("h1", null, "Monitor"), services, windows), body));
  let live = true;
  const fail = (e) => live && replace(body, h("p", { class: "error-text", role: "alert" }, `Cannot load metrics: ${e.message}`));
  api
    .services()
    .then((names) => {
      if (!live) return;
      replace(services, ...names.map((n) => h("option", { value: n }, n)));
      if (!names.length) {
        replace(body, h("p", { class: "empty muted" }, "No services yet: send spans to Skein first."));
        return;
      }
      if (!names.includes(service)) {
        go({ service: names[0] });
        return;
      }
      services.value = service;
      return load(service, chosen, sort, go).then((content) => live && replace(body, ...content));
    })
    .catch(fail);
  return () => (live = false);
}

async function load(service, [lookback, , windowMs], sort, go) {
  const endTs = Date.now();
  const step = stepFor(windowMs);
  const overTime = { service, endTs, lookback: windowMs, step, ratePer: step };
  // Per operation: one point over the whole window.
  const whole = { service, endTs, lookback: 0, step: windowMs, ratePer: windowMs, groupByOperation: true };
  const [calls, errors, p50, p95, p99, opCalls, opErrors, opP95] = await Promise.all([
    api.metrics("calls", overTime),
    api.metrics("errors", overTime),
    api.metrics("latencies", { ...overTime, quantile: 0.5 }),
    api.metrics("latencies", { ...overTime, quantile: 0.95 }),
    api.metrics("latencies", { ...overTime, quantile: 0.99 }),
    api.metrics("calls", whole),
    api.metrics("errors", whole),
    api.metrics("latencies", { ...whole, quantile: 0.95 }),
  ]);
  const points = (series) => (series[0]?.metricPoints ?? []).map((p) => [Date.parse(p.timestamp), p.gaugeValue.doubleValue]);
  const byOp = (series) => new Map(series.map((m) => [m.labels.find((l) => l.name === "operation")?.value, m.metricPoints[0]?.gaugeValue.doubleValue]));
  const [errs, lat] = [byOp(opErrors), byOp(opP95)];
  const ops = opCalls.map((m) => {
    const name = m.labels.find((l) => l.name === "operation")?.value ?? "";
    const rate = m.metricPoints[0]?.gaugeValue.doubleValue ?? 0;
    return { name, rate, calls: Math.round((rate * windowMs) / 1000), errors: errs.get(name) ?? 0, p95: lat.get(name) ?? 0 };
  });
  ops.sort((a, b) => (sort === "name" ? a.name.localeCompare(b.name) : b[sort] - a[sort] || a.name.localeCompare(b.name)));
  if (!ops.length) return [h("p", { class: "empty muted" }, `No server spans of ${service} in this window.`)];
  const [start, end] = [endTs - windowMs, endTs];
  return [
    h(
      "div",
      { class: "monitor-plots" },
      plot("Requests per second", [["rate", points(calls)]], start, end, fmtRate),
      plot("Errors", [["errors", points(errors)]], start, end, (v) => `${(v * 100).toFixed(1)} %`),
      plot("Latency", [["p50", points(p50)], ["p95", points(p95)], ["p99", points(p99)]], start, end, (v) => `${v.toFixed(1)} ms`),
    ),
    opsTable(service, ops, sort, go, lookback),
  ];
}

/** A line plot of one or more series over [start, end], with the last value of each. */
function plot(title, series, start, end, fmt) {
  const [w, hgt, pad] = [320, 110, 4];
  const max = Math.max(1e-9, ...series.flatMap(([, pts]) => pts.map(([, v]) => v)));
  const x = (t) => pad + ((t - start) / Math.max(1, end - start)) * (w - 2 * pad);
  const y = (v) => hgt - pad - (v / max) * (hgt - 2 * pad);
  const lines = series.map(([name, pts], i) =>
    svg("polyline", { class: `series series-${i}`, "data-series": name, points: pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ") }),
  );
  const legend = series.map(([name, pts], i) => {
    const last = pts[pts.length - 1];
    return h("span", { class: `legend series-${i}` }, `${name} ${last ? fmt(last[1]) : "–"}`);
  });
  return h(
    "figure",
    { class: "monitor-plot", "data-plot": title },
    h("figcaption", null, title, " ", ...legend),
    svg("svg", { viewBox: `0 0 ${w} ${hgt}`, role: "img", "aria-label": `${title}, peak ${fmt(max)}` }, ...lines),
  );
}

function opsTable(service, ops, sort, go, lookback) {
  const cell = (op, key) => {
    switch (key) {
      case "name":
        return op.name;
      case "rate":
        return fmtRate(op.rate);
      case "errors":
        return `${(op.errors * 100).toFixed(1)} %`;
      case "p95":
        return `${op.p95.toFixed(1)} ms`;
      default:
        return String(op[key]);
    }
  };
  const search = (op, extra) => `/search?${new URLSearchParams({ service, operation: op.name, lookback, ...extra })}`;
  return h(
    "table",
    { class: "calls ops" },
    h(
      "thead",
      null,
      h(
        "tr",
        null,
        COLUMNS.map(([key, label]) =>
          h("th", { class: key === "name" ? "" : "num", "aria-sort": key === sort ? "descending" : "none" }, h("button", { class: "sort", "data-sort": key, onclick: () => go({ sort: key }) }, label)),
        ),
        h("th", null, "Traces"),
      ),
    ),
    h(
      "tbody",
      null,
      ops.map((op) =>
        h(
          "tr",
          { "data-operation": op.name },
          COLUMNS.map(([key]) => h("td", { class: key === "name" ? "" : "num", "data-col": key }, cell(op, key))),
          h(
            "td",
            null,
            link(search(op, { minDuration: `${Math.max(1, Math.floor(op.p95))}ms` }), { class: "slowest" }, "slowest"),
            " · ",
            link(search(op, { tags: JSON.stringify({ error: "true" }) }), { class: "failing" }, "failing"),
          ),
        ),
      ),
    ),
  );
}
