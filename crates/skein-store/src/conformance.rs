//! The conformance suite: behaviour every [`SpanStore`] backend must show.
//!
//! A backend's tests call [`run_all`] with a factory that makes a fresh, empty store:
//!
//! ```
//! use skein_store::MemoryStore;
//! use skein_store::conformance::{ready, run_all};
//!
//! # async fn backend_test() {
//! run_all(ready(MemoryStore::default)).await;
//! // or, for a backend that opens asynchronously:
//! run_all(|| async { MemoryStore::default() }).await;
//! # }
//! ```
//!
//! Each check panics with a message naming the behaviour that broke.

use std::future::Future;

use skein_model::{AttrValue, KeyValue, Span, SpanKind, TimeRange};

use crate::testdata::{BASE_TIME, SpanBuilder as B};
use crate::{DependencyLink, Operation, ScanSpan, SpanStore, TraceQuery};

/// Runs every check, each against a fresh store from `make`.
pub async fn run_all<S, F, Fut>(make: F)
where
    S: SpanStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    trace_round_trips_every_field(make().await).await;
    unknown_trace_is_none(make().await).await;
    trace_written_in_several_batches_is_merged(make().await).await;
    services_and_operations_are_listed(make().await).await;
    find_by_service_and_operation(make().await).await;
    find_by_tags(make().await).await;
    find_by_duration_and_time(make().await).await;
    find_needs_one_span_to_match_every_condition(make().await).await;
    find_returns_newest_first_up_to_limit(make().await).await;
    dependencies_count_cross_service_calls(make().await).await;
    scan_reads_every_span_of_the_window(make().await).await;
    traces_reads_several_traces_at_once(make().await).await;
}

/// Lets the suite be used with a synchronous constructor: `run_all(ready(MemoryStore::default))`.
pub fn ready<S, F: Fn() -> S>(f: F) -> impl Fn() -> std::future::Ready<S> {
    move || std::future::ready(f())
}

fn sorted(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| s.span_id);
    spans
}

fn rich_trace() -> Vec<Span> {
    vec![
        B::new(1, 1)
            .service("frontend")
            .resource_attr("host.name", AttrValue::Str("web-1".into()))
            .scope("skein-otel", "0.1.0")
            .name("GET /checkout")
            .kind(SpanKind::Server)
            .attr("http.response.status_code", AttrValue::Int(500))
            .attr("tags", AttrValue::Array(vec![AttrValue::Str("a".into()), AttrValue::Bool(false)]))
            .attr("blob", AttrValue::Bytes(vec![0, 1, 2]))
            .attr("map", AttrValue::KvList(vec![KeyValue::new("n", AttrValue::Double(0.5))]))
            .error("boom")
            .event("exception", 5, vec![KeyValue::string("exception.type", "Panic")])
            .link(9, 9)
            .build(),
        B::new(1, 2).service("checkout").name("Checkout").kind(SpanKind::Client).parent(1).build(),
    ]
}

async fn trace_round_trips_every_field(store: impl SpanStore) {
    let trace = rich_trace();
    store.write(trace.clone()).await.unwrap();
    let got = store.trace(B::trace_id(1)).await.unwrap().expect("written trace is found");
    assert_eq!(sorted(got), sorted(trace), "a stored trace comes back field for field");
}

async fn unknown_trace_is_none(store: impl SpanStore) {
    store.write(rich_trace()).await.unwrap();
    assert!(store.trace(B::trace_id(2)).await.unwrap().is_none(), "unknown trace id gives None");
}

async fn trace_written_in_several_batches_is_merged(store: impl SpanStore) {
    let trace = rich_trace();
    store.write(vec![trace[1].clone()]).await.unwrap();
    store.write(vec![B::new(2, 1).build()]).await.unwrap();
    store.write(vec![trace[0].clone()]).await.unwrap();
    let got = store.trace(B::trace_id(1)).await.unwrap().unwrap();
    assert_eq!(sorted(got), sorted(trace), "spans of one trace from several batches are merged");
}

async fn services_and_operations_are_listed(store: impl SpanStore) {
    store.write(rich_trace()).await.unwrap();
    store
        .write(vec![
            B::new(2, 1).service("checkout").name("Checkout").kind(SpanKind::Server).build(),
            B::new(2, 2).service("checkout").name("SELECT orders").kind(SpanKind::Client).build(),
            B::new(3, 1).service("checkout").name("Checkout").kind(SpanKind::Server).build(),
        ])
        .await
        .unwrap();
    assert_eq!(store.services().await.unwrap(), ["checkout", "frontend"], "services sorted, unique");
    let op = |name: &str, span_kind| Operation { name: name.into(), span_kind };
    assert_eq!(
        store.operations("checkout", None).await.unwrap(),
        [
            op("Checkout", SpanKind::Server),
            op("Checkout", SpanKind::Client),
            op("SELECT orders", SpanKind::Client)
        ],
        "operations of a service, sorted by name then kind, unique"
    );
    assert_eq!(
        store.operations("checkout", Some(SpanKind::Client)).await.unwrap(),
        [op("Checkout", SpanKind::Client), op("SELECT orders", SpanKind::Client)],
        "operations filtered by span kind"
    );
    assert!(store.operations("nope", None).await.unwrap().is_empty(), "unknown service has no operations");
}

