// The service map: the dependency graph of `/api/dependencies` for a chosen time window, drawn
// as layers from callers to callees, with call counts on the edges and as a table.

import { api } from "./api.js";
import { h, link, replace, svg } from "./dom.js";
import { plural, serviceColors } from "./format.js";

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
    .dependencies(Date.now(), chosen[2])
    .then((links) => {
      if (!live) return;
      if (!links.length) {
        replace(body, h("p", { class: "empty muted" }, "No calls between services in this window. Calls appear when a span's parent belongs to another service."));
        return;
      }
      const colors = serviceColors(links.flatMap((l) => [l.parent, l.child]));
      replace(body, graph(links, colors), callTable(links, colors));
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

function graph(links, colors) {
  const { layers, layer, pos } = layout(links);
  const NW = 170;
  const NH = 40;
  const GX = 110;
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
    return svg(
      "g",
      { class: "edge", dataset: { parent: l.parent, child: l.child } },
      svg("path", { d, "stroke-width": w, "marker-end": "url(#arrow)" }, svg("title", null, `${l.parent} → ${l.child}: ${plural(l.callCount, "call")}`)),
      svg("text", { x: lx, y: ly, "text-anchor": "middle", class: "edge-label" }, String(l.callCount)),
    );
  });
  const nodes = [...layer.keys()].map((n) => {
    const p = at(n);
    return svg(
      "a",
      { href: `/search?service=${encodeURIComponent(n)}&lookback=1h`, "data-link": true, class: "node", dataset: { service: n } },
      svg("rect", { x: p.x, y: p.y, width: NW, height: NH, rx: 6, style: { stroke: colors.get(n) } }),
      svg("rect", { x: p.x, y: p.y, width: 6, height: NH, rx: 2, style: { fill: colors.get(n) } }),
      svg("text", { x: p.x + NW / 2 + 3, y: p.y + NH / 2 + 5, "text-anchor": "middle" }, n.length > 22 ? `${n.slice(0, 21)}…` : n),
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

function callTable(links, colors) {
  const sorted = links.slice().sort((a, b) => b.callCount - a.callCount || (a.parent < b.parent ? -1 : 1));
  const svc = (n) => link(`/search?service=${encodeURIComponent(n)}&lookback=1h`, null, h("span", { class: "swatch", style: { background: colors.get(n) } }), n);
  return h(
    "table",
    { class: "calls" },
    h("thead", null, h("tr", null, h("th", null, "Caller"), h("th", null, "Callee"), h("th", { class: "num" }, "Calls"))),
    h("tbody", null, sorted.map((l) => h("tr", { dataset: { parent: l.parent, child: l.child } }, h("td", null, svc(l.parent)), h("td", null, svc(l.child)), h("td", { class: "num" }, l.callCount.toLocaleString("en-US"))))),
  );
}
