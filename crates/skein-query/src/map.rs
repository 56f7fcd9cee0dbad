//! The service map with RED figures: `GET /api/v1/service-map?endTs=&lookback=` (milliseconds,
//! as `/api/dependencies`). Nodes are the services and what they call that sends no spans of
//! its own: databases and caches (a CLIENT span's `db.system.name`, with its `server.address`
//! and `server.port` when given) and uninstrumented peers (`peer.service`, else
//! `server.address[:port]`). Each edge carries its calls, calls per second over the window,
//! the share that failed and the latency quantiles as the caller saw them.
//!
//! Edges between services are counted as `/api/dependencies` counts them: a span whose parent
//! belongs to another service is one call from the parent's service to its own. Its latency is
//! the parent's duration when the parent is the CLIENT or PRODUCER span of the call (what the
//! caller waited), else its own; it failed when either side has status Error. An edge to a
//! database, cache or peer is a CLIENT span with no child in another service, its duration and
//! status its own.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Serialize;
use skein_model::{AttrValue, SpanKind};
use skein_store::ScanSpan;
use skein_store::red::Sketch;

use crate::SharedStore;
use crate::v1::V1Error;

/// Attributes the map reads from CLIENT spans.
const PEER_KEYS: [&str; 4] = ["db.system.name", "server.address", "server.port", "peer.service"];

/// Database systems that are caches (`db.system.name` values of the semantic conventions).
const CACHES: [&str; 6] = ["redis", "valkey", "memcached", "hazelcast", "geode", "coherence"];

