// The trace model behind the trace page: the trace view of `/api/v1/traces/{id}/view` (a string
// table, spans as arrays, times as offsets) → spans with a tree, depth, service, critical-path
// segments, and the problems a reader must see (missing parents, cycles).
// Pure functions, no DOM: tests run them in Node.

const KINDS = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"];
const STATUS = ["UNSET", "OK", "ERROR"];
const TYPES = ["empty", "string", "bool", "int", "double", "bytes", "array", "map"];

/** Unix nanoseconds (a decimal string) as [seconds, nanoseconds], so no double exceeds 2^53. */
export function nanosParts(s) {
  const str = String(s ?? "0");
  const cut = Math.max(0, str.length - 9);
  return [Number(str.slice(0, cut) || "0"), Number(str.slice(cut) || "0")];
}

/** Attributes of the view's flat `[key, value, type, …]` form, resolved through the string table. */
export function attributes(strings, flat) {
  const out = [];
  for (let i = 0; i + 2 < flat.length; i += 3) out.push({ key: strings[flat[i]], value: strings[flat[i + 1]], type: TYPES[flat[i + 2]] ?? "unknown" });
  return out;
}

/** Builds the model of a trace from its view (see docs/query-api.md). */
export function buildTrace(view) {
  const S = view.strings;
  const resources = view.resources.map((r) => {
    const attrs = attributes(S, r.attributes);
    return { attributes: attrs, dropped: r.dropped, schemaUrl: S[r.schemaUrl], service: attrs.find((a) => a.key === "service.name")?.value || "unknown_service" };
  });
  const scopes = view.scopes.map((sc) => ({ name: S[sc.name], version: S[sc.version], attributes: attributes(S, sc.attributes), schemaUrl: S[sc.schemaUrl] }));
  const base = nanosParts(view.base);
  const baseMs = base[0] * 1e3 + base[1] / 1e6;
  const spans = view.spans.map((r) => {
    const resource = resources[r[6]];
    return {
      id: r[0],
      parentId: r[1],
      name: S[r[2]],
      kind: KINDS[r[3]] ?? `KIND_${r[3]}`,
      start: r[4] / 1e3,
      duration: r[5] / 1e3,
      startUnixMs: baseMs + r[4] / 1e6,
      resource,
      service: resource.service,
      scope: scopes[r[7]],
      status: { code: STATUS[r[8]] ?? String(r[8]), message: S[r[9]] },
      attrFlat: r[10],
      rawEvents: r[11],
      rawLinks: r[12],
      traceState: S[r[13]],
      flags: r[14],
      dropped: { attributes: r[15][0], events: r[15][1], links: r[15][2] },
    };
  });
  return assemble(view.traceID, spans, view.criticalPath, baseMs, S);
}

/** A span's attributes, events and links, resolved (only when the details panel shows them). */
export function spanDetails(trace, s) {
  const S = trace.strings;
  return {
    attributes: attributes(S, s.attrFlat),
    events: s.rawEvents.map((e) => ({ offset: e[0] / 1e3, name: S[e[1]], attributes: attributes(S, e[2]), dropped: e[3] })),
    links: s.rawLinks.map((l) => ({ traceId: l[0], spanId: l[1], traceState: S[l[2]], attributes: attributes(S, l[3]), dropped: l[4] })),
  };
}

function assemble(traceId, spans, criticalPath, baseMs, strings) {
  if (spans.length === 0) throw new Error("the trace has no spans");
  const byId = new Map();
  let end = 0;
  const duplicates = [];
  for (const s of spans) {
    s.error = s.status.code === "ERROR";
    s.children = [];
    s.critical = [];
    s.problem = null;
    end = Math.max(end, s.start + s.duration);
    if (byId.has(s.id)) duplicates.push(s.id);
    else byId.set(s.id, s);
  }
  // Roots, children and the spans whose parent is not in the trace: those are shown at the top
  // level with a warning, never attached to some other span.
  const tops = [];
  for (const s of byId.values()) {
    if (!s.parentId) tops.push(s);
    else {
      const parent = byId.get(s.parentId);
      if (parent && parent !== s) parent.children.push(s);
      else {
        s.problem = parent === s ? "its own parent" : "missing parent";
        tops.push(s);
      }
    }
  }
  const byStart = (a, b) => a.start - b.start || (a.id < b.id ? -1 : 1);
  tops.sort((a, b) => (a.problem ? 1 : 0) - (b.problem ? 1 : 0) || byStart(a, b));
  // Pre-order with depth and subtree size, iteratively (a deep trace must not overflow the stack).
  const order = [];
  const visit = (top) => {
    const stack = [[top, 0]];
    while (stack.length) {
      const [s, depth] = stack.pop();
      if (s.index !== undefined) continue;
      s.depth = depth;
      s.index = order.length;
      order.push(s);
      s.children.sort(byStart);
      for (let i = s.children.length - 1; i >= 0; i--) stack.push([s.children[i], depth + 1]);
    }
  };
  for (const t of tops) visit(t);
  // Spans still unvisited sit on a parent cycle: show them too, flagged, rather than drop them.
  for (const s of byId.values()) {
    if (s.index === undefined) {
      s.problem = "parent cycle";
      s.children = s.children.filter((c) => c.index === undefined && c !== s);
      tops.push(s);
      visit(s);
    }
  }
  const size = new Array(order.length).fill(1);
  for (let i = order.length - 1; i >= 0; i--) {
    const s = order[i];
    for (const c of s.children) if (c.index > i) size[i] += size[c.index];
  }
  order.forEach((s, i) => (s.size = size[i]));

  for (const [i, a, b] of criticalPath ?? []) spans[i]?.critical.push([a / 1e3, b / 1e3]);

  const services = new Map();
  let depth = 0;
  let errors = 0;
  for (const s of order) {
    services.set(s.service, (services.get(s.service) ?? 0) + 1);
    depth = Math.max(depth, s.depth + 1);
    if (s.error) errors++;
  }
  const root = tops.find((t) => !t.problem) ?? tops[0];
  return {
    traceId,
    spans: order,
    byId,
    tops,
    root,
    strings,
    startUnixMs: baseMs,
    duration: end,
    depth,
    errors,
    services,
    orphans: order.filter((s) => s.problem === "missing parent"),
    cycles: order.filter((s) => s.problem === "parent cycle" || s.problem === "its own parent"),
    duplicates,
    hasCriticalPath: (criticalPath ?? []).length > 0,
  };
}

