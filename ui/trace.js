// The trace page: header, waterfall (virtualised rows, collapsible subtrees, critical path),
// span details, find-in-trace.

import { api } from "./api.js";
import { copyText, h, link, replace } from "./dom.js";
import { fmtDateTime, fmtDuration, plural, serviceColors } from "./format.js";
import { ancestors, buildTrace, findSpans, spanDetails, visibleRows } from "./tracemodel.js";

const ROW_H = 24;
const OVERSCAN = 12;
const MAX_INDENT_LEVELS = 40;

export function renderTrace(main, traceId, params, navigate) {
  const controller = new AbortController();
  document.title = `Trace ${traceId} · Skein`;
  replace(main, h("div", { class: "pad muted", id: "trace-loading" }, `Loading trace ${traceId}…`));
  let view = null;
  api
    .traceView(traceId, { signal: controller.signal })
    .then((result) => {
      const trace = buildTrace(result);
      view = new TraceView(main, trace, navigate);
      // Is this request split over several traces? The banner links to the other pieces.
      api
        .diagnosis(traceId, { signal: controller.signal })
        .then((d) => view.showDiagnosis(d))
        .catch(() => {});
      const focus = params.get("span");
      if (focus && trace.byId.has(focus)) view.reveal(trace.byId.get(focus), true);
      performance.mark("skein-trace-rendered");
      document.body.dataset.traceRendered = traceId;
    })
    .catch((e) => {
      if (e.name === "AbortError") return;
      replace(
        main,
        h(
          "div",
          { class: "pad" },
          h("h1", null, e.status === 404 ? "Trace not found" : "Cannot show this trace"),
          h("p", { class: "error-text" }, e.message),
          h("p", null, "Trace id: ", h("code", null, traceId)),
          h("p", null, link("/search", null, "Back to search")),
        ),
      );
    });
  return () => {
    controller.abort();
    view?.destroy();
  };
}

