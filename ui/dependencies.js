// The service map: `/api/v1/service-map` for a chosen time window — the services, and the
// databases, caches and uninstrumented peers they call — drawn as layers from callers to
// callees, each edge labelled with its calls per second, error share and p95 latency, and the
// same figures as a table.

import { api } from "./api.js";
import { h, link, replace, svg } from "./dom.js";
import { fmtDuration, plural, serviceColors } from "./format.js";

const NODE_KINDS = { database: "database", cache: "cache", peer: "peer" };

/** Calls per second, short: 0.021/s, 3.4/s, 120/s. */
export function fmtRate(perSecond) {
  if (perSecond === 0) return "0/s";
  const digits = perSecond >= 100 ? 0 : perSecond >= 10 ? 1 : Math.max(1, 1 - Math.floor(Math.log10(perSecond)));
  return `${perSecond.toFixed(Math.min(digits, 4))}/s`;
}

/** An error share as a percentage: 0%, 0.4%, 23.1%. */
export function fmtShare(rate) {
  return rate === 0 ? "0%" : `${(rate * 100).toFixed(1)}%`;
}

/** The text on an edge: calls/s · error % · p95. */
export function edgeLabel(e) {
  return `${fmtRate(e.callsPerSecond)} · ${fmtShare(e.errorRate)} · p95 ${fmtDuration(e.p95Ms * 1000)}`;
}

const WINDOWS = [
  ["15m", "Last 15 minutes", 15 * 60e3],
  ["1h", "Last hour", 3600e3],
  ["6h", "Last 6 hours", 6 * 3600e3],
  ["24h", "Last 24 hours", 24 * 3600e3],
  ["7d", "Last 7 days", 7 * 24 * 3600e3],
];

export function renderDependencies(main, params, navigate) {
  document.title = "Service map · Skein";
  const chosen = WINDOWS.find(([v]) => v === params.get("lookback")) ?? WINDOWS[1];
  const select = h(
    "select",
    { "aria-label": "Time window", onchange: (e) => navigate(`/dependencies?lookback=${e.target.value}`) },
    WINDOWS.map(([v, label]) => h("option", { value: v }, label)),
  );
  select.value = chosen[0];
  const body = h("div", { class: "deps-body" }, h("p", { class: "muted" }, "Loading…"));
  replace(main, h("div", { class: "deps-page pad" }, h("div", { class: "deps-head" }, h("h1", null, "Service map"), select), body));
  let live = true;
  api
    .serviceMap(Date.now(), chosen[2])
    .then((map) => {
      if (!live) return;
      const links = map.edges.map((e) => ({ ...e, parent: e.from, child: e.to, callCount: e.calls }));
      if (!links.length) {
        replace(body, h("p", { class: "empty muted" }, "No calls between services in this window. Calls appear when a span's parent belongs to another service, or a client span names the database or peer it calls."));
        return;
      }
      const kinds = new Map(map.nodes.map((n) => [n.id, n.kind]));
      const colors = serviceColors(map.nodes.filter((n) => n.kind === "service").map((n) => n.id));
      const note = map.truncated ? h("p", { class: "muted", role: "status" }, "This window holds more spans than one map reads: the figures cover part of it.") : null;
      replace(body, note, graph(links, colors, kinds), callTable(links, colors, kinds));
    })
    .catch((e) => live && replace(body, h("p", { class: "error-text", role: "alert" }, `Cannot load dependencies: ${e.message}`)));
  return () => (live = false);
}

