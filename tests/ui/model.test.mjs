// The UI's pure logic in Node (no browser): the trace model (tree, missing parents, cycles,
// collapsing, find), search summaries and the tags syntax.

import { test } from "node:test";
import assert from "node:assert/strict";
import { buildTrace, visibleRows, findSpans, spanDetails, summarize, nanosParts } from "../../ui/tracemodel.js";
import { parseTags } from "../../ui/search.js";
import { layout } from "../../ui/dependencies.js";
import { fmtDuration, serviceColors } from "../../ui/format.js";

/** A view with spans `[id, parent, name, startNs, durNs, service]`. */
function view(rows, criticalPath = []) {
  const strings = [""];
  const idx = (s) => {
    let i = strings.indexOf(s);
    if (i < 0) i = strings.push(s) - 1;
    return i;
  };
  const services = [...new Set(rows.map((r) => r[5] ?? "svc"))];
  const resources = services.map((s) => ({ attributes: [idx("service.name"), idx(s), 1], dropped: 0, schemaUrl: 0 }));
  return {
    version: 1,
    traceID: "ab".repeat(16),
    base: "1704067200000000000",
    strings,
    resources,
    scopes: [{ name: 0, version: 0, attributes: [], dropped: 0, schemaUrl: 0 }],
    spans: rows.map(([id, parent, name, start, dur, service, attrs = []]) => [
      id, parent, idx(name), 1, start, dur, services.indexOf(service ?? "svc"), 0, 0, 0,
      attrs.flatMap(([k, v]) => [idx(k), idx(v), 1]), [], [], 0, 1, [0, 0, 0],
    ]),
    criticalPath,
  };
}

test("the tree is built in pre-order with depths and subtree sizes", () => {
  const t = buildTrace(view([
    ["a", "", "root", 0, 100],
    ["c", "a", "second", 50, 10],
    ["b", "a", "first", 10, 20],
    ["d", "b", "grandchild", 12, 5],
  ]));
  assert.deepEqual(t.spans.map((s) => [s.id, s.depth, s.size]), [["a", 0, 4], ["b", 1, 2], ["d", 2, 1], ["c", 1, 1]]);
  assert.equal(t.root.id, "a");
  assert.equal(t.depth, 3);
  assert.equal(t.duration, 0.1); // µs
  assert.equal(t.orphans.length, 0);
});

test("a span whose parent is missing is shown at the top level and flagged, never attached elsewhere", () => {
  const t = buildTrace(view([
    ["a", "", "root", 0, 100],
    ["x", "zz", "lost", 5, 10],
    ["b", "a", "child", 10, 20],
  ]));
  const x = t.byId.get("x");
  assert.equal(x.problem, "missing parent");
  assert.equal(x.depth, 0);
  assert.deepEqual(t.orphans.map((s) => s.id), ["x"]);
  assert.deepEqual(t.byId.get("a").children.map((s) => s.id), ["b"]);
  // The real root comes first, the orphan after it.
  assert.deepEqual(t.spans.map((s) => s.id), ["a", "b", "x"]);
});

test("spans on a parent cycle are still shown, flagged", () => {
  const t = buildTrace(view([
    ["a", "", "root", 0, 100],
    ["p", "q", "p", 5, 10],
    ["q", "p", "q", 6, 10],
    ["s", "s", "self", 7, 1],
  ]));
  assert.equal(t.spans.length, 4);
  assert.equal(t.cycles.length, 2);
  assert.equal(t.byId.get("s").problem, "its own parent");
});

test("collapsing hides exactly the subtree", () => {
  const t = buildTrace(view([
    ["a", "", "root", 0, 100],
    ["b", "a", "b", 10, 20],
    ["d", "b", "d", 12, 5],
    ["e", "d", "e", 13, 1],
    ["c", "a", "c", 50, 10],
  ]));
  assert.deepEqual(visibleRows(t, new Set(["b"])).map((s) => s.id), ["a", "b", "c"]);
  assert.deepEqual(visibleRows(t, new Set(["a"])).map((s) => s.id), ["a"]);
  assert.deepEqual(visibleRows(t, new Set()).map((s) => s.id), ["a", "b", "d", "e", "c"]);
});