class TraceView {
  constructor(main, trace, navigate) {
    this.trace = trace;
    this.navigate = navigate;
    this.collapsed = new Set();
    this.rows = visibleRows(trace, this.collapsed);
    this.selected = null;
    this.matches = [];
    this.matchSet = new Set();
    this.matchIndex = -1;
    this.frame = 0;

    const t = trace;
    const root = t.root;
    const colors = serviceColors(t.services.keys());
    const serviceColor = (name) => colors.get(name);
    this.color = serviceColor;
    document.title = `${root.service}: ${root.name} · Skein`;
    this.findInput = h("input", {
      type: "search",
      class: "find",
      placeholder: "Find in trace (name, service, attribute, span id)",
      "aria-label": "Find in trace",
      oninput: () => this.find(this.findInput.value),
      onkeydown: (e) => {
        if (e.key === "Enter") this.step(e.shiftKey ? -1 : 1);
      },
    });
    this.findCount = h("span", { class: "find-count muted" });
    this.copyButton = h("button", { type: "button", class: "small", title: "Copy trace id", onclick: () => this.copyId() }, "Copy");

    const header = h(
      "div",
      { class: "trace-header" },
      h(
        "h1",
        { class: "trace-title" },
        h("span", { class: "swatch", style: { background: serviceColor(root.service) } }),
        h("span", { class: "title-text" }, h("span", { class: "svc" }, root.service), ": ", root.name),
      ),
      h(
        "dl",
        { class: "facts" },
        fact("Trace ID", h("code", { class: "trace-id" }, t.traceId), this.copyButton),
        fact("Start", fmtDateTime(t.startUnixMs)),
        fact("Duration", fmtDuration(t.duration)),
        fact("Services", String(t.services.size)),
        fact("Depth", String(t.depth)),
        fact("Spans", t.spans.length.toLocaleString("en-US")),
        fact("Errors", h("span", { class: t.errors ? "error-text" : "" }, String(t.errors))),
      ),
      this.warnings(),
      h(
        "div",
        { class: "toolbar" },
        h("button", { type: "button", class: "small", onclick: () => this.setAll(false) }, "Expand all"),
        h("button", { type: "button", class: "small", onclick: () => this.setAll(true) }, "Collapse all"),
        this.findInput,
        this.findCount,
        h("button", { type: "button", class: "small", title: "Previous match (Shift+Enter)", onclick: () => this.step(-1) }, "↑"),
        h("button", { type: "button", class: "small", title: "Next match (Enter)", onclick: () => this.step(1) }, "↓"),
        h(
          "span",
          { class: "legend" },
          [...t.services.entries()].map(([name, n]) =>
            h("span", { class: "legend-item", title: plural(n, "span") }, h("span", { class: "swatch", style: { background: serviceColor(name) } }), name),
          ),
          t.hasCriticalPath ? h("span", { class: "legend-item" }, h("span", { class: "cp-key" }), "critical path") : null,
        ),
      ),
    );

    const ticks = [0, 0.25, 0.5, 0.75, 1];
    this.ruler = h(
      "div",
      { class: "ruler" },
      h("div", { class: "name-col" }, "Service & operation"),
      h(
        "div",
        { class: "bar-col" },
        ticks.map((f) =>
          h("span", { class: "tick", style: { left: `${f * 100}%` } }, h("span", { class: f === 1 ? "tick-label end" : "tick-label" }, fmtDuration(t.duration * f))),
        ),
      ),
    );
    this.spacer = h("div", { class: "spacer" }, ticks.slice(1, -1).map((f) => h("div", { class: "gridline", style: { left: `calc(var(--name-w) + 8px + (100% - var(--name-w) - 16px) * ${f})` } })));
    this.scroller = h("div", { class: "rows", onscroll: () => this.schedule() }, this.ruler, this.spacer);
    this.scroller.addEventListener("click", (e) => this.onRowsClick(e));
    this.detail = h("aside", { class: "detail", hidden: true });
    this.body = h("div", { class: "trace-body" }, h("div", { class: "timeline" }, this.scroller), this.detail);
    this.header = header;
    this.page = h("section", { class: "trace-page" }, header, this.body);
    replace(main, this.page);
    this.onResize = () => this.schedule();
    window.addEventListener("resize", this.onResize);
    this.layout();
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
    cancelAnimationFrame(this.frame);
  }

  warnings() {
    const t = this.trace;
    const out = [];
    const jump = (s) => h("button", { type: "button", class: "linkish", onclick: () => this.reveal(s, true) }, `${s.service}: ${s.name}`);
    if (t.orphans.length) {
      out.push(
        h(
          "div",
          { class: "warning", role: "alert", "data-warning": "orphans" },
          h("strong", null, `⚠ ${plural(t.orphans.length, "span")} with a parent that is not in this trace. `),
          "They are shown at the top level and marked; their parent may still arrive, or the context was lost on the way (a spawned task, a middleware, a client that does not inject). ",
          t.orphans.slice(0, 5).map((s, i) => [i ? ", " : "", jump(s)]),
          t.orphans.length > 5 ? ` and ${t.orphans.length - 5} more` : "",
        ),
      );
    }
    if (t.cycles.length) {
      out.push(h("div", { class: "warning", role: "alert" }, h("strong", null, `⚠ ${plural(t.cycles.length, "span")} whose parent links form a cycle; `), "shown at the top level."));
    }
    if (t.duplicates.length) {
      out.push(h("div", { class: "warning", role: "alert" }, h("strong", null, `⚠ ${plural(t.duplicates.length, "span id")} used more than once; `), "only the first span of each is shown."));
    }
    if (t.tops.filter((s) => !s.problem).length > 1) {
      out.push(h("div", { class: "warning", role: "alert" }, h("strong", null, `⚠ This trace has ${t.tops.filter((s) => !s.problem).length} root spans. `), "A trace normally has one; the others started without a parent context."));
    }
    return out;
  }

