// The "Chain health" page: what the trace doctor found in a time window (`/api/v1/doctor`):
// broken edges with their kind, counts and examples linking to both halves, notes, and the
// propagation health of every caller → callee edge.

import { api } from "./api.js";
import { h, link, replace } from "./dom.js";
import { plural } from "./format.js";

const WINDOWS = [
  ["15m", "Last 15 minutes"],
  ["1h", "Last hour"],
  ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"],
];

const KIND_LABEL = {
  split_trace: "split trace",
  detached_work: "detached work",
  orphan_spans: "orphan spans",
  uninstrumented_peer: "uninstrumented peer",
};

export function renderDoctor(main, params, navigate) {
  document.title = "Chain health · Skein";
  const lookback = WINDOWS.some(([v]) => v === params.get("lookback")) ? params.get("lookback") : "15m";
  const service = params.get("service") ?? "";
  const select = h(
    "select",
    { "aria-label": "Time window", onchange: (e) => navigate(`/doctor?${query(e.target.value, service)}`) },
    WINDOWS.map(([v, label]) => h("option", { value: v }, label)),
  );
  select.value = lookback;
  const body = h("div", { class: "doctor-body" }, h("p", { class: "muted" }, "Analysing…"));
  replace(
    main,
    h(
      "div",
      { class: "doctor-page pad" },
      h("div", { class: "deps-head" }, h("h1", null, "Chain health"), select, service ? h("span", { class: "chip" }, `service: ${service}`) : null),
      h("p", { class: "muted intro" }, "Where traces break: calls whose server side started a new trace, work that lost its context inside a service, spans whose parent never arrived."),
      body,
    ),
  );
  let live = true;
  api
    .doctor(query(lookback, service))
    .then((report) => live && replace(body, ...draw(report)))
    .catch((e) => live && replace(body, h("p", { class: "error-text", role: "alert" }, `The doctor failed: ${e.message}`)));
  return () => (live = false);
}

function query(lookback, service) {
  const q = new URLSearchParams({ lookback });
  if (service) q.set("service", service);
  return q.toString();
}

function draw(r) {
  const broken = r.findings.filter((f) => f.broken);
  const notes = r.findings.filter((f) => !f.broken);
  return [
    h(
      "div",
      { class: broken.length ? "health-summary bad" : "health-summary good", "data-broken": String(broken.length) },
      broken.length
        ? `⚠ ${plural(broken.length, "broken chain")} found`
        : r.unsettledTraces
          ? "✓ No broken chains in the traces judged"
          : "✓ No broken chains found",
      h("span", { class: "muted" }, ` — ${plural(r.traces, "trace")}, ${plural(r.spans, "span")} analysed${r.truncated ? " (only the newest; narrow the window)" : ""}; ${r.ingestQuiet ? "Skein has received nothing for a while: every trace is judged." : `spans still arrive: those that ended in the last ${r.graceSeconds}s are not used as evidence yet.`}`),
    ),
    r.unsettledTraces
      ? h("p", { class: "warning unsettled", "data-unsettled": String(r.unsettledTraces) }, `${plural(r.unsettledTraces, "trace")} too recent to judge: not called healthy or broken yet.`)
      : null,
    broken.length ? h("section", null, h("h2", null, "Broken chains"), broken.map(card)) : null,
    notes.length ? h("section", null, h("h2", null, "Notes"), notes.map(card)) : null,
    r.edges.length ? edgeTable(r.edges) : null,
  ];
}

function card(f) {
  const title =
    f.kind === "split_trace" || f.kind === "uninstrumented_peer"
      ? `${f.service} → ${f.peer}`
      : f.kind === "detached_work"
        ? `${f.service}: ${f.operation} (under ${f.peerOperation})`
        : `${f.service}: ${f.operation}`;
  return h(
    "article",
    { class: `finding ${f.broken ? "broken" : "note"}`, dataset: { kind: f.kind, service: f.service, peer: f.peer ?? "" } },
    h(
      "div",
      { class: "finding-head" },
      h("span", { class: `badge ${f.kind}` }, KIND_LABEL[f.kind] ?? f.kind),
      h("strong", { class: "finding-title" }, title),
      h("span", { class: "grow" }),
      h("span", { class: "finding-count" }, `${f.count.toLocaleString("en-US")}×`),
      f.kind === "split_trace" || f.kind === "detached_work" ? h("span", { class: "muted" }, ` · confidence ${Math.round(f.confidence * 100)}%`) : null,
    ),
    h("p", { class: "finding-message" }, f.message),
    f.evidence ? h("p", { class: "finding-evidence muted" }, `Evidence: ${f.evidence}`) : null,
    h(
      "ul",
      { class: "examples" },
      f.examples.map((e) => {
        const here = link(`/trace/${e.traceID}?span=${e.spanID}`, { class: "example-trace" }, `trace ${e.traceID.slice(0, 16)}…`);
        if (!e.otherTraceID || e.otherTraceID === e.traceID) return h("li", null, here);
        const other = link(`/trace/${e.otherTraceID}?span=${e.otherSpanID}`, { class: "example-other" }, `trace ${e.otherTraceID.slice(0, 16)}…`);
        const maybe = e.unambiguous ? null : h("span", { class: "muted" }, " (one of several candidates)");
        return f.kind === "detached_work"
          ? h("li", null, here, " started while ", other, " was running", maybe)
          : h("li", null, here, " ⇢ continues in ", other, maybe);
      }),
    ),
  );
}

function edgeTable(edges) {
  return h(
    "section",
    null,
    h("h2", null, "Propagation health per edge"),
    h("p", { class: "muted" }, "Of the calls whose server side was seen, the share that joined the caller's trace."),
    h(
      "table",
      { class: "calls edges" },
      h("thead", null, h("tr", null, h("th", null, "Caller"), h("th", null, "Callee"), h("th", { class: "num" }, "Joined"), h("th", { class: "num" }, "Split"), h("th", null, "Health"))),
      h(
        "tbody",
        null,
        edges.map((e) =>
          h(
            "tr",
            { dataset: { caller: e.caller, callee: e.callee } },
            h("td", null, e.caller),
            h("td", null, e.callee),
            h("td", { class: "num" }, e.joined.toLocaleString("en-US")),
            h("td", { class: "num" }, e.split.toLocaleString("en-US")),
            h(
              "td",
              { class: "health-cell" },
              h("span", { class: "health-bar" }, h("span", { class: e.health < 1 ? "fill bad" : "fill", style: { width: `${e.health * 100}%` } })),
              h("span", { class: "health-value" }, `${(e.health * 100).toFixed(1)}%`),
            ),
          ),
        ),
      ),
    ),
  );
}