async fn ids(store: &impl SpanStore, q: TraceQuery) -> Vec<u8> {
    store
        .find_traces(&q)
        .await
        .unwrap()
        .iter()
        .map(|t| {
            let id = t[0].trace_id;
            assert!(t.iter().all(|s| s.trace_id == id), "a found trace holds only its own spans");
            id.as_bytes()[15]
        })
        .collect()
}

fn q() -> TraceQuery {
    TraceQuery::default()
}

async fn find_by_service_and_operation(store: impl SpanStore) {
    store.write(rich_trace()).await.unwrap();
    store.write(vec![B::new(2, 1).service("checkout").name("Other").build()]).await.unwrap();
    let svc = |s: &str| Some(s.to_owned());
    assert_eq!(ids(&store, TraceQuery { service: svc("frontend"), ..q() }).await, [1]);
    assert_eq!(ids(&store, TraceQuery { service: svc("checkout"), ..q() }).await, [2, 1]);
    assert_eq!(
        ids(&store, TraceQuery { service: svc("checkout"), operation: svc("Checkout"), ..q() }).await,
        [1]
    );
    assert!(ids(&store, TraceQuery { service: svc("missing"), ..q() }).await.is_empty());
    let found = store
        .find_traces(&TraceQuery { service: svc("checkout"), operation: svc("Checkout"), ..q() })
        .await
        .unwrap();
    assert_eq!(found[0].len(), 2, "a found trace comes with all its spans, not only the matching one");
}

async fn find_by_tags(store: impl SpanStore) {
    store.write(rich_trace()).await.unwrap();
    store
        .write(vec![
            B::new(2, 1).service("frontend").attr("http.response.status_code", AttrValue::Int(200)).build(),
        ])
        .await
        .unwrap();
    let tags = |pairs: &[(&str, &str)]| TraceQuery {
        tags: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..q()
    };
    assert_eq!(ids(&store, tags(&[("http.response.status_code", "500")])).await, [1], "int attribute");
    assert_eq!(ids(&store, tags(&[("http.response.status_code", "200")])).await, [2]);
    assert_eq!(ids(&store, tags(&[("host.name", "web-1")])).await, [1], "resource attribute");
    assert_eq!(ids(&store, tags(&[("error", "true")])).await, [1], "error=true from status");
    assert_eq!(ids(&store, tags(&[("span.kind", "client")])).await, [1], "span.kind");
    assert_eq!(ids(&store, tags(&[("otel.status_code", "ERROR")])).await, [1]);
    assert_eq!(ids(&store, tags(&[("exception.type", "Panic")])).await, [1], "event attribute");
    assert_eq!(ids(&store, tags(&[("otel.scope.name", "skein-otel")])).await, [1]);
    assert!(ids(&store, tags(&[("host.name", "web-2")])).await.is_empty());
    assert!(
        ids(&store, tags(&[("host.name", "web-1"), ("http.response.status_code", "200")])).await.is_empty(),
        "all tags must hold"
    );
}

async fn find_by_duration_and_time(store: impl SpanStore) {
    store
        .write(vec![
            B::new(1, 1).timing_ms(0, 5).build(),
            B::new(2, 1).timing_ms(0, 50).build(),
            B::new(3, 1).timing_ms(0, 500).build(),
        ])
        .await
        .unwrap();
    let ms = |n: u64| Some(n * 1_000_000);
    assert_eq!(
        ids(&store, TraceQuery { min_duration_nanos: ms(50), ..q() }).await,
        [3, 2],
        "min is inclusive"
    );
    assert_eq!(
        ids(&store, TraceQuery { max_duration_nanos: ms(50), ..q() }).await,
        [2, 1],
        "max is inclusive"
    );
    assert_eq!(
        ids(&store, TraceQuery { min_duration_nanos: ms(10), max_duration_nanos: ms(100), ..q() }).await,
        [2]
    );
    let sec = |n: u64| BASE_TIME + n * 1_000_000_000;
    assert_eq!(
        ids(&store, TraceQuery { time: TimeRange::new(sec(2), sec(3)), ..q() }).await,
        [2],
        "time range"
    );
    assert_eq!(ids(&store, TraceQuery { time: TimeRange::new(sec(2), sec(4)), ..q() }).await, [3, 2]);
    assert!(ids(&store, TraceQuery { time: TimeRange::new(0, sec(1)), ..q() }).await.is_empty());
}