  /** A banner per other piece of this request that the trace doctor found. */
  showDiagnosis(d) {
    const pieces = (d.problems ?? []).filter((p) => p.otherTraceID && p.otherTraceID !== this.trace.traceId);
    const banners = pieces.slice(0, 5).map((p) => {
      const s = this.trace.byId.get(p.spanID);
      const here = s ? h("button", { type: "button", class: "linkish", onclick: () => this.reveal(s, true) }, `${s.service}: ${s.name}`) : p.spanID;
      const other = link(`/trace/${p.otherTraceID}?span=${p.otherSpanID}`, { class: "continuation" }, `trace ${p.otherTraceID}`);
      // A pair is only stated as fact when no other trace could be the other piece; otherwise
      // the banner says it is one candidate among several.
      const sure = p.unambiguous
        ? ` (confidence ${Math.round(p.confidence * 100)}%).`
        : ` — possibly: identical calls were in flight at the same time, so this is one candidate among several (confidence ${Math.round(p.confidence * 100)}%).`;
      const text =
        p.kind === "split_trace"
          ? p.relation === "continues_in"
            ? ["⚠ This request is split: the context was lost at ", here, "; the request continues in ", other, sure]
            : ["⚠ This trace is the continuation of ", other, ": ", here, " started a new trace instead of joining it", sure]
          : p.relation === "continues_in"
            ? ["⚠ Work started under ", here, " lost its context and runs in ", other, sure]
            : ["⚠ ", here, " started a new trace while ", other, " was running in the same process: its context was lost", sure];
      return h("div", { class: "warning split-banner", role: "alert", dataset: { other: p.otherTraceID, relation: p.relation } }, ...text);
    });
    if (banners.length) this.header.querySelector(".toolbar").before(...banners);
  }

  // Row content -------------------------------------------------------------------------------