/** Layers by longest path from the callers (edges that close a cycle are ignored for layering). */
export function layout(links) {
  const names = [...new Set(links.flatMap((l) => [l.parent, l.child]))].sort();
  const out = new Map(names.map((n) => [n, []]));
  for (const l of links) if (l.parent !== l.child) out.get(l.parent).push(l.child);
  const state = new Map();
  const back = new Set();
  const order = [];
  // Start from the services nobody calls, so a cycle is broken at the edge furthest from them.
  const called = new Set(links.filter((l) => l.parent !== l.child).map((l) => l.child));
  const starts = [...names.filter((n) => !called.has(n)), ...names.filter((n) => called.has(n))];
  for (const start of starts) {
    if (state.has(start)) continue;
    const stack = [[start, 0]];
    state.set(start, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const next = out.get(top[0])[top[1]++];
      if (next === undefined) {
        state.set(top[0], 2);
        order.push(top[0]);
        stack.pop();
      } else if (!state.has(next)) {
        state.set(next, 1);
        stack.push([next, 0]);
      } else if (state.get(next) === 1) back.add(`${top[0]}\u0000${next}`);
    }
  }
  const layer = new Map(names.map((n) => [n, 0]));
  for (const n of order.reverse()) {
    for (const c of out.get(n)) if (!back.has(`${n}\u0000${c}`)) layer.set(c, Math.max(layer.get(c), layer.get(n) + 1));
  }
  const layers = [];
  for (const n of names) (layers[layer.get(n)] ??= []).push(n);
  // Order each layer by the mean position of its callers, to reduce crossings.
  const pos = new Map();
  layers.forEach((ns, li) => {
    if (li > 0) {
      const key = (n) => {
        const ps = links.filter((l) => l.child === n && pos.has(l.parent)).map((l) => pos.get(l.parent));
        return ps.length ? ps.reduce((a, b) => a + b, 0) / ps.length : Infinity;
      };
      ns.sort((a, b) => key(a) - key(b) || (a < b ? -1 : 1));
    }
    ns.forEach((n, i) => pos.set(n, i));
  });
  return { layers, layer, pos };
}

function graph(links, colors, kinds) {
  const { layers, layer, pos } = layout(links);
  const NW = 170;
  const NH = 40;
  const GX = 190;
  const GY = 34;
  const rows = Math.max(...layers.map((l) => l.length));
  const W = layers.length * (NW + GX) - GX + 40;
  const backwards = links.some((l) => l.parent !== l.child && layer.get(l.child) <= layer.get(l.parent));
  const H = rows * (NH + GY) - GY + 40 + (backwards ? GY : 0) + (links.some((l) => l.parent === l.child) ? 30 : 0);
  const top = links.some((l) => l.parent === l.child) ? 30 : 0;
  const at = (n) => {
    const li = layer.get(n);
    const offset = ((rows - layers[li].length) * (NH + GY)) / 2;
    return { x: 20 + li * (NW + GX), y: 20 + top + offset + pos.get(n) * (NH + GY) };
  };
  const maxCalls = Math.max(...links.map((l) => l.callCount), 1);
  const edges = links.map((l) => {
    const a = at(l.parent);
    const b = at(l.child);
    let d;
    let lx;
    let ly;
    if (l.parent === l.child) {
      d = `M ${a.x + NW - 30} ${a.y} C ${a.x + NW - 30} ${a.y - 30}, ${a.x + NW} ${a.y - 30}, ${a.x + NW} ${a.y + 10}`;
      lx = a.x + NW - 10;
      ly = a.y - 24;
    } else if (layer.get(l.child) > layer.get(l.parent)) {
      const x1 = a.x + NW;
      const y1 = a.y + NH / 2;
      const x2 = b.x;
      const y2 = b.y + NH / 2;
      d = `M ${x1} ${y1} C ${x1 + GX / 2} ${y1}, ${x2 - GX / 2} ${y2}, ${x2 - 2} ${y2}`;
      lx = (x1 + x2) / 2;
      ly = (y1 + y2) / 2 - 4;
    } else {
      // A call back to an earlier (or the same) layer: arc below the nodes.
      const x1 = a.x + NW / 2;
      const y1 = a.y + NH;
      const x2 = b.x + NW / 2;
      const y2 = b.y + NH;
      const dip = Math.max(y1, y2) + GY;
      d = `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2 + 2}`;
      lx = (x1 + x2) / 2;
      ly = dip - 6;
    }
    const w = 1.2 + 3 * Math.sqrt(l.callCount / maxCalls);
    const title = `${l.parent} → ${l.child}: ${plural(l.calls, "call")}, ${plural(l.errors, "error")}, p50 ${fmtDuration(l.p50Ms * 1000)}, p95 ${fmtDuration(l.p95Ms * 1000)}, p99 ${fmtDuration(l.p99Ms * 1000)}`;
    return svg(
      "g",
      { class: `edge${l.errors ? " failing" : ""}`, dataset: { parent: l.parent, child: l.child } },
      svg("path", { d, "stroke-width": w, "marker-end": "url(#arrow)" }, svg("title", null, title)),
      svg("text", { x: lx, y: ly, "text-anchor": "middle", class: "edge-label" }, edgeLabel(l)),
    );
  });
  const nodes = [...layer.keys()].map((n) => {
    const p = at(n);
    const kind = kinds.get(n) ?? "service";
    const label = n.length > 22 ? `${n.slice(0, 21)}…` : n;
    if (kind !== "service") {
      // A database, cache or peer: no spans of its own to search; drawn dashed, with its kind.
      return svg(
        "g",
        { class: `node peer-node ${kind}`, dataset: { service: n, kind } },
        svg("rect", { x: p.x, y: p.y, width: NW, height: NH, rx: kind === "peer" ? 6 : 14 }),
        svg("text", { x: p.x + NW / 2, y: p.y + NH / 2 - 2, "text-anchor": "middle" }, label),
        svg("text", { x: p.x + NW / 2, y: p.y + NH / 2 + 12, "text-anchor": "middle", class: "node-kind" }, NODE_KINDS[kind] ?? kind),
        svg("title", null, `${n} (${kind})`),
      );
    }
    return svg(
      "a",
      { href: `/search?service=${encodeURIComponent(n)}&lookback=1h`, "data-link": true, class: "node", dataset: { service: n, kind } },
      svg("rect", { x: p.x, y: p.y, width: NW, height: NH, rx: 6, style: { stroke: colors.get(n) } }),
      svg("rect", { x: p.x, y: p.y, width: 6, height: NH, rx: 2, style: { fill: colors.get(n) } }),
      svg("text", { x: p.x + NW / 2 + 3, y: p.y + NH / 2 + 5, "text-anchor": "middle" }, label),
      svg("title", null, n),
    );
  });
  return svg(
    "svg",
    { class: "service-map", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": "Service dependency graph" },
    svg("defs", null, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 10, markerHeight: 10, orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))),
    edges,
    nodes,
  );
}

