// The search page. The search lives in the URL (`/search?service=…&lookback=1h…`, the query
// API's own parameter names), so a reload or a shared link runs the same search.

import { api } from "./api.js";
import { h, link, replace, svg } from "./dom.js";
import { fmtAgo, fmtDateTime, fmtDuration, plural, serviceColors } from "./format.js";
import { summarize } from "./tracemodel.js";

const LOOKBACKS = [
  ["15m", "Last 15 minutes"],
  ["1h", "Last hour"],
  ["6h", "Last 6 hours"],
  ["24h", "Last 24 hours"],
  ["custom", "Custom range"],
];
const PARAMS = ["service", "operation", "tags", "minDuration", "maxDuration", "lookback", "start", "end", "limit"];

/** `key=value key2="a b"` (logfmt, as Jaeger UI) ⇄ the API's JSON object of tags. */
export function parseTags(text) {
  const tags = {};
  const re = /\s*([^\s=]+)=("((?:[^"\\]|\\.)*)"|\S*)/y;
  let rest = text.trim();
  let pos = 0;
  while (pos < rest.length) {
    re.lastIndex = pos;
    const m = re.exec(rest);
    if (!m) throw new Error(`cannot read tags at "${rest.slice(pos).trim()}": write key=value, separated by spaces`);
    tags[m[1]] = m[3] !== undefined ? m[3].replace(/\\(.)/g, "$1") : m[2];
    pos = re.lastIndex;
    while (pos < rest.length && /\s/.test(rest[pos])) pos++;
  }
  return tags;
}