/// Spans one map reads, at most.
pub const MAP_MAX_SPANS: usize = 5_000_000;

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMap {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// The window held more spans than one map reads: the figures cover part of it.
    pub truncated: bool,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    /// `service`, `database`, `cache` or `peer`.
    pub kind: &'static str,
    /// The `db.system.name` of a database or cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub calls: u64,
    pub errors: u64,
    pub calls_per_second: f64,
    /// `errors / calls`.
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// The node a CLIENT span without an instrumented callee calls, if its attributes say.
fn peer_of(span: &ScanSpan) -> Option<Node> {
    let address = span.str_attribute("server.address").map(|a| match span.attribute("server.port") {
        Some(AttrValue::Int(port)) => format!("{a}:{port}"),
        _ => a.to_owned(),
    });
    if let Some(system) = span.str_attribute("db.system.name") {
        let kind = if CACHES.contains(&system) { "cache" } else { "database" };
        let id = match &address {
            Some(a) => format!("{system} {a}"),
            None => system.to_owned(),
        };
        return Some(Node { id, kind, system: Some(system.to_owned()) });
    }
    let id = span.str_attribute("peer.service").map(str::to_owned).or(address)?;
    Some(Node { id, kind: "peer", system: None })
}

#[derive(Default)]
struct EdgeStats {
    calls: u64,
    errors: u64,
    latency: Sketch,
}

/// The map of `traces` (a scan's, every span starting in the window of `seconds`).
pub fn service_map(
    traces: &HashMap<skein_model::TraceId, Vec<ScanSpan>>,
    seconds: f64,
    truncated: bool,
) -> ServiceMap {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut edges: BTreeMap<(String, String), EdgeStats> = BTreeMap::new();
    for spans in traces.values() {
        // By id: a span delivered twice counts once.
        let by_id: HashMap<skein_model::SpanId, &ScanSpan> = spans.iter().map(|s| (s.span_id, s)).collect();
        // CLIENT spans with a child in another service: their calls are service edges.
        let mut answered: std::collections::HashSet<skein_model::SpanId> = Default::default();
        for &s in by_id.values() {
            let service = s.service_name();
            nodes.entry(service.to_owned()).or_insert_with(|| Node {
                id: service.to_owned(),
                kind: "service",
                system: None,
            });
            let Some(parent) = s.parent_span_id.and_then(|p| by_id.get(&p)) else { continue };
            if parent.service_name() == service {
                continue;
            }
            answered.insert(parent.span_id);
            let caller_side = matches!(parent.kind, SpanKind::Client | SpanKind::Producer);
            let timed = if caller_side { parent } else { s };
            let e = edges.entry((parent.service_name().to_owned(), service.to_owned())).or_default();
            e.calls += 1;
            e.errors += u64::from(s.error || (caller_side && parent.error));
            e.latency.add(timed.end_time_unix_nano.saturating_sub(timed.start_time_unix_nano) as f64);
        }
        for &s in by_id.values().filter(|s| s.kind == SpanKind::Client && !answered.contains(&s.span_id)) {
            let Some(peer) = peer_of(s) else { continue };
            let e = edges.entry((s.service_name().to_owned(), peer.id.clone())).or_default();
            e.calls += 1;
            e.errors += u64::from(s.error);
            e.latency.add(s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64);
            // A service's own name wins over a peer of the same name.
            nodes.entry(peer.id.clone()).or_insert(peer);
        }
    }
    let ms = |sk: &Sketch, q: f64| sk.quantile(q).map_or(0.0, |ns| ns / 1e6);
    ServiceMap {
        nodes: nodes.into_values().collect(),
        edges: edges
            .into_iter()
            .map(|((from, to), e)| Edge {
                from,
                to,
                calls: e.calls,
                errors: e.errors,
                calls_per_second: e.calls as f64 / seconds.max(1e-9),
                error_rate: e.errors as f64 / e.calls.max(1) as f64,
                p50_ms: ms(&e.latency, 0.5),
                p95_ms: ms(&e.latency, 0.95),
                p99_ms: ms(&e.latency, 0.99),
            })
            .collect(),
        truncated,
    }
}

pub(crate) async fn handler(
    State(store): State<SharedStore>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<ServiceMap>, V1Error> {
    let (range, lookback) = crate::v1::window_millis(&pairs, 3_600_000)?;
    let lookback = lookback.max(1);
    let scan = store
        .scan(range, MAP_MAX_SPANS, |k| PEER_KEYS.contains(&k))
        .await
        .map_err(|e| V1Error::new(crate::store_error_status(&e), e.to_string()))?;
    let map = tokio::task::spawn_blocking(move || {
        // The scan may hold spans of the traces that start outside the window: leave those out.
        let traces: HashMap<_, Vec<ScanSpan>> = scan
            .traces
            .into_iter()
            .map(|(id, spans)| {
                (id, spans.into_iter().filter(|s| range.contains(s.start_time_unix_nano)).collect())
            })
            .collect();
        service_map(&traces, lookback as f64 / 1e3, scan.truncated)
    })
    .await
    .map_err(|e| V1Error::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(map))
}

#[cfg(test)]
mod tests {
    use skein_store::testdata::{BASE_TIME, SpanBuilder as B};

    use super::*;

    #[test]
    fn services_databases_caches_and_peers_with_their_figures() {
        let ms = 1_000_000;
        let mut traces = HashMap::new();
        for n in 1..=20u8 {
            let t = BASE_TIME + n as u64 * 1_000 * ms;
            let failed = n % 5 == 0;
            let mut client = B::new(n, 2)
                .service("frontend")
                .kind(SpanKind::Client)
                .parent(1)
                .times(t + ms, t + (11 + n as u64) * ms);
            if failed {
                client = client.error("upstream 500");
            }
            let mut spans = vec![
                B::new(n, 1).service("frontend").kind(SpanKind::Server).times(t, t + 40 * ms).build(),
                client.build(),
                B::new(n, 3)
                    .service("checkout")
                    .kind(SpanKind::Server)
                    .parent(2)
                    .times(t + 2 * ms, t + 10 * ms)
                    .build(),
                B::new(n, 4)
                    .service("checkout")
                    .kind(SpanKind::Client)
                    .parent(3)
                    .attr("db.system.name", AttrValue::Str("postgresql".into()))
                    .attr("server.address", AttrValue::Str("db".into()))
                    .attr("server.port", AttrValue::Int(5432))
                    .times(t + 3 * ms, t + 5 * ms)
                    .build(),
                B::new(n, 5)
                    .service("checkout")
                    .kind(SpanKind::Client)
                    .parent(3)
                    .attr("db.system.name", AttrValue::Str("redis".into()))
                    .times(t + 6 * ms, t + 7 * ms)
                    .build(),
                B::new(n, 6)
                    .service("checkout")
                    .kind(SpanKind::Client)
                    .parent(3)
                    .attr("server.address", AttrValue::Str("api.stripe.com".into()))
                    .times(t + 7 * ms, t + 9 * ms)
                    .build(),
                // An INTERNAL span is no call.
                B::new(n, 7).service("checkout").parent(3).times(t + 3 * ms, t + 4 * ms).build(),
            ];
            // Delivered twice: counted once.
            spans.push(spans[2].clone());
            let spans: Vec<ScanSpan> =
                spans.iter().map(|s| ScanSpan::of(s, |k| PEER_KEYS.contains(&k))).collect();
            traces.insert(spans[0].trace_id, spans);
        }
        let map = service_map(&traces, 100.0, false);
        let nodes: Vec<(&str, &str)> = map.nodes.iter().map(|n| (n.id.as_str(), n.kind)).collect();
        assert_eq!(
            nodes,
            [
                ("api.stripe.com", "peer"),
                ("checkout", "service"),
                ("frontend", "service"),
                ("postgresql db:5432", "database"),
                ("redis", "cache")
            ]
        );
        let edge = |from: &str, to: &str| map.edges.iter().find(|e| e.from == from && e.to == to).unwrap();
        let call = edge("frontend", "checkout");
        assert_eq!((call.calls, call.errors), (20, 4));
        assert_eq!(call.calls_per_second, 0.2);
        assert_eq!(call.error_rate, 0.2);
        // The caller's client spans last 11..=30 ms: p50 is the 10th, 20 ms; p95 the 19th, 29 ms.
        assert!((call.p50_ms - 20.0).abs() <= 0.2, "{}", call.p50_ms);
        assert!((call.p95_ms - 29.0).abs() <= 0.29, "{}", call.p95_ms);
        let db = edge("checkout", "postgresql db:5432");
        assert_eq!((db.calls, db.errors), (20, 0));
        assert!((db.p99_ms - 2.0).abs() <= 0.02);
        assert_eq!(edge("checkout", "redis").calls, 20);
        assert_eq!(edge("checkout", "api.stripe.com").calls, 20);
        assert_eq!(map.edges.len(), 4);
    }
}