test("find matches names, services, span ids and attribute keys and values", () => {
  const t = buildTrace(view([
    ["a", "", "GET /checkout", 0, 100, "frontend"],
    ["b", "a", "SELECT orders", 10, 20, "checkout", [["db.query.text", "SELECT * FROM orders"]]],
    ["c", "a", "HGETALL", 50, 10, "cart", [["db.system.name", "redis"]]],
  ]));
  assert.deepEqual(findSpans(t, "select").map((s) => s.id), ["b"]);
  assert.deepEqual(findSpans(t, "REDIS").map((s) => s.id), ["c"]);
  assert.deepEqual(findSpans(t, "frontend").map((s) => s.id), ["a"]);
  assert.deepEqual(findSpans(t, "c").map((s) => s.id).sort(), ["a", "b", "c"]);
  assert.deepEqual(findSpans(t, "  "), []);
  assert.deepEqual(spanDetails(t, t.byId.get("c")).attributes, [{ key: "db.system.name", value: "redis", type: "string" }]);
});

test("critical-path segments land on their spans, in microseconds", () => {
  const t = buildTrace(view([["a", "", "root", 0, 100_000], ["b", "a", "b", 10_000, 20_000]], [[0, 30_000, 100_000], [1, 10_000, 30_000], [0, 0, 10_000]]));
  assert.deepEqual(t.byId.get("a").critical, [[30, 100], [0, 10]]);
  assert.deepEqual(t.byId.get("b").critical, [[10, 30]]);
  assert.ok(t.hasCriticalPath);
});

test("unix nanoseconds are split so nothing is rounded", () => {
  assert.deepEqual(nanosParts("1704067200123456789"), [1704067200, 123456789]);
  assert.deepEqual(nanosParts("5"), [0, 5]);
});

test("search summaries: root, errors, services, duration", () => {
  const s = summarize({
    traceID: "t1",
    processes: { p1: { serviceName: "frontend" }, p2: { serviceName: "checkout" } },
    spans: [
      { spanID: "b", operationName: "child", references: [{ refType: "CHILD_OF", traceID: "t1", spanID: "a" }], startTime: 1_000_100, duration: 50, processID: "p2", tags: [{ key: "error", type: "bool", value: true }] },
      { spanID: "a", operationName: "GET /", references: [], startTime: 1_000_000, duration: 300, processID: "p1", tags: [] },
    ],
  });
  assert.equal(s.rootService, "frontend");
  assert.equal(s.rootName, "GET /");
  assert.equal(s.spanCount, 2);
  assert.equal(s.errors, 1);
  assert.equal(s.duration, 300);
  assert.equal(s.startMs, 1000);
  assert.ok(s.hasRoot);
  const orphanOnly = summarize({ traceID: "t2", processes: { p: { serviceName: "x" } }, spans: [{ spanID: "z", operationName: "lost", references: [{ refType: "CHILD_OF", traceID: "t2", spanID: "gone" }], startTime: 5, duration: 1, processID: "p", tags: [] }] });
  assert.equal(orphanOnly.rootName, "lost");
  assert.equal(orphanOnly.hasRoot, false);
});

test("tags are written key=value, with quotes for spaces, and bad input is an error", () => {
  assert.deepEqual(parseTags("error=true http.response.status_code=500"), { error: "true", "http.response.status_code": "500" });
  assert.deepEqual(parseTags('msg="card declined" x=\\"'), { msg: "card declined", x: '\\"' });
  assert.deepEqual(parseTags("  "), {});
  assert.throws(() => parseTags("novalue"), /key=value/);
});

test("the service map layers callers before callees, also with cycles", () => {
  const { layer } = layout([
    { parent: "frontend", child: "checkout", callCount: 3 },
    { parent: "checkout", child: "cart", callCount: 2 },
    { parent: "cart", child: "checkout", callCount: 1 },
    { parent: "cart", child: "cart", callCount: 1 },
  ]);
  assert.equal(layer.get("frontend"), 0);
  assert.equal(layer.get("checkout"), 1);
  assert.equal(layer.get("cart"), 2);
});

test("durations and colours", () => {
  assert.equal(fmtDuration(0.5), "500ns");
  assert.equal(fmtDuration(812), "812µs");
  assert.equal(fmtDuration(12_345), "12.3ms");
  assert.equal(fmtDuration(4_560_000), "4.56s");
  assert.equal(fmtDuration(125e6), "2m 05s");
  const names = Array.from({ length: 16 }, (_, i) => `service-${i}`);
  assert.equal(new Set(serviceColors(names).values()).size, 16, "16 services get 16 different colours");
});
