// Sample traces for the UI tests, as OTLP/JSON requests (POST /v1/traces), built relative to
// "now" so the UI's default time ranges find them.

import { randomBytes } from "node:crypto";

export const hex = (n) => randomBytes(n).toString("hex");
const str = (v) => ({ stringValue: String(v) });
const int = (v) => ({ intValue: String(v) });
const attrs = (obj) =>
  Object.entries(obj).map(([key, v]) => ({ key, value: typeof v === "number" && Number.isInteger(v) ? int(v) : typeof v === "object" ? v : str(v) }));

export const KIND = { INTERNAL: 1, SERVER: 2, CLIENT: 3, PRODUCER: 4, CONSUMER: 5 };

/** A span; times in ms relative to `t0` (unix ms). */
export function span(traceId, { id = hex(8), parent = "", name, kind = KIND.INTERNAL, t0, at, dur, attributes = {}, error, events = [], links = [] }) {
  const ns = (ms) => (BigInt(Math.round((t0 + ms) * 1000)) * 1000n).toString();
  return {
    traceId,
    spanId: id,
    parentSpanId: parent,
    name,
    kind,
    startTimeUnixNano: ns(at),
    endTimeUnixNano: ns(at + dur),
    attributes: attrs(attributes),
    events: events.map((e) => ({ name: e.name, timeUnixNano: ns(at + e.at), attributes: attrs(e.attributes ?? {}) })),
    links: links.map((l) => ({ traceId: l.traceId, spanId: l.spanId, attributes: attrs(l.attributes ?? {}) })),
    status: error ? { code: 2, message: error } : { code: 0 },
  };
}

/** One OTLP/JSON request body from `{service: [span…]}`. */
export function request(byService) {
  return {
    resourceSpans: Object.entries(byService).map(([service, spans]) => ({
      resource: { attributes: attrs({ "service.name": service, "service.version": "1.4.2", "host.name": `${service}-1` }) },
      scopeSpans: [{ scope: { name: "skein-otel", version: "0.1.0" }, spans }],
    })),
  };
}

/**
 * One shop request: frontend → checkout (gRPC) → SQL + cart (HTTP) → Redis. Returns the request
 * body and the ids the tests look for.
 */
export function shopTrace(t0, { error = false, slow = false, orphan = false, linkTo = null, splitCart = false } = {}) {
  const traceId = hex(16);
  // With `splitCart`, checkout's client does not propagate: cart starts a trace of its own.
  const cartTraceId = splitCart ? hex(16) : traceId;
  const ids = { root: hex(8), grpcClient: hex(8), grpcServer: hex(8), sql: hex(8), cartClient: hex(8), cartServer: hex(8), redis: hex(8), orphan: hex(8) };
  const dbDur = slow ? 450 : 12;
  const total = 40 + dbDur + 30;
  const frontend = [
    span(traceId, {
      id: ids.root, name: "GET /checkout", kind: KIND.SERVER, t0, at: 0, dur: total,
      attributes: { "http.request.method": "GET", "http.route": "/checkout", "url.path": "/checkout", "http.response.status_code": error ? 500 : 200, "user_agent.original": "curl/8.5" },
      error: error ? "checkout failed" : undefined,
      links: linkTo ? [{ traceId: linkTo.traceId, spanId: linkTo.spanId, attributes: { "link.reason": "retry of" } }] : [],
    }),
    span(traceId, {
      id: ids.grpcClient, parent: ids.root, name: "shop.Checkout/PlaceOrder", kind: KIND.CLIENT, t0, at: 3, dur: total - 6,
      attributes: { "rpc.system.name": "grpc", "rpc.method": "shop.Checkout/PlaceOrder", "server.address": "127.0.0.1", "server.port": 50051 },
      error: error ? "INTERNAL" : undefined,
    }),
  ];
  const checkout = [
    span(traceId, {
      id: ids.grpcServer, parent: ids.grpcClient, name: "shop.Checkout/PlaceOrder", kind: KIND.SERVER, t0, at: 4, dur: total - 8,
      attributes: { "rpc.system.name": "grpc", "rpc.method": "shop.Checkout/PlaceOrder", "rpc.response.status_code": error ? "INTERNAL" : "OK" },
      error: error ? "payment declined" : undefined,
      events: error ? [{ name: "exception", at: total - 10, attributes: { "exception.type": "PaymentError", "exception.message": "card declined" } }] : [],
    }),
    span(traceId, {
      id: ids.sql, parent: ids.grpcServer, name: "SELECT shop.orders", kind: KIND.CLIENT, t0, at: 6, dur: dbDur,
      attributes: { "db.system.name": "sqlite", "db.query.text": "SELECT id, total FROM orders WHERE user_id = ?", "db.operation.name": "SELECT", "db.collection.name": "orders", "db.namespace": "shop" },
    }),
    span(traceId, {
      id: ids.cartClient, parent: ids.grpcServer, name: "GET", kind: KIND.CLIENT, t0, at: 8 + dbDur, dur: 25,
      attributes: { "http.request.method": "GET", "url.full": "http://127.0.0.1:8081/cart/42", "server.address": "127.0.0.1", "server.port": 8081, "http.response.status_code": 200 },
    }),
  ];
  const cart = [
    span(cartTraceId, {
      id: ids.cartServer, parent: splitCart ? "" : ids.cartClient, name: "GET /cart/{id}", kind: KIND.SERVER, t0, at: 9 + dbDur, dur: 22,
      attributes: { "http.request.method": "GET", "http.route": "/cart/{id}", "url.path": "/cart/42", "http.response.status_code": 200 },
    }),
    span(cartTraceId, {
      id: ids.redis, parent: ids.cartServer, name: "HGETALL", kind: KIND.CLIENT, t0, at: 10 + dbDur, dur: 2,
      attributes: { "db.system.name": "redis", "db.operation.name": "HGETALL", "db.query.text": "HGETALL ?", "server.address": "127.0.0.1", "server.port": 6379 },
    }),
  ];
  if (orphan) {
    // The confirmation e-mail, sent from a task that lost the context: its parent never arrives.
    checkout.push(span(traceId, { id: ids.orphan, parent: hex(8), name: "send confirmation", t0, at: total - 5, dur: 30, attributes: { "messaging.destination.name": "emails" } }));
  }
  return { traceId, cartTraceId, ids, body: request({ frontend, checkout, cart }) };
}