async fn find_needs_one_span_to_match_every_condition(store: impl SpanStore) {
    store
        .write(vec![
            B::new(1, 1).service("a").name("x").build(),
            B::new(1, 2).service("b").name("y").parent(1).attr("k", AttrValue::Str("v".into())).build(),
        ])
        .await
        .unwrap();
    let query = |service: &str, op: &str| TraceQuery {
        service: Some(service.into()),
        operation: Some(op.into()),
        tags: vec![("k".into(), "v".into())],
        ..q()
    };
    assert_eq!(ids(&store, query("b", "y")).await, [1]);
    assert!(ids(&store, query("a", "y")).await.is_empty(), "conditions hold on one span, not across spans");
    assert!(ids(&store, query("b", "x")).await.is_empty());
}

async fn find_returns_newest_first_up_to_limit(store: impl SpanStore) {
    for n in [3u8, 1, 5, 2, 4] {
        store.write(vec![B::new(n, 1).build()]).await.unwrap();
    }
    assert_eq!(ids(&store, q()).await, [5, 4, 3, 2, 1], "newest trace first");
    assert_eq!(ids(&store, TraceQuery { limit: 2, ..q() }).await, [5, 4], "limit");
}

async fn dependencies_count_cross_service_calls(store: impl SpanStore) {
    store
        .write(vec![
            B::new(1, 1).service("frontend").build(),
            B::new(1, 2).service("checkout").parent(1).build(),
            B::new(1, 3).service("checkout").parent(2).build(),
            B::new(1, 4).service("cart").parent(3).build(),
            B::new(1, 5).service("cart").parent(9).build(),
            B::new(2, 1).service("frontend").build(),
            B::new(2, 2).service("checkout").parent(1).build(),
        ])
        .await
        .unwrap();
    let link = |p: &str, c: &str, n| DependencyLink { parent: p.into(), child: c.into(), call_count: n };
    assert_eq!(
        store.dependencies(TimeRange::ALL).await.unwrap(),
        [link("checkout", "cart", 1), link("frontend", "checkout", 2)],
        "same-service edges and missing parents are not dependencies"
    );
    let first = TimeRange::new(BASE_TIME, BASE_TIME + 2_000_000_000);
    assert_eq!(
        store.dependencies(first).await.unwrap(),
        [link("checkout", "cart", 1), link("frontend", "checkout", 1)],
        "only spans in the time range count"
    );
}

async fn scan_reads_every_span_of_the_window(store: impl SpanStore) {
    fn keep(key: &str) -> bool {
        key == "kept"
    }
    // Trace 1 (three spans, one with a link and an event), trace 2 an hour later.
    let one: Vec<Span> = (1..=3u8)
        .map(|i| {
            let b = B::new(1, i)
                .service("front")
                .attr("kept", AttrValue::Int(i as i64))
                .attr("dropped", AttrValue::Bool(true));
            let b = if i == 1 { b } else { b.parent(1) };
            let b = if i == 2 {
                b.link(9, 9).event("retry", 1, vec![KeyValue::new("n", AttrValue::Int(1))])
            } else {
                b
            };
            b.build()
        })
        .collect();
    let later = B::new(2, 1).times(BASE_TIME + 3_600_000_000_000, BASE_TIME + 3_600_010_000_000).build();
    store.write(one.clone()).await.unwrap();
    store.write(vec![later]).await.unwrap();
    let range = TimeRange::new(BASE_TIME, BASE_TIME + 60_000_000_000);
    let scan = store.scan(range, 1_000, keep).await.unwrap();
    assert!(!scan.truncated, "scan: nothing truncated below the limit");
    let mut got = scan.traces.get(&B::trace_id(1)).cloned().expect("scan: the window's trace");
    got.sort_by_key(|s| s.span_id);
    got.dedup_by_key(|s| s.span_id);
    let want: Vec<ScanSpan> = one.iter().map(|s| ScanSpan::of(s, keep)).collect();
    assert_eq!(got, want, "scan: every span of the window, with only the kept attributes");
    assert_eq!(got[1].links, 1, "scan: links are counted");
    assert_eq!(scan.spans, scan.traces.values().map(Vec::len).sum::<usize>(), "scan: the span count");
    let small = store.scan(range, 1, keep).await.unwrap();
    assert!(small.truncated && small.spans <= 1, "scan: at most max_spans, and says it truncated");
}

async fn traces_reads_several_traces_at_once(store: impl SpanStore) {
    for n in 1..=3u8 {
        store.write(vec![B::new(n, 1).build(), B::new(n, 2).parent(1).build()]).await.unwrap();
    }
    let found = store.traces(&[B::trace_id(3), B::trace_id(1), B::trace_id(7)]).await.unwrap();
    let mut keys: Vec<_> = found.keys().copied().collect();
    keys.sort();
    assert_eq!(keys, [B::trace_id(1), B::trace_id(3)], "traces: the stored ones of those asked for");
    assert!(found.values().all(|t| t.len() == 2), "traces: each whole");
}