function tagsText(json) {
  try {
    const obj = JSON.parse(json);
    return Object.entries(obj)
      .map(([k, v]) => (/[\s"]/.test(String(v)) || v === "" ? `${k}="${String(v).replace(/["\\]/g, "\\$&")}"` : `${k}=${v}`))
      .join(" ");
  } catch {
    return json;
  }
}

function toLocalInput(us) {
  const d = new Date(us / 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function renderSearch(main, params, navigate) {
  document.title = "Search · Skein";
  const controller = new AbortController();
  const f = {
    service: h("select", { name: "service", "aria-label": "Service" }, h("option", { value: "" }, "Loading services…")),
    operation: h("select", { name: "operation", "aria-label": "Operation" }, h("option", { value: "" }, "All operations")),
    tags: h("input", { name: "tags", placeholder: "http.response.status_code=500 error=true", spellcheck: "false" }),
    minDuration: h("input", { name: "minDuration", placeholder: "e.g. 100ms", size: 8 }),
    maxDuration: h("input", { name: "maxDuration", placeholder: "e.g. 2s", size: 8 }),
    lookback: h("select", { name: "lookback" }, LOOKBACKS.map(([v, label]) => h("option", { value: v }, label))),
    start: h("input", { name: "start", type: "datetime-local" }),
    end: h("input", { name: "end", type: "datetime-local" }),
    limit: h("input", { name: "limit", type: "number", min: 1, max: 1500, value: 20 }),
  };
  const customRange = h("div", { class: "field custom-range" }, h("label", null, "From", f.start), h("label", null, "To", f.end));
  const formError = h("p", { class: "error-text form-error", role: "alert" });
  const form = h(
    "form",
    { class: "search-form", autocomplete: "off" },
    h("h2", null, "Search"),
    h("label", { class: "field" }, "Service", f.service),
    h("label", { class: "field" }, "Operation", f.operation),
    h("label", { class: "field" }, "Tags", f.tags, h("small", { class: "muted" }, "key=value, separated by spaces")),
    h("div", { class: "field pair" }, h("label", null, "Min duration", f.minDuration), h("label", null, "Max duration", f.maxDuration)),
    h("label", { class: "field" }, "Time range", f.lookback),
    customRange,
    h("label", { class: "field" }, "Limit", f.limit),
    formError,
    h("button", { type: "submit", class: "primary" }, "Find traces"),
  );
  const results = h("div", { class: "results" });
  replace(main, h("div", { class: "search-page" }, form, results));

  // Fill the form from the URL.
  f.tags.value = params.get("tags") ? tagsText(params.get("tags")) : "";
  f.minDuration.value = params.get("minDuration") ?? "";
  f.maxDuration.value = params.get("maxDuration") ?? "";
  f.lookback.value = params.get("lookback") && LOOKBACKS.some(([v]) => v === params.get("lookback")) ? params.get("lookback") : "1h";
  f.limit.value = params.get("limit") ?? "20";
  const nowUs = Date.now() * 1000;
  f.end.value = toLocalInput(Number(params.get("end")) || nowUs);
  f.start.value = toLocalInput(Number(params.get("start")) || nowUs - 3600e6);
  const syncCustom = () => (customRange.hidden = f.lookback.value !== "custom");
  f.lookback.addEventListener("change", syncCustom);
  syncCustom();

  const loadOperations = async (service, want) => {
    replace(f.operation, h("option", { value: "" }, "All operations"));
    if (!service) return;
    try {
      const ops = await api.operations(service);
      for (const op of ops) f.operation.appendChild(h("option", { value: op }, op));
      if (want && ops.includes(want)) f.operation.value = want;
      else if (want) {
        f.operation.appendChild(h("option", { value: want }, want));
        f.operation.value = want;
      }
    } catch (e) {
      formError.textContent = `cannot load operations: ${e.message}`;
    }
  };
  f.service.addEventListener("change", () => loadOperations(f.service.value));

  api
    .services()
    .then(async (services) => {
      replace(f.service, h("option", { value: "" }, services.length ? "Choose a service" : "No services yet"), services.map((s) => h("option", { value: s }, s)));
      const want = params.get("service");
      if (want) {
        if (!services.includes(want)) f.service.appendChild(h("option", { value: want }, want));
        f.service.value = want;
        await loadOperations(want, params.get("operation"));
      } else if (services.length === 1) {
        f.service.value = services[0];
        await loadOperations(services[0]);
      }
    })
    .catch((e) => {
      replace(f.service, h("option", { value: "" }, "(cannot load services)"));
      formError.textContent = e.message;
    });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    formError.textContent = "";
    const q = new URLSearchParams();
    if (!f.service.value) {
      formError.textContent = "Choose a service.";
      return;
    }
    q.set("service", f.service.value);
    if (f.operation.value) q.set("operation", f.operation.value);
    if (f.tags.value.trim()) {
      try {
        q.set("tags", JSON.stringify(parseTags(f.tags.value)));
      } catch (err) {
        formError.textContent = err.message;
        return;
      }
    }
    if (f.minDuration.value.trim()) q.set("minDuration", f.minDuration.value.trim());
    if (f.maxDuration.value.trim()) q.set("maxDuration", f.maxDuration.value.trim());
    q.set("lookback", f.lookback.value);
    if (f.lookback.value === "custom") {
      const start = new Date(f.start.value).getTime();
      const end = new Date(f.end.value).getTime();
      if (!Number.isFinite(start) || !Number.isFinite(end) || end <= start) {
        formError.textContent = "The custom range needs a start before its end.";
        return;
      }
      q.set("start", String(start * 1000));
      q.set("end", String(end * 1000));
    }
    q.set("limit", f.limit.value || "20");
    navigate(`/search?${q}`);
  });

  if (params.get("service")) runSearch(results, params, controller.signal);
  else replace(results, h("div", { class: "empty pad muted" }, h("p", null, "Choose a service and find traces."), h("p", null, "Spans arrive over OTLP on :4317 (gRPC) and :4318 (HTTP).")));
  return () => controller.abort();
}

async function runSearch(results, params, signal) {
  const q = new URLSearchParams();
  for (const k of PARAMS) if (params.get(k)) q.set(k, params.get(k));
  replace(results, h("p", { class: "pad muted" }, "Searching…"));
  let traces;
  const t0 = performance.now();
  try {
    traces = await api.search(q, { signal });
  } catch (e) {
    if (e.name === "AbortError") return;
    replace(results, h("div", { class: "pad" }, h("p", { class: "error-text", role: "alert" }, `Search failed: ${e.message}`)));
    return;
  }
  const took = performance.now() - t0;
  const summaries = traces.map(summarize);
  let order = "recent";
  const list = h("ol", { class: "trace-list" });
  const sorters = {
    recent: (a, b) => b.startMs - a.startMs,
    longest: (a, b) => b.duration - a.duration,
    shortest: (a, b) => a.duration - b.duration,
    spans: (a, b) => b.spanCount - a.spanCount,
    errors: (a, b) => b.errors - a.errors || b.startMs - a.startMs,
  };
  const colors = serviceColors(summaries.flatMap((s) => s.services.map(([name]) => name)));
  const drawList = () => {
    const sorted = summaries.slice().sort(sorters[order]);
    replace(list, sorted.map((s) => resultItem(s, colors)));
  };
  const sortSelect = h(
    "select",
    { "aria-label": "Sort", onchange: (e) => ((order = e.target.value), drawList()) },
    h("option", { value: "recent" }, "Most recent"),
    h("option", { value: "longest" }, "Longest first"),
    h("option", { value: "shortest" }, "Shortest first"),
    h("option", { value: "spans" }, "Most spans"),
    h("option", { value: "errors" }, "Most errors"),
  );
  drawList();
  replace(
    results,
    summaries.length ? scatter(summaries) : null,
    h("div", { class: "results-head" }, h("strong", { class: "result-count" }, plural(summaries.length, "trace")), h("span", { class: "muted" }, ` in ${Math.round(took)} ms`), h("span", { class: "grow" }), summaries.length ? sortSelect : null),
    summaries.length ? list : h("div", { class: "empty pad muted" }, "No traces match this search. Widen the time range or remove a filter."),
  );
}

function resultItem(s, colors) {
  return h(
    "li",
    { class: "trace-item", dataset: { trace: s.traceId } },
    link(
      `/trace/${s.traceId}`,
      { class: "trace-item-link" },
      h(
        "div",
        { class: "trace-item-head" },
        h("span", { class: "swatch", style: { background: colors.get(s.rootService) } }),
        h("span", { class: "title-text" }, h("span", { class: "svc" }, s.rootService), ": ", h("span", { class: "op" }, s.rootName)),
        s.hasRoot ? null : h("span", { class: "orphan-mark", title: "no span of this trace is a root: its root is missing" }, "⚠ root missing"),
        h("span", { class: "grow" }),
        h("span", { class: "duration" }, fmtDuration(s.duration)),
      ),
      h(
        "div",
        { class: "trace-item-meta" },
        h("span", { class: "muted mono" }, s.traceId.slice(0, 16)),
        h("span", null, plural(s.spanCount, "span")),
        s.errors ? h("span", { class: "error-text" }, plural(s.errors, "error")) : null,
        h("span", { class: "chips" }, s.services.map(([name, n]) => h("span", { class: "chip", style: { borderColor: colors.get(name) } }, `${name} (${n})`))),
        h("span", { class: "grow" }),
        h("span", { class: "muted", title: fmtDateTime(s.startMs) }, `${fmtDateTime(s.startMs)} · ${fmtAgo(s.startMs)}`),
      ),
    ),
  );
}

/** Duration over time; one circle per trace, red when it has errors; a click opens the trace. */
function scatter(summaries) {
  const W = 1000;
  const H = 160;
  const pad = { l: 60, r: 12, t: 10, b: 22 };
  const t0 = Math.min(...summaries.map((s) => s.startMs));
  const t1 = Math.max(...summaries.map((s) => s.startMs));
  const dMax = Math.max(...summaries.map((s) => s.duration), 1);
  const x = (t) => pad.l + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (W - pad.l - pad.r) : (W - pad.l - pad.r) / 2);
  const y = (d) => H - pad.b - (d / dMax) * (H - pad.t - pad.b);
  const maxSpans = Math.max(...summaries.map((s) => s.spanCount), 1);
  const label = (ms) => fmtDateTime(ms).slice(11, 19);
  return svg(
    "svg",
    { class: "scatter", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Trace durations over time" },
    svg("line", { x1: pad.l, y1: H - pad.b, x2: W - pad.r, y2: H - pad.b, class: "axis" }),
    svg("line", { x1: pad.l, y1: pad.t, x2: pad.l, y2: H - pad.b, class: "axis" }),
    svg("text", { x: pad.l - 6, y: pad.t + 8, class: "axis-label", "text-anchor": "end" }, fmtDuration(dMax)),
    svg("text", { x: pad.l - 6, y: H - pad.b, class: "axis-label", "text-anchor": "end" }, "0"),
    svg("text", { x: pad.l, y: H - 6, class: "axis-label" }, label(t0)),
    t1 > t0 ? svg("text", { x: W - pad.r, y: H - 6, class: "axis-label", "text-anchor": "end" }, label(t1)) : null,
    summaries.map((s) =>
      svg(
        "a",
        { href: `/trace/${s.traceId}`, "data-link": true, class: "point" },
        svg(
          "circle",
          { cx: x(s.startMs), cy: y(s.duration), r: 4 + 6 * Math.sqrt(s.spanCount / maxSpans), class: s.errors ? "dot error" : "dot", dataset: { trace: s.traceId } },
          svg("title", null, `${s.rootService}: ${s.rootName} — ${fmtDuration(s.duration)}, ${plural(s.spanCount, "span")}${s.errors ? `, ${plural(s.errors, "error")}` : ""}`),
        ),
      ),
    ),
  );
}