/** A trace whose every name and value is an attempt at HTML injection. */
export function xssTrace(t0) {
  const traceId = hex(16);
  const payload = '<img src=x onerror="window.__xss=1;alert(1)">';
  const root = hex(8);
  const spans = [
    span(traceId, { id: root, name: payload, kind: KIND.SERVER, t0, at: 0, dur: 20, attributes: { [`${payload}.key`]: payload, "http.route": "<script>window.__xss=2</script>" }, events: [{ name: payload, at: 1 }] }),
    span(traceId, { parent: root, name: "<b>bold?</b>", t0, at: 2, dur: 5, error: payload }),
  ];
  return { traceId, payload, body: request({ [`xss-${payload}`]: spans }) };
}

/**
 * A trace of `n` spans over 6 services (one per level): a root with a wide and deep tree under it
 * (every span has up to 6 children, breadth first), each span with 6 attributes. Sent as several requests.
 */
export function bigTrace(t0, n = 50_000, perRequest = 5_000) {
  const traceId = hex(16);
  const services = ["gateway", "orders", "inventory", "pricing", "users", "search"];
  const ids = Array.from({ length: n }, () => hex(8));
  const spans = new Map(services.map((s) => [s, []]));
  const starts = new Float64Array(n);
  const depth = new Uint8Array(n);
  const durs = new Float64Array(n);
  durs[0] = 5_000;
  for (let i = 0; i < n; i++) {
    const parent = i === 0 ? -1 : Math.floor((i - 1) / 6);
    if (i > 0) {
      const k = (i - 1) % 6;
      starts[i] = starts[parent] + (durs[parent] * k) / 7 + 0.01;
      depth[i] = depth[parent] + 1;
      durs[i] = durs[parent] / 7;
    }
    const service = services[Math.min(depth[i], services.length - 1)];
    spans.get(service).push(
      span(traceId, {
        id: ids[i],
        parent: parent < 0 ? "" : ids[parent],
        name: i === 0 ? "GET /big" : `operation-${i % 97}`,
        kind: i === 0 ? KIND.SERVER : i % 3 === 0 ? KIND.CLIENT : KIND.INTERNAL,
        t0,
        at: starts[i],
        dur: durs[i],
        attributes: { "http.route": `/items/{id}`, "app.item": i, "app.shard": i % 16, "db.system.name": "postgresql", "net.peer": "10.0.0.1", "app.note": "x".repeat(24) },
        error: i % 997 === 0 && i > 0 ? "failed" : undefined,
      }),
    );
  }
  // Split into requests of at most `perRequest` spans.
  const bodies = [];
  let batch = {};
  let count = 0;
  for (const [service, list] of spans) {
    for (const s of list) {
      (batch[service] ??= []).push(s);
      if (++count === perRequest) {
        bodies.push(request(batch));
        batch = {};
        count = 0;
      }
    }
  }
  if (count) bodies.push(request(batch));
  // The last span in the waterfall's order: follow the latest-starting child down from the root.
  let last = 0;
  while (6 * last + 1 < n) last = Math.min(6 * last + 6, n - 1);
  return { traceId, rootId: ids[0], lastInOrder: ids[last], bodies };
}

export async function post(otlpHttp, body) {
  const r = await fetch(`${otlpHttp}/v1/traces`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`POST /v1/traces: ${r.status} ${await r.text()}`);
}