  layout() {
    this.spacer.style.height = `${this.rows.length * ROW_H}px`;
    this.rowIndex = new Map(this.rows.map((s, i) => [s, i]));
    this.draw();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    const top = this.scroller.scrollTop;
    const height = this.scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / ROW_H) + OVERSCAN);
    const frag = document.createDocumentFragment();
    for (let i = first; i < last; i++) frag.appendChild(this.row(this.rows[i], i));
    for (const old of this.spacer.querySelectorAll(".row")) old.remove();
    this.spacer.appendChild(frag);
  }

  row(s, i) {
    const t = this.trace;
    const total = t.duration || 1;
    const color = this.color(s.service);
    const hasKids = s.children.length > 0;
    const collapsed = this.collapsed.has(s.id);
    const classes = ["row"];
    if (s === this.selected) classes.push("selected");
    if (this.matchSet.has(s)) classes.push("match");
    if (this.matches[this.matchIndex] === s) classes.push("current-match");
    if (s.error) classes.push("has-error");
    const indent = Math.min(s.depth, MAX_INDENT_LEVELS) * 14;
    const left = (s.start / total) * 100;
    const width = Math.max((s.duration / total) * 100, 0.05);
    // The duration label goes after the bar, or before it when the bar ends near the right edge,
    // or inside it when there is no room on either side.
    const place = left + width <= 75 ? "after" : left >= 12 ? "before" : "inside";
    return h(
      "div",
      {
        class: classes.join(" "),
        style: { transform: `translateY(${i * ROW_H}px)` },
        dataset: { span: s.id, depth: String(s.depth) },
        role: "row",
      },
      h(
        "div",
        { class: "name-col", style: { paddingLeft: `${indent + 4}px` }, title: `${s.service}: ${s.name}` },
        hasKids
          ? h(
              "button",
              { type: "button", class: "toggle", "aria-expanded": String(!collapsed), "aria-label": collapsed ? "Expand" : "Collapse", dataset: { toggle: s.id } },
              collapsed ? "▸" : "▾",
            )
          : h("span", { class: "toggle-space" }),
        h("span", { class: "swatch", style: { background: color } }),
        s.error ? h("span", { class: "err-mark", title: `error${s.status.message ? `: ${s.status.message}` : ""}` }, "!") : null,
        s.problem ? h("span", { class: "orphan-mark", title: `${s.problem}: ${s.parentId}` }, `⚠ ${s.problem}`) : null,
        h("span", { class: "svc" }, s.service),
        " ",
        h("span", { class: "op" }, s.name),
        collapsed ? h("span", { class: "hidden-count muted" }, ` (+${s.size - 1})`) : null,
        s.depth > MAX_INDENT_LEVELS ? h("span", { class: "muted" }, ` · depth ${s.depth}`) : null,
      ),
      h(
        "div",
        { class: "bar-col" },
        h(
          "div",
          { class: "bar", style: { left: `${left}%`, width: `${width}%`, background: color } },
          s.critical.map(([a, b]) =>
            h("div", { class: "cp", style: { left: `${((a - s.start) / (s.duration || 1)) * 100}%`, width: `${((b - a) / (s.duration || 1)) * 100}%` } }),
          ),
        ),
        h(
          "span",
          {
            class: `bar-label ${place}`,
            style: place === "after" ? { left: `${left + width}%` } : place === "before" ? { right: `${100 - left}%` } : { right: `${100 - left - width}%` },
          },
          fmtDuration(s.duration),
        ),
      ),
    );
  }

  onRowsClick(e) {
    const toggle = e.target.closest("[data-toggle]");
    if (toggle) {
      this.toggle(this.trace.byId.get(toggle.dataset.toggle));
      return;
    }
    const row = e.target.closest(".row");
    if (row) this.select(this.trace.byId.get(row.dataset.span));
  }

  toggle(s) {
    if (this.collapsed.has(s.id)) this.collapsed.delete(s.id);
    else this.collapsed.add(s.id);
    this.rows = visibleRows(this.trace, this.collapsed);
    this.layout();
  }

  setAll(collapse) {
    this.collapsed.clear();
    if (collapse) for (const s of this.trace.spans) if (s.children.length && s.depth >= 1) this.collapsed.add(s.id);
    this.rows = visibleRows(this.trace, this.collapsed);
    this.layout();
  }

  /** Expands the span's ancestors, scrolls it into view, and optionally selects it. */
  reveal(s, select) {
    let changed = false;
    for (const a of ancestors(this.trace, s)) if (this.collapsed.delete(a.id)) changed = true;
    if (changed) {
      this.rows = visibleRows(this.trace, this.collapsed);
      this.layout();
    }
    const i = this.rowIndex.get(s);
    const top = i * ROW_H;
    const h = this.scroller.clientHeight || 600;
    if (top < this.scroller.scrollTop || top + ROW_H > this.scroller.scrollTop + h) this.scroller.scrollTop = Math.max(0, top - h / 3);
    if (select) this.select(s);
    else this.draw();
  }

  // Find ----------------------------------------------------------------------------------------

  find(q) {
    this.matches = findSpans(this.trace, q);
    this.matchSet = new Set(this.matches);
    this.matchIndex = this.matches.length ? 0 : -1;
    this.findCount.textContent = q.trim() ? (this.matches.length ? `1 of ${this.matches.length}` : "no match") : "";
    if (this.matches.length) this.reveal(this.matches[0], false);
    else this.draw();
  }

  step(d) {
    if (!this.matches.length) return;
    this.matchIndex = (this.matchIndex + d + this.matches.length) % this.matches.length;
    this.findCount.textContent = `${this.matchIndex + 1} of ${this.matches.length}`;
    this.reveal(this.matches[this.matchIndex], false);
  }

  async copyId() {
    const ok = await copyText(this.trace.traceId);
    this.copyButton.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => (this.copyButton.textContent = "Copy"), 1500);
  }

  // Details -------------------------------------------------------------------------------------

  select(s) {
    this.selected = s;
    this.draw();
    this.detail.hidden = false;
    this.body.classList.add("with-detail");
    replace(this.detail, this.details(s));
  }

  details(s) {
    const t = this.trace;
    const d = spanDetails(t, s);
    const close = h("button", { type: "button", class: "small close", "aria-label": "Close details", onclick: () => this.closeDetail() }, "×");
    const parent = s.parentId ? t.byId.get(s.parentId) : null;
    return h(
      "div",
      { class: "detail-inner", "data-detail": s.id },
      h("div", { class: "detail-head" }, h("h2", null, h("span", { class: "swatch", style: { background: this.color(s.service) } }), s.name), close),
      s.problem
        ? h("div", { class: "warning" }, h("strong", null, `⚠ ${s.problem}: `), `the parent span ${s.parentId} is not in this trace; this span is shown at the top level.`)
        : null,
      table("Span", [
        ["Service", s.service],
        ["Kind", s.kind],
        ["Status", s.status.code + (s.status.message ? `: ${s.status.message}` : ""), s.error ? "error-text" : ""],
        ["Start", `${fmtDuration(s.start)} after the trace start (${fmtDateTime(s.startUnixMs)})`],
        ["Duration", fmtDuration(s.duration)],
        ["Span ID", s.id],
        ["Parent ID", parent ? h("button", { type: "button", class: "linkish", onclick: () => this.reveal(parent, true) }, s.parentId) : s.parentId || "(root)"],
        ["Trace state", s.traceState],
        ["Flags", String(s.flags)],
        ["Critical path", s.critical.length ? fmtDuration(s.critical.reduce((n, [a, b]) => n + b - a, 0)) + " of this span's time" : ""],
      ]),
      attrTable("Attributes", d.attributes, s.dropped.attributes),
      h(
        "section",
        null,
        h("h3", null, `Events (${d.events.length})`),
        d.events.length
          ? d.events.map((e) => h("div", { class: "event" }, h("div", null, h("strong", null, e.name), h("span", { class: "muted" }, ` at +${fmtDuration(e.offset)}`)), attrTable(null, e.attributes, e.dropped)))
          : h("p", { class: "muted" }, "none"),
        s.dropped.events ? h("p", { class: "muted" }, `${s.dropped.events} dropped by the sender`) : null,
      ),
      h(
        "section",
        null,
        h("h3", null, `Links (${d.links.length})`),
        d.links.length
          ? d.links.map((l) =>
              h(
                "div",
                { class: "event" },
                link(`/trace/${encodeURIComponent(l.traceId)}?span=${encodeURIComponent(l.spanId)}`, { class: "trace-link" }, `trace ${l.traceId} · span ${l.spanId}`),
                attrTable(null, l.attributes, l.dropped),
              ),
            )
          : h("p", { class: "muted" }, "none"),
        s.dropped.links ? h("p", { class: "muted" }, `${s.dropped.links} dropped by the sender`) : null,
      ),
      attrTable("Resource", s.resource.attributes, s.resource.dropped),
      table("Instrumentation scope", [
        ["Name", s.scope.name],
        ["Version", s.scope.version],
        ...s.scope.attributes.map((a) => [a.key, a.value]),
      ]),
    );
  }

  closeDetail() {
    this.selected = null;
    this.detail.hidden = true;
    this.body.classList.remove("with-detail");
    this.draw();
  }
}

function fact(label, ...value) {
  return h("div", { class: "fact" }, h("dt", null, label), h("dd", null, ...value));
}

function table(title, rows) {
  const shown = rows.filter(([, v]) => v !== "" && v !== undefined && v !== null);
  return h(
    "section",
    null,
    title ? h("h3", null, title) : null,
    h("table", { class: "kv" }, h("tbody", null, shown.map(([k, v, cls]) => h("tr", null, h("th", null, k), h("td", { class: cls || null }, v))))),
  );
}

function attrTable(title, attrs, dropped) {
  return h(
    "section",
    { class: title ? "" : "nested" },
    title ? h("h3", null, `${title} (${attrs.length})`) : null,
    attrs.length
      ? h("table", { class: "kv" }, h("tbody", null, attrs.map((a) => h("tr", null, h("th", null, a.key), h("td", { title: a.type }, a.value)))))
      : title
        ? h("p", { class: "muted" }, "none")
        : null,
    dropped ? h("p", { class: "muted" }, `${dropped} dropped by the sender`) : null,
  );
}