/** The rows to show: pre-order, skipping the subtrees of collapsed spans. */
export function visibleRows(trace, collapsed) {
  const rows = [];
  const spans = trace.spans;
  for (let i = 0; i < spans.length; ) {
    const s = spans[i];
    rows.push(s);
    i += collapsed.has(s.id) ? s.size : 1;
  }
  return rows;
}

/** Spans matching a find query (name, service, id, attribute keys and values; case-insensitive). */
export function findSpans(trace, query) {
  const q = query.trim().toLowerCase();
  if (!q) return [];
  const S = trace.strings;
  // Which strings of the table match, computed once: then each span is a few index lookups.
  const matching = S.map((t) => t.toLowerCase().includes(q));
  const flatHit = (flat) => {
    for (let i = 0; i + 1 < flat.length; i += 3) if (matching[flat[i]] || matching[flat[i + 1]]) return true;
    return false;
  };
  const hit = (t) => t.toLowerCase().includes(q);
  return trace.spans.filter(
    (s) => hit(s.name) || hit(s.service) || s.id.toLowerCase() === q || flatHit(s.attrFlat) || s.rawEvents.some((e) => matching[e[1]]),
  );
}

/** The ancestors of a span, nearest first. */
export function ancestors(trace, span) {
  const out = [];
  let p = span.problem ? undefined : trace.byId.get(span.parentId);
  while (p && out.length <= trace.spans.length) {
    out.push(p);
    p = p.problem ? undefined : trace.byId.get(p.parentId);
  }
  return out;
}

/**
 * The summary of one trace of a Jaeger v1 search answer: root service and operation, spans,
 * errors, services, start (unix ms) and duration (µs).
 */
export function summarize(trace) {
  const spans = trace.spans ?? [];
  const ids = new Set(spans.map((s) => s.spanID));
  const parentOf = (s) => (s.references ?? []).find((r) => r.refType === "CHILD_OF" && r.traceID === trace.traceID);
  let start = Infinity;
  let end = -Infinity;
  let errors = 0;
  const services = new Map();
  for (const s of spans) {
    start = Math.min(start, s.startTime);
    end = Math.max(end, s.startTime + s.duration);
    const service = trace.processes?.[s.processID]?.serviceName ?? "unknown_service";
    services.set(service, (services.get(service) ?? 0) + 1);
    if ((s.tags ?? []).some((t) => (t.key === "error" && t.value === true) || (t.key === "otel.status_code" && t.value === "ERROR"))) errors++;
  }
  // The root: the earliest span without a parent; failing that, the earliest whose parent is missing.
  const trueRoots = spans.filter((s) => !parentOf(s));
  const pieces = trueRoots.length ? trueRoots : spans.filter((s) => !ids.has(parentOf(s).spanID));
  const pool = pieces.length ? pieces : spans;
  const root = pool.reduce((a, b) => (a === null || b.startTime < a.startTime ? b : a), null);
  return {
    traceId: trace.traceID,
    rootService: root ? (trace.processes?.[root.processID]?.serviceName ?? "unknown_service") : "",
    rootName: root ? root.operationName : "",
    hasRoot: trueRoots.length > 0,
    spanCount: spans.length,
    errors,
    services: [...services.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)),
    startMs: spans.length ? start / 1000 : 0,
    duration: spans.length ? end - start : 0,
  };
}