function callTable(links, colors, kinds) {
  const sorted = links.slice().sort((a, b) => b.callCount - a.callCount || (a.parent < b.parent ? -1 : 1) || (a.child < b.child ? -1 : 1));
  const node = (n) =>
    (kinds.get(n) ?? "service") === "service"
      ? link(`/search?service=${encodeURIComponent(n)}&lookback=1h`, null, h("span", { class: "swatch", style: { background: colors.get(n) } }), n)
      : h("span", null, n, " ", h("span", { class: "muted" }, `(${kinds.get(n)})`));
  const num = (cls, text) => h("td", { class: `num ${cls}` }, text);
  return h(
    "table",
    { class: "calls" },
    h(
      "thead",
      null,
      h("tr", null, h("th", null, "Caller"), h("th", null, "Callee"), h("th", { class: "num" }, "Calls"), h("th", { class: "num" }, "Calls/s"), h("th", { class: "num" }, "Errors"), h("th", { class: "num" }, "p50"), h("th", { class: "num" }, "p95"), h("th", { class: "num" }, "p99")),
    ),
    h(
      "tbody",
      null,
      sorted.map((l) =>
        h(
          "tr",
          { dataset: { parent: l.parent, child: l.child } },
          h("td", null, node(l.parent)),
          h("td", null, node(l.child)),
          num("calls", l.callCount.toLocaleString("en-US")),
          num("rate", fmtRate(l.callsPerSecond)),
          num("errors", fmtShare(l.errorRate)),
          num("p50", fmtDuration(l.p50Ms * 1000)),
          num("p95", fmtDuration(l.p95Ms * 1000)),
          num("p99", fmtDuration(l.p99Ms * 1000)),
        ),
      ),
    ),
  );
}
