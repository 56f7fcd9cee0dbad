//! The store against real ClickHouse servers started by `scripts/test`
//! (`scripts/clickhouse-servers`): the conformance suite on one server and on a 2-shard
//! cluster, with spans read from the local buffer and from ClickHouse, and the errors users
//! meet; and the conformance suite, SQL safety and retention on a current ClickHouse (26.x,
//! in-process from PyPI's `chdb-core` behind `tests/interop/chdb/http_server.py`), where the
//! schema uses codecs and `LowCardinality`.

use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use skein_clickhouse::schema::{SPAN_NUMBERS, TAG_NUMBERS};
use skein_clickhouse::{ClickhouseConfig, ClickhouseStore, Client, OpenError};
use skein_model::{AttrValue, KeyValue, Span, SpanId, SpanKind, TimeRange, TraceId};
use skein_store::testdata::{BASE_TIME, SpanBuilder as B};
use skein_store::{DependencyLink, Operation, SpanStore, StoreError, StoreStats, TraceQuery, conformance};

/// The server's URL, or `None` (with a note) when the tests run outside `scripts/test`;
/// under CI a missing server is a failure.
fn env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{name} is not set: CI runs these tests through scripts/test, which starts ClickHouse")
        }
        Err(_) => {
            eprintln!("skipped: {name} not set (run scripts/test, which starts ClickHouse servers)");
            None
        }
    }
}

fn single() -> Option<String> {
    env("SKEIN_TEST_CLICKHOUSE_URL")
}

/// ClickHouse 26.x (chdb behind an HTTP shim).
fn modern() -> Option<String> {
    env("SKEIN_TEST_CLICKHOUSE_MODERN_URL")
}

fn cluster() -> Option<(String, String)> {
    Some((env("SKEIN_TEST_CLICKHOUSE_CLUSTER_URL")?, env("SKEIN_TEST_CLICKHOUSE_CLUSTER")?))
}

/// One test per server for a body shared by them: `single` (18.16, one server), `cluster`
/// (18.16, two shards) and `modern` (26.9 through chdb); each returns at once where its server
/// is not configured (CI configures all three).
macro_rules! server_tests {
    ($body:ident { $($kind:ident: $name:ident),+ $(,)? }) => {
        $(server_tests!(@one $kind, $body, $name);)+
    };
    (@one single, $body:ident, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(url) = single() else { return };
            $body(&url, None).await;
        }
    };
    (@one cluster, $body:ident, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some((url, cluster)) = cluster() else { return };
            $body(&url, Some(&cluster)).await;
        }
    };
    (@one modern, $body:ident, $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(url) = modern() else { return };
            $body(&url, None).await;
        }
    };
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A configuration with a database of its own and a fresh buffer directory.
fn config(url: &str, cluster: Option<&str>) -> ClickhouseConfig {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap().keep();
    let mut c = ClickhouseConfig::new(url, dir);
    c.database = format!("t{}_{n}", std::process::id());
    c.cluster = cluster.map(str::to_owned);
    // The suite's spans are from 2024: keep them.
    c.retention = std::time::Duration::from_secs(100 * 365 * 86_400);
    c
}

/// Nothing is sent to ClickHouse unless a test asks (`flush_now`): reads come from the buffer.
fn buffer_only(mut c: ClickhouseConfig) -> ClickhouseConfig {
    c.flush_interval = std::time::Duration::from_secs(3600);
    c.flush_spans = usize::MAX;
    c
}

/// Every write goes to ClickHouse before it returns, so reads come from ClickHouse only.
#[derive(Debug)]
struct Delivered(ClickhouseStore);

#[async_trait]
impl SpanStore for Delivered {
    async fn write(&self, spans: Vec<Span>) -> Result<(), StoreError> {
        self.0.write(spans).await?;
        self.0.flush_now().await?;
        assert_eq!(self.0.buffered_spans(), 0, "flush_now leaves nothing buffered");
        Ok(())
    }
    async fn trace(&self, id: TraceId) -> Result<Option<Vec<Span>>, StoreError> {
        self.0.trace(id).await
    }
    async fn find_traces(&self, q: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError> {
        self.0.find_traces(q).await
    }
    async fn services(&self) -> Result<Vec<String>, StoreError> {
        self.0.services().await
    }
    async fn operations(&self, s: &str, k: Option<SpanKind>) -> Result<Vec<Operation>, StoreError> {
        self.0.operations(s, k).await
    }
    async fn dependencies(&self, r: TimeRange) -> Result<Vec<DependencyLink>, StoreError> {
        self.0.dependencies(r).await
    }
    fn stats(&self) -> StoreStats {
        self.0.stats()
    }
}

async fn open(c: ClickhouseConfig) -> ClickhouseStore {
    ClickhouseStore::open(c).await.unwrap_or_else(|e| panic!("open: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_server_from_clickhouse() {
    let Some(url) = single() else { return };
    conformance::run_all(|| async { Delivered(open(config(&url, None)).await) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_single_server_from_the_buffer() {
    let Some(url) = single() else { return };
    conformance::run_all(|| async { open(buffer_only(config(&url, None))).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_current_clickhouse_from_clickhouse() {
    let Some(url) = modern() else { return };
    let client = Client::new(&url, None, None).unwrap();
    let version = String::from_utf8(client.query("SELECT version()", &[]).await.unwrap()).unwrap();
    assert!(version.trim().split('.').next().unwrap().parse::<u32>().unwrap() >= 25, "{version}");
    conformance::run_all(|| async { Delivered(open(config(&url, None)).await) }).await;
    // The schema made for this version uses what 18.16 lacks.
    let c = config(&url, None);
    drop(open(c.clone()).await);
    let columns = |cond: &str| {
        format!("SELECT count() FROM system.columns WHERE database = '{}' AND {cond}", c.database)
    };
    assert!(count_on(&url, &columns("compression_codec LIKE '%ZSTD%'")).await >= 10, "codecs");
    assert!(count_on(&url, &columns("type = 'LowCardinality(String)'")).await >= 5, "LowCardinality");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_current_clickhouse_from_the_buffer() {
    let Some(url) = modern() else { return };
    conformance::run_all(|| async { open(buffer_only(config(&url, None))).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_two_shards_from_clickhouse() {
    let Some((url, name)) = cluster() else { return };
    conformance::run_all(|| async { Delivered(open(config(&url, Some(&name))).await) }).await;
}

/// Reads a shard's local spans table directly.
async fn count_on(url: &str, sql: &str) -> u64 {
    let c = Client::new(url, None, None).unwrap();
    String::from_utf8(c.query(sql, &[]).await.unwrap()).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_lives_on_one_shard_and_both_shards_are_used() {
    let Some((url, name)) = cluster() else { return };
    let c = config(&url, Some(&name));
    let db = c.database.clone();
    let store = Delivered(open(c).await);
    let mut spans = Vec::new();
    let id = |t: u8| {
        TraceId::from_bytes([t.wrapping_mul(37), 1, 2, 3, 4, 5, 6, t, 0, 0, 0, 0, 0, 0, 0, t]).unwrap()
    };
    for t in 1..=40u8 {
        for s in 1..=3u8 {
            let span = B::new(t, s).service("svc").attr("trace.no", AttrValue::Int(t.into())).build();
            spans.push(Span { trace_id: id(t), ..span });
        }
    }
    store.write(spans).await.unwrap();
    let shard_urls = [url.clone(), url.replace("127.0.0.2", "127.0.0.3")];
    let mut total = 0;
    for u in &shard_urls {
        let n = count_on(u, &format!("SELECT sum(length(span_ids)) FROM {db}.traces_local")).await;
        assert!(n > 0, "shard {u} holds some of the 40 traces");
        let split = count_on(
            u,
            &format!(
                "SELECT count() FROM (SELECT trace_id, sum(length(span_ids)) AS c FROM {db}.traces_local GROUP BY trace_id HAVING c != 3)"
            ),
        )
        .await;
        assert_eq!(split, 0, "every trace on {u} has all 3 of its spans there");
        // The tag index's rows (trace numbers, placed by their slot) are on their trace's
        // shard, and so are the rows that turn the numbers into 4-byte trace keys.
        let tags =
            count_on(u, &format!("SELECT count() FROM {db}.tag_refs_local ARRAY JOIN {TAG_NUMBERS} AS n"))
                .await;
        assert!(tags >= n / 3, "{u} indexes its traces' tags ({tags} references for {n} spans)");
        let refs = count_on(u, &format!("SELECT count() FROM {db}.trace_refs_local")).await;
        assert!(refs >= n / 3, "{u} numbers its traces ({refs} rows for {n} spans)");
        let elsewhere = count_on(
            u,
            &format!(
                "SELECT count() FROM {db}.trace_refs_local WHERE trace_key NOT IN (SELECT reinterpretAsUInt32(trace_id) FROM {db}.traces_local)"
            ),
        )
        .await;
        assert_eq!(elsewhere, 0, "no trace_refs row on {u} belongs to a trace of the other shard");
        let dangling = count_on(
            u,
            &format!(
                "SELECT count() FROM {db}.tag_refs_local ARRAY JOIN {TAG_NUMBERS} AS idx WHERE (timestamp, idx) NOT IN (SELECT timestamp, idx FROM {db}.trace_refs_local)"
            ),
        )
        .await;
        assert_eq!(dangling, 0, "every tag reference on {u} names a trace of that shard");
        // So are the span index's rows (trace numbers, placed by their slot): one element per
        // span, each a number of a trace of that shard.
        let indexed =
            count_on(u, &format!("SELECT count() FROM {db}.span_refs_local ARRAY JOIN starts")).await;
        assert_eq!(indexed, n, "{u} has a span_refs element per span it holds");
        let dangling = count_on(
            u,
            &format!(
                "SELECT count() FROM {db}.span_refs_local ARRAY JOIN {SPAN_NUMBERS} AS idx WHERE (timestamp, idx) NOT IN (SELECT timestamp, idx FROM {db}.trace_refs_local)"
            ),
        )
        .await;
        assert_eq!(dangling, 0, "every span reference on {u} names a trace of that shard");
        total += n;
    }
    assert_eq!(total, 120);
    // Searches by service alone read `span_refs` through the cluster.
    let all = TraceQuery { service: Some("svc".into()), limit: 100, ..TraceQuery::default() };
    assert_eq!(store.find_traces(&all).await.unwrap().len(), 40);
    for t in 1..=40u8 {
        let got = store.trace(id(t)).await.unwrap();
        assert_eq!(got.map(|s| s.len()), Some(3), "trace {t} read from the shard Skein computes for it");
        let q = TraceQuery {
            service: Some("svc".into()),
            tags: vec![("trace.no".into(), t.to_string())],
            ..TraceQuery::default()
        };
        let found = store.find_traces(&q).await.unwrap();
        assert_eq!(found.iter().map(|t| t[0].trace_id).collect::<Vec<_>>(), [id(t)], "search for trace {t}");
    }
}

/// A search whose candidates are hundreds of traces turns hundreds of trace keys into ids in
/// one statement: longer than some servers parse by default (26.9 stops at a few kilobytes).
async fn many_candidates(url: &str, cluster: Option<&str>) {
    let store = Delivered(open(config(url, cluster)).await);
    let mut spans = Vec::new();
    for t in 0..300u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&t.wrapping_mul(2_654_435_761).to_le_bytes());
        id[15] = 1;
        let span = B::new(1, 1)
            .service("many")
            .attr("shared", AttrValue::Str("yes".into()))
            .attr("odd", AttrValue::Bool(t % 2 == 1))
            .build();
        spans.push(Span { trace_id: TraceId::from_bytes(id).unwrap(), ..span });
    }
    store.write(spans).await.unwrap();
    let q = |tags: &[(&str, &str)]| TraceQuery {
        service: Some("many".into()),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        limit: 1000,
        ..TraceQuery::default()
    };
    assert_eq!(store.find_traces(&q(&[("shared", "yes")])).await.unwrap().len(), 300);
    assert_eq!(store.find_traces(&q(&[("shared", "yes"), ("odd", "true")])).await.unwrap().len(), 150);
}

server_tests!(many_candidates {
    single: searches_with_hundreds_of_candidates,
    modern: searches_with_hundreds_of_candidates_on_current_clickhouse,
});

/// `traces` holds a trace's spans of an insert in one row, a parent named by its place in the
/// row: parents in the row, in an earlier insert, absent (roots), repeated span ids and a trace
/// of more spans than one row takes (parents across rows) all read back as written, and calls
/// are counted across rows and inserts.
async fn trace_rows(url: &str, cluster: Option<&str>) {
    let c = config(url, cluster);
    let db = c.database.clone();
    let store = Delivered(open(c).await);
    let trace = B::trace_id(77);
    let span = |i: u32| {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&(i + 1).to_le_bytes());
        SpanId::from_bytes(b).unwrap()
    };
    // First insert: the root (span 0) of service "front".
    let root = B::new(77, 1).service("front").ids(trace, span(0), None).build();
    store.write(vec![root.clone()]).await.unwrap();
    // Second insert: 5,000 spans of service "back" (more than one row holds), span i's parent
    // is span i / 2 (span 1's is the root of the first insert), starts in reverse order of
    // their number; and span 5,000 twice with different parents (a repeated id).
    let mut second: Vec<Span> = (1..5000u32)
        .map(|i| {
            let mut s = B::new(77, 2).service("back").ids(trace, span(i), Some(span(i / 2))).build();
            s.start_time_unix_nano = root.start_time_unix_nano + u64::from(10_000 - i) * 1_000;
            s.end_time_unix_nano = s.start_time_unix_nano + 500;
            s
        })
        .collect();
    for parent in [3, 4] {
        second.push(B::new(77, 3).service("back").ids(trace, span(5000), Some(span(parent))).build());
    }
    store.write(second.clone()).await.unwrap();
    let rows = count_on(url, &format!("SELECT count() FROM {db}.traces")).await;
    assert!(rows >= 3, "two inserts, the second in two rows at least ({rows} rows)");
    let mut got = store.trace(trace).await.unwrap().expect("stored");
    let mut want: Vec<Span> = std::iter::once(root).chain(second).collect();
    let key = |s: &Span| (s.span_id, s.parent_span_id, s.start_time_unix_nano);
    got.sort_by_key(key);
    want.sort_by_key(key);
    // Reads drop repeated (trace, span id) pairs: one of the two spans 5,000 comes back.
    let repeated: Vec<&Span> = got.iter().filter(|s| s.span_id == span(5000)).collect();
    assert_eq!(repeated.len(), 1);
    assert!([Some(span(3)), Some(span(4))].contains(&repeated[0].parent_span_id));
    want.retain(|s| s.span_id != span(5000) || s.parent_span_id == repeated[0].parent_span_id);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "span {:?}", g.span_id);
    }
    let range = TimeRange { start_unix_nano: BASE_TIME, end_unix_nano: BASE_TIME + 86_400_000_000_000 };
    let deps = store.dependencies(range).await.unwrap();
    let front_back: u64 =
        deps.iter().filter(|d| d.parent == "front" && d.child == "back").map(|d| d.call_count).sum();
    assert_eq!(front_back, 1, "the one call from the first insert's root: {deps:?}");
}

server_tests!(trace_rows {
    single: trace_rows_name_parents_by_place,
    cluster: trace_rows_on_two_shards,
    modern: trace_rows_on_current_clickhouse,
});

/// A value hundreds of traces have (but not the operation as a whole): a search looks up only
/// the newest of its trace numbers first, and more when the other tags drop those, so that it
/// still finds exactly the newest traces that match, and a match among the oldest.
async fn common_values(url: &str, cluster: Option<&str>) {
    let store = Delivered(open(config(url, cluster)).await);
    let id = |t: u32| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&t.wrapping_mul(2_654_435_761).to_le_bytes());
        id[15] = 2;
        TraceId::from_bytes(id).unwrap()
    };
    let mut spans = Vec::new();
    for t in 0..600u32 {
        // 500 of 600 (83 %, below the operation-level share), one trace per second (the
        // candidates of one second are taken in no particular order).
        let mut b = B::new(1, 1)
            .service("capped")
            .timing_ms(u64::from(t) * 1000, 1)
            .attr("common", AttrValue::Str(if t < 500 { "c" } else { "d" }.into()));
        if t == 0 {
            b = b.attr("rare", AttrValue::Str("r".into()));
        }
        spans.push(Span { trace_id: id(t), ..b.build() });
    }
    store.write(spans).await.unwrap();
    let q = |tags: &[(&str, &str)], limit: usize| TraceQuery {
        service: Some("capped".into()),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        limit,
        ..TraceQuery::default()
    };
    let ids = |found: Vec<Vec<Span>>| found.iter().map(|t| t[0].trace_id).collect::<Vec<_>>();
    let newest = ids(store.find_traces(&q(&[("common", "c")], 20)).await.unwrap());
    assert_eq!(newest, (480..500).rev().map(id).collect::<Vec<_>>(), "the newest 20 with the value");
    let oldest = ids(store.find_traces(&q(&[("common", "c"), ("rare", "r")], 20)).await.unwrap());
    assert_eq!(oldest, [id(0)], "the one match, behind 499 newer traces with the first tag");
    assert_eq!(store.find_traces(&q(&[("common", "c")], 1000)).await.unwrap().len(), 500);
    assert!(store.find_traces(&q(&[("common", "d"), ("rare", "r")], 20)).await.unwrap().is_empty());
}

server_tests!(common_values {
    single: common_values_are_searched_newest_first,
    cluster: common_values_on_two_shards,
    modern: common_values_on_current_clickhouse,
});

server_tests!(hostile_names {
    single: hostile_names_keys_and_values_are_stored_and_found_as_they_are,
    modern: hostile_names_on_current_clickhouse,
});

async fn hostile_names(url: &str, cluster: Option<&str>) {
    let store = Delivered(open(config(url, cluster)).await);
    let evil = ["'); DROP TABLE spans; --", "back\\slash'", "new\nline\ttab", "nul\0byte", "ünï☃ \u{7f}"];
    for (i, text) in evil.iter().enumerate() {
        let n = i as u8 + 1;
        store
            .write(vec![
                B::new(n, 1)
                    .service(text)
                    .name(*text)
                    .kind(SpanKind::Server)
                    .attr(text, AttrValue::Str((*text).into()))
                    .event(text, 1, vec![KeyValue::string(*text, *text)])
                    .build(),
            ])
            .await
            .unwrap();
    }
    let mut services = store.services().await.unwrap();
    services.sort();
    let mut want: Vec<String> = evil.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(services, want, "service names come back byte for byte");
    for (i, text) in evil.iter().enumerate() {
        let n = i as u8 + 1;
        assert_eq!(
            store.operations(text, None).await.unwrap(),
            [Operation { name: text.to_string(), span_kind: SpanKind::Server }],
            "operation names come back byte for byte"
        );
        let q = TraceQuery {
            service: Some(text.to_string()),
            tags: vec![(text.to_string(), text.to_string())],
            ..TraceQuery::default()
        };
        let found = store.find_traces(&q).await.unwrap();
        assert_eq!(found.len(), 1, "search for {text:?}");
        assert_eq!(found[0][0].trace_id, B::trace_id(n));
        let q = TraceQuery { tags: vec![("event".into(), text.to_string())], ..TraceQuery::default() };
        assert_eq!(store.find_traces(&q).await.unwrap().len(), 1, "event named {text:?}");
    }
    let all = store.find_traces(&TraceQuery { limit: 100, ..TraceQuery::default() }).await.unwrap();
    assert_eq!(all.len(), evil.len(), "nothing was dropped by an injected statement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_values_and_typed_values_are_found() {
    let Some(url) = single() else { return };
    let store = Delivered(open(config(&url, None)).await);
    let long = format!("SELECT * FROM t WHERE x = '{}'", "y".repeat(500));
    let long2 = format!("{}z", &long[..long.len() - 1]);
    store
        .write(vec![
            B::new(1, 1)
                .attr("db.query.text", AttrValue::Str(long.clone().into()))
                .attr("f", AttrValue::Double(1.5))
                .build(),
            B::new(2, 1)
                .attr("db.query.text", AttrValue::Str(long2.clone().into()))
                .attr("n", AttrValue::Int(42))
                .build(),
        ])
        .await
        .unwrap();
    let find = |k: &str, v: &str| TraceQuery { tags: vec![(k.into(), v.into())], ..TraceQuery::default() };
    let ids = |t: Vec<Vec<Span>>| t.iter().map(|s| s[0].trace_id).collect::<Vec<_>>();
    assert_eq!(ids(store.find_traces(&find("db.query.text", &long)).await.unwrap()), [B::trace_id(1)]);
    assert_eq!(ids(store.find_traces(&find("db.query.text", &long2)).await.unwrap()), [B::trace_id(2)]);
    assert_eq!(ids(store.find_traces(&find("f", "1.50")).await.unwrap()), [B::trace_id(1)]);
    assert_eq!(ids(store.find_traces(&find("n", "+42")).await.unwrap()), [B::trace_id(2)]);
}

/// `span_index` holds starts rounded down to the millisecond and durations to the microsecond
/// (schema version 7): time and duration bounds that fall between two spans' exact values, in
/// the same millisecond and microsecond, still tell them apart.
async fn bounds_below_the_index_rounding(url: &str, cluster: Option<&str>) {
    let store = Delivered(open(config(url, cluster)).await);
    let second = B::new(1, 1).build().start_time_unix_nano / 1_000_000_000 * 1_000_000_000;
    let t0 = second + 500_000_000;
    let (a, b) = (t0 + 300_000, t0 + 700_000);
    store
        .write(vec![
            B::new(1, 1).service("svc").times(a, a + 2_000_400).build(),
            B::new(2, 1).service("svc").times(b, b + 2_000_600).build(),
        ])
        .await
        .unwrap();
    let ids = async |start: u64, min: Option<u64>, max: Option<u64>| {
        let q = TraceQuery {
            service: Some("svc".into()),
            time: TimeRange { start_unix_nano: start, end_unix_nano: t0 + 10_000_000 },
            min_duration_nanos: min,
            max_duration_nanos: max,
            ..TraceQuery::default()
        };
        let found = store.find_traces(&q).await.unwrap();
        found.iter().map(|t| t[0].trace_id).collect::<Vec<_>>()
    };
    let (one, two) = (B::trace_id(1), B::trace_id(2));
    assert_eq!(ids(t0, None, None).await, [two, one], "newest first");
    assert_eq!(ids(t0 + 500_000, None, None).await, [two], "a window starting between them");
    assert_eq!(ids(b + 1, None, None).await, [], "a window starting just after the newer");
    assert_eq!(ids(t0, Some(2_000_500), None).await, [two], "a minimum between the durations");
    assert_eq!(ids(t0, None, Some(2_000_500)).await, [one], "a maximum between the durations");
    assert_eq!(ids(t0, Some(2_000_600), Some(2_000_600)).await, [two], "exact bounds");
    assert_eq!(ids(t0, Some(2_000_601), None).await, [], "a minimum above both");
}

server_tests!(bounds_below_the_index_rounding {
    single: time_and_duration_bounds_finer_than_the_index,
    modern: time_and_duration_bounds_on_current_clickhouse,
});

/// A database made by schema version 6 on a server with codecs: the migration to version 7
/// gives `spans.payload` its codec and the table its compression blocks, and the spans stored
/// before and after read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_6_table_on_current_clickhouse_gets_the_new_payload_codec() {
    let Some(url) = modern() else { return };
    let c = config(&url, None);
    let db = c.database.clone();
    let client = Client::new(&url, None, None).unwrap();
    let text =
        async |sql: String| String::from_utf8_lossy(&client.query(&sql, &[]).await.unwrap()).into_owned();
    // What version 6 created for `spans` on such a server.
    text(format!("CREATE DATABASE {db}")).await;
    text(format!(
        "CREATE TABLE {db}.spans (trace_id FixedString(16) CODEC(ZSTD(1)), span_id FixedString(8) CODEC(ZSTD(1)), \
         timestamp DateTime CODEC(Delta, ZSTD(1)), start_ns UInt64 CODEC(Delta, ZSTD(1)), resource_id UInt64 CODEC(ZSTD(1)), \
         payload String CODEC(ZSTD(3)), parent_span_id FixedString(8) CODEC(ZSTD(1))) ENGINE = MergeTree() \
         PARTITION BY toDate(timestamp) ORDER BY (trace_id, span_id) SETTINGS index_granularity = 1024"
    ))
    .await;
    let store = Delivered(open(c.clone()).await);
    store.write(vec![B::new(1, 1).attr("k", AttrValue::Str("before".into())).build()]).await.unwrap();
    drop(store);
    // Back to version 6, as if that store had been a version 6 node, then opened by this one.
    text(format!("ALTER TABLE {db}.spans MODIFY COLUMN payload String CODEC(ZSTD(3))")).await;
    text(format!("ALTER TABLE {db}.spans RESET SETTING min_compress_block_size")).await;
    text(format!("DROP TABLE {db}.schema_migrations")).await;
    text(format!(
        "CREATE TABLE {db}.schema_migrations (version UInt32, applied_at DateTime, by String) ENGINE = TinyLog"
    ))
    .await;
    text(format!("INSERT INTO {db}.schema_migrations VALUES (6, now(), 'version 6')")).await;
    let codec = format!(
        "SELECT compression_codec FROM system.columns WHERE database = '{db}' AND table = 'spans' AND name = 'payload'"
    );
    let create =
        format!("SELECT create_table_query FROM system.tables WHERE database = '{db}' AND name = 'spans'");
    assert!(text(codec.clone()).await.contains("ZSTD(3)"));
    assert!(!text(create.clone()).await.contains("min_compress_block_size"));

    let store = Delivered(open(c).await);
    assert!(text(codec).await.contains("ZSTD(6)"));
    assert!(text(create).await.contains("min_compress_block_size = 1048576"));
    store.write(vec![B::new(2, 1).attr("k", AttrValue::Str("after".into())).build()]).await.unwrap();
    for (n, v) in [(1, "before"), (2, "after")] {
        let spans = store.trace(B::trace_id(n)).await.unwrap().expect("stored");
        assert_eq!(spans[0].attributes[0].value, AttrValue::Str(v.into()));
    }
}

/// Conditions on what a span has (its resource, kind, duration) filter `span_refs` rows before
/// their spans' trace numbers are turned into keys, alone and with a tag of the tag index: the
/// searches find exactly the traces that have them, and nothing when no span of the service
/// does (a resource attribute of another service).
async fn span_level_conditions(url: &str, cluster: Option<&str>) {
    let store = Delivered(open(config(url, cluster)).await);
    let pod = |p: &str| AttrValue::Str(p.into());
    let mut spans = Vec::new();
    for t in 1..=30u8 {
        let (frontend, backend) = if t % 2 == 0 { ("front-a", "back-a") } else { ("front-b", "back-b") };
        spans.push(
            B::new(t, 1)
                .service("frontend")
                .resource_attr("k8s.pod.name", pod(frontend))
                .name("GET /")
                .kind(SpanKind::Server)
                .timing_ms(u64::from(t) * 10, u64::from(t))
                .attr("user", AttrValue::Str(format!("u{}", t % 3).into()))
                .build(),
        );
        spans.push(
            B::new(t, 2)
                .service("backend")
                .resource_attr("k8s.pod.name", pod(backend))
                .name("work")
                .kind(SpanKind::Internal)
                .parent(1)
                .timing_ms(u64::from(t) * 10 + 1, 1)
                .build(),
        );
    }
    store.write(spans).await.unwrap();
    let find = async |service: &str, tags: &[(&str, &str)], min_ms: Option<u64>| {
        let q = TraceQuery {
            service: Some(service.into()),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            min_duration_nanos: min_ms.map(|ms| ms * 1_000_000),
            limit: 100,
            ..TraceQuery::default()
        };
        let mut found: Vec<u8> = store
            .find_traces(&q)
            .await
            .unwrap()
            .iter()
            .map(|t| (1..=30u8).find(|n| B::trace_id(*n) == t[0].trace_id).unwrap())
            .collect();
        found.sort();
        found
    };
    let even: Vec<u8> = (1..=30).filter(|t| t % 2 == 0).collect();
    assert_eq!(find("frontend", &[("k8s.pod.name", "front-a")], None).await, even);
    assert_eq!(
        find("frontend", &[("k8s.pod.name", "back-a")], None).await,
        [0u8; 0],
        "another service's pod"
    );
    assert_eq!(find("frontend", &[("k8s.pod.name", "nowhere")], None).await, [0u8; 0]);
    assert_eq!(find("frontend", &[("span.kind", "internal")], None).await, [0u8; 0]);
    assert_eq!(find("backend", &[("span.kind", "internal")], None).await, (1..=30).collect::<Vec<u8>>());
    assert_eq!(find("frontend", &[("k8s.pod.name", "front-a")], Some(21)).await, [22u8, 24, 26, 28, 30]);
    assert_eq!(find("frontend", &[], Some(31)).await, [0u8; 0], "longer than every span");
    // With a tag of the tag index (checked by trace after the join).
    let with_user: Vec<u8> = even.iter().copied().filter(|t| t % 3 == 1).collect();
    assert_eq!(find("frontend", &[("k8s.pod.name", "front-a"), ("user", "u1")], None).await, with_user);
    assert_eq!(find("frontend", &[("user", "u1"), ("k8s.pod.name", "back-a")], None).await, [0u8; 0]);
    // Matches older than the newest second, in a window of an hour: the first slice (that
    // second) has none of them, and the search goes on to wider slices.
    let late = B::new(31, 1)
        .service("frontend")
        .resource_attr("k8s.pod.name", pod("front-c"))
        .timing_ms(120_000, 1)
        .build();
    store.write(vec![late.clone()]).await.unwrap();
    let window = TimeRange {
        start_unix_nano: late.start_time_unix_nano - 3_000_000_000_000,
        end_unix_nano: late.start_time_unix_nano + 1_000_000_000,
    };
    for (tags, min_ms) in [(vec![("k8s.pod.name", "front-a")], None), (vec![], Some(21))] {
        let q = TraceQuery {
            service: Some("frontend".into()),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            min_duration_nanos: min_ms.map(|ms: u64| ms * 1_000_000),
            time: window,
            limit: 100,
            ..TraceQuery::default()
        };
        let found = store.find_traces(&q).await.unwrap();
        let expected = if min_ms.is_some() { 10 } else { even.len() };
        assert_eq!(found.len(), expected, "{tags:?} {min_ms:?}");
        assert!(found.iter().all(|t| t[0].trace_id != late.trace_id));
    }
}

server_tests!(span_level_conditions {
    single: span_level_conditions_filter_span_refs_rows,
    cluster: span_level_conditions_on_two_shards,
    modern: span_level_conditions_on_current_clickhouse,
});

/// A `tag_refs` table made by schema version 8 (numbers only in `idxs`) gets version 9's
/// number columns at migration, and its rows are searched with those written after.
async fn tag_refs_of_version_8(url: &str, cluster: Option<&str>) {
    let c = config(url, cluster);
    let db = c.database.clone();
    // Every server (the test cluster's two shards answer on the same port), and the name of
    // the table that holds rows on one server.
    let servers = match cluster {
        None => vec![url.to_owned()],
        Some(_) => vec![url.to_owned(), url.replace("127.0.0.2", "127.0.0.3")],
    };
    let local = if cluster.is_some() { "tag_refs_local" } else { "tag_refs" };
    let run = async |server: &str, sql: String| {
        Client::new(server, None, None)
            .unwrap()
            .query(&sql, &[("insert_distributed_sync", "1")])
            .await
            .unwrap();
    };
    let store = Delivered(open(c.clone()).await);
    let before = B::new(1, 1).service("svc").attr("k", AttrValue::Str("before".into())).build();
    store.write(vec![before.clone()]).await.unwrap();
    drop(store);
    // Back to version 8 on every server: its columns, its version; and its row for `before`
    // (numbers in `idxs`).
    for server in &servers {
        run(server, format!("TRUNCATE TABLE {db}.{local}")).await;
        for column in ["first", "first_high", "steps"] {
            run(server, format!("ALTER TABLE {db}.{local} DROP COLUMN {column}")).await;
            if cluster.is_some() {
                run(server, format!("ALTER TABLE {db}.tag_refs DROP COLUMN {column}")).await;
            }
        }
        run(server, format!("DROP TABLE {db}.schema_migrations")).await;
        run(
            server,
            format!(
                "CREATE TABLE {db}.schema_migrations (version UInt32, applied_at DateTime, by String) ENGINE = TinyLog"
            ),
        )
        .await;
        run(server, format!("INSERT INTO {db}.schema_migrations VALUES (8, now(), 'version 8')")).await;
    }
    let key = u32::from_le_bytes(before.trace_id.as_bytes()[..4].try_into().unwrap());
    run(
        url,
        format!(
            "INSERT INTO {db}.tag_refs SELECT 'k', 'before', 'svc', timestamp, [idx], slot FROM {db}.trace_refs \
             WHERE trace_key = {key} LIMIT 1"
        ),
    )
    .await;

    let store = Delivered(open(c).await);
    for server in &servers {
        let columns = count_on(
            server,
            &format!(
                "SELECT count() FROM system.columns WHERE database = '{db}' AND table IN ('tag_refs', '{local}') \
                 AND name IN ('first', 'first_high', 'steps')"
            ),
        )
        .await;
        let tables = if cluster.is_some() { 2 } else { 1 };
        assert_eq!(columns, 3 * tables, "{server}: version 9's columns added");
    }
    let after = B::new(2, 1).service("svc").attr("k", AttrValue::Str("after".into())).build();
    store.write(vec![after.clone()]).await.unwrap();
    for (value, trace) in [("before", before.trace_id), ("after", after.trace_id)] {
        let q = TraceQuery {
            service: Some("svc".into()),
            tags: vec![("k".into(), value.into())],
            ..TraceQuery::default()
        };
        let found = store.find_traces(&q).await.unwrap();
        assert_eq!(found.len(), 1, "{value}");
        assert_eq!(found[0][0].trace_id, trace);
    }
}

server_tests!(tag_refs_of_version_8 {
    single: a_version_8_tag_index_is_upgraded,
    cluster: a_version_8_tag_index_is_upgraded_on_every_shard,
    modern: a_version_8_tag_index_is_upgraded_on_current_clickhouse,
});

/// A value that (almost) every span of an operation has in a batch is indexed once for the
/// operation (`operation_tags`), not once per trace; searches for it, alone and with other
/// tags, still find exactly the traces that have it, and rarer values stay in the tag index.
async fn operation_level_tags(url: &str, cluster: Option<&str>) {
    let c = config(url, cluster);
    let db = c.database.clone();
    let store = Delivered(open(c).await);
    // 20 calls of one operation: 19 to port 8080, one to 9090; each with its own user.
    let spans: Vec<Span> = (1..=20u8)
        .map(|t| {
            B::new(t, 1)
                .service("checkout")
                .name("GET /cart")
                .timing_ms(u64::from(t), 5)
                .attr("server.port", AttrValue::Int(if t == 20 { 9090 } else { 8080 }))
                .attr("app.user.id", AttrValue::Str(format!("u{t}").into()))
                .build()
        })
        .collect();
    store.write(spans).await.unwrap();
    let count = |sql: String| {
        let url = url.to_owned();
        async move { count_on(&url, &sql).await }
    };
    assert_eq!(
        count(format!(
            "SELECT count() FROM {db}.operation_tags WHERE key = 'server.port' AND value = '8080'"
        ))
        .await,
        1,
        "one row for the operation"
    );
    assert_eq!(
        count(format!(
            "SELECT count() FROM {db}.tag_refs ARRAY JOIN {TAG_NUMBERS} AS n WHERE key = 'server.port' AND value = '8080'"
        ))
        .await,
        0
    );
    assert_eq!(
        count(format!(
            "SELECT count() FROM {db}.tag_refs ARRAY JOIN {TAG_NUMBERS} AS n WHERE key = 'server.port' AND value = '9090'"
        ))
        .await,
        1
    );
    assert_eq!(
        count(format!(
            "SELECT count() FROM {db}.tag_refs ARRAY JOIN {TAG_NUMBERS} AS n WHERE key = 'app.user.id'"
        ))
        .await,
        20
    );
    let find = |tags: &[(&str, &str)], limit: usize| TraceQuery {
        service: Some("checkout".into()),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        limit,
        ..TraceQuery::default()
    };
    let ids = |t: Vec<Vec<Span>>| {
        let mut ids = t.iter().map(|s| s[0].trace_id).collect::<Vec<_>>();
        ids.sort();
        ids
    };
    let mut all_8080: Vec<_> = (1..=19u8).map(B::trace_id).collect();
    all_8080.sort();
    assert_eq!(ids(store.find_traces(&find(&[("server.port", "8080")], 100)).await.unwrap()), all_8080);
    assert_eq!(store.find_traces(&find(&[("server.port", "8080")], 5)).await.unwrap().len(), 5);
    assert_eq!(
        ids(store.find_traces(&find(&[("server.port", "9090")], 100)).await.unwrap()),
        [B::trace_id(20)]
    );
    let both = |port, user| find(&[("server.port", port), ("app.user.id", user)], 100);
    assert_eq!(ids(store.find_traces(&both("8080", "u7")).await.unwrap()), [B::trace_id(7)]);
    assert_eq!(ids(store.find_traces(&both("9090", "u20")).await.unwrap()), [B::trace_id(20)]);
    assert!(store.find_traces(&both("8080", "u20")).await.unwrap().is_empty());
    assert!(store.find_traces(&both("9090", "u7")).await.unwrap().is_empty());
    // Another service's search does not see the operation's value.
    let other = TraceQuery { service: Some("frontend".into()), ..find(&[("server.port", "8080")], 100) };
    assert!(store.find_traces(&other).await.unwrap().is_empty());
}

server_tests!(operation_level_tags {
    single: values_of_a_whole_operation_are_indexed_once,
    cluster: values_of_a_whole_operation_on_two_shards,
    modern: values_of_a_whole_operation_on_current_clickhouse,
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_spans_survive_a_restart_and_reach_clickhouse() {
    let Some(url) = single() else { return };
    let c = buffer_only(config(&url, None));
    let store = open(c.clone()).await;
    store.write(vec![B::new(7, 1).service("buffered").build()]).await.unwrap();
    assert_eq!(store.buffered_spans(), 1);
    drop(store); // as after kill -9: nothing was flushed
    let store = open(c).await;
    assert_eq!(store.buffered_spans(), 1, "the buffer is replayed");
    assert_eq!(store.trace(B::trace_id(7)).await.unwrap().unwrap().len(), 1, "replayed spans are readable");
    store.flush_now().await.unwrap();
    assert_eq!(store.buffered_spans(), 0);
    assert_eq!(store.trace(B::trace_id(7)).await.unwrap().unwrap().len(), 1, "delivered once, read once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_delivered_twice_is_read_once() {
    let Some(url) = single() else { return };
    let c = config(&url, None);
    let store = Delivered(open(c.clone()).await);
    let spans = vec![B::new(3, 1).service("a").build(), B::new(3, 2).service("b").parent(1).build()];
    store.write(spans.clone()).await.unwrap();
    store.write(spans).await.unwrap();
    assert_eq!(store.trace(B::trace_id(3)).await.unwrap().unwrap().len(), 2);
    assert_eq!(store.find_traces(&TraceQuery::default()).await.unwrap()[0].len(), 2);
    let deps = store.dependencies(TimeRange::ALL).await.unwrap();
    assert_eq!(deps, [DependencyLink { parent: "a".into(), child: "b".into(), call_count: 1 }]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_naming_both_versions() {
    let Some(url) = single() else { return };
    let c = config(&url, None);
    drop(open(c.clone()).await);
    let client = Client::new(&url, None, None).unwrap();
    client
        .query(
            &format!(
                "INSERT INTO {}.schema_migrations VALUES ({}, now(), 'future')",
                c.database,
                skein_clickhouse::SCHEMA_VERSION + 1
            ),
            &[],
        )
        .await
        .unwrap();
    let e = ClickhouseStore::open(c).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, OpenError::Schema(_))
            && msg.contains(&format!("version {}", skein_clickhouse::SCHEMA_VERSION + 1))
            && msg.contains(&format!("version {}", skein_clickhouse::SCHEMA_VERSION)),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_say_what_to_do() {
    let Some(url) = single() else { return };
    let mut c = config(&url, None);
    c.user = Some("skein".into());
    c.password = Some("wrong".into());
    let msg = ClickhouseStore::open(c.clone()).await.unwrap_err().to_string();
    assert!(msg.contains("--clickhouse-password-file") && msg.contains("\"skein\""), "{msg}");
    assert!(!msg.contains("wrong"), "the password is not shown: {msg}");
    c.password = Some("skein-test-pw".into());
    ClickhouseStore::open(c.clone()).await.expect("the right password works");

    let mut down = config("http://127.0.0.1:1", None);
    down.database = c.database.clone();
    let msg = ClickhouseStore::open(down).await.unwrap_err().to_string();
    assert!(msg.contains("is ClickHouse running") && msg.contains("--clickhouse-url"), "{msg}");

    let msg = ClickhouseStore::open(config(&url, Some("no_such_cluster"))).await.unwrap_err().to_string();
    assert!(msg.contains("no_such_cluster") && msg.contains("remote_servers"), "{msg}");

    let mut bad = config(&url, None);
    bad.database = "x; DROP".into();
    assert!(ClickhouseStore::open(bad).await.unwrap_err().to_string().contains("database name"));
}

server_tests!(retention {
    single: retention_drops_old_day_partitions_only,
    modern: retention_on_current_clickhouse,
});

async fn retention(url: &str, cluster: Option<&str>) {
    let mut c = config(url, cluster);
    c.retention = std::time::Duration::from_secs(2 * 86_400);
    let store = Delivered(open(c.clone()).await);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let day = 86_400_000_000_000u64;
    store.write(vec![B::new(1, 1).times(now - 10 * day, now - 10 * day + 1).build()]).await.unwrap();
    store.write(vec![B::new(2, 1).times(now, now + 1).build()]).await.unwrap();
    store.0.apply_retention().await.unwrap();
    let old_day = ((now - 10 * day) / day) as i64;
    let left = count_on(
        url,
        &format!(
            "SELECT count() FROM system.parts WHERE database = '{}' AND active AND partition_id = formatDateTime(toDate({old_day}), '%Y%m%d')",
            c.database
        ),
    )
    .await;
    assert_eq!(left, 0, "no table keeps a part of the old day");
    let recent = count_on(
        url,
        &format!("SELECT count() FROM system.parts WHERE database = '{}' AND active", c.database),
    )
    .await;
    assert!(recent >= 5, "every table keeps today's part ({recent})");
    assert!(store.trace(B::trace_id(1)).await.unwrap().is_none(), "old trace gone");
    assert!(store.trace(B::trace_id(2)).await.unwrap().is_some(), "recent trace kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_add_delivered_and_buffered_calls() {
    let Some(url) = single() else { return };
    let c = buffer_only(config(&url, None));
    let store = open(c).await;
    let call = |t: u8| vec![B::new(t, 1).service("a").build(), B::new(t, 2).service("b").parent(1).build()];
    store.write(call(1)).await.unwrap();
    store.flush_now().await.unwrap();
    store.write(call(2)).await.unwrap();
    store.write(call(3)).await.unwrap();
    assert_eq!(store.buffered_spans(), 4);
    assert_eq!(
        store.dependencies(TimeRange::ALL).await.unwrap(),
        [DependencyLink { parent: "a".into(), child: "b".into(), call_count: 3 }],
        "one call in ClickHouse and two in the buffer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_directory_in_use_is_refused() {
    let Some(url) = single() else { return };
    let c = config(&url, None);
    let first = open(c.clone()).await;
    let e = ClickhouseStore::open(c.clone()).await.unwrap_err();
    assert!(matches!(e, OpenError::Locked(_)) && e.to_string().contains("--data-dir"), "{e}");
    drop(first);
    open(c).await;
}

/// The RED pre-aggregates of the `red` table (summed by ClickHouse over the inserts of several
/// batches, on every shard) plus this node's buffer equal a recount of the spans.
async fn red_agrees_with_a_recount(url: &str, cluster: Option<&str>) {
    use skein_store::red::RED_CELL_NANOS;
    let store = open(buffer_only(config(url, cluster))).await;
    let spans = skein_store::testdata::spans_over_minutes(0, 900, skein_store::testdata::BASE_TIME);
    let services = vec!["api".to_owned(), "cart".to_owned()];
    let first = skein_store::testdata::BASE_TIME / RED_CELL_NANOS;
    let minutes = first..first + 8;
    let recount = |spans: &[Span], minutes: &std::ops::Range<u64>| {
        skein_store::testdata::red_recount(spans, minutes, &services)
    };
    // Three batches delivered, one still in the buffer.
    for part in spans[..600].chunks(200) {
        store.write(part.to_vec()).await.unwrap();
        store.flush_now().await.unwrap();
    }
    store.write(spans[600..].to_vec()).await.unwrap();
    assert_eq!(store.buffered_spans(), 300);
    let got = store.red(minutes.clone(), &services, true).await.unwrap().expect("a new database keeps them");
    assert!(
        got == recount(&spans, &minutes),
        "{} calls, recount {}",
        got.calls(),
        recount(&spans, &minutes).calls()
    );
    let part = first + 2..first + 4;
    assert!(store.red(part.clone(), &services, true).await.unwrap().unwrap() == recount(&spans, &part));
    // Counts alone: the same calls and errors, no sketches.
    let counts = store.red(minutes.clone(), &["cart".to_owned()], false).await.unwrap().unwrap();
    assert_eq!(counts.series.keys().collect::<Vec<_>>(), ["cart"]);
    assert_eq!(
        counts.calls(),
        recount(&spans, &minutes).series["cart"]
            .values()
            .flatten()
            .flat_map(|c| c.values())
            .map(|c| c.calls)
            .sum::<u64>()
    );
    assert_eq!(counts.calls(), 300);
    store.flush_now().await.unwrap();
    assert!(store.red(minutes.clone(), &services, true).await.unwrap().unwrap() == recount(&spans, &minutes));
}

server_tests!(red_agrees_with_a_recount {
    single: red_pre_aggregates_agree_with_a_recount,
    cluster: red_pre_aggregates_on_two_shards,
    modern: red_pre_aggregates_on_current_clickhouse,
});

/// A database made by schema version 1 holds spans without pre-aggregates: after the
/// migration, minutes before it are counted from spans (`None`), later ones from `red`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_from_version_1_has_pre_aggregates_from_the_migration_on() {
    let Some(url) = single() else { return };
    let c = config(&url, None);
    let client = Client::new(&url, None, None).unwrap();
    for sql in [
        format!("CREATE DATABASE {}", c.database),
        format!(
            "CREATE TABLE {}.schema_migrations (version UInt32, applied_at DateTime, by String) ENGINE = TinyLog",
            c.database
        ),
        format!("INSERT INTO {}.schema_migrations VALUES (1, now() - 86400, 'skein 0.0.0')", c.database),
    ] {
        client.query(&sql, &[]).await.unwrap();
    }
    let store = open(c).await;
    let now_minute =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 60;
    let services = ["api".to_owned()];
    assert!(store.red(now_minute - 120..now_minute + 1, &services, true).await.unwrap().is_none());
    assert!(store.red(now_minute + 2..now_minute + 3, &services, true).await.unwrap().is_some());
}

/// A database made by schema version 2 (its `search` without `resource_id`) is brought up to
/// date at start, on one server and on every shard of a cluster; spans written afterwards are
/// found by their resource attributes, which version 3 indexes once per resource, and spans
/// that only the older `tags` index holds are found too.
async fn upgrade_from_version_2(url: &str, cluster: Option<&str>) {
    let c = config(url, cluster);
    drop(open(c.clone()).await);
    let servers: Vec<String> = match cluster {
        None => vec![url.to_owned()],
        Some(_) => {
            let client = Client::new(url, None, None).unwrap();
            let port = url.rsplit(':').next().unwrap().to_owned();
            let raw = client
                .query(
                    &format!(
                        "SELECT DISTINCT host_address FROM system.clusters WHERE cluster = '{}'",
                        cluster.unwrap()
                    ),
                    &[],
                )
                .await
                .unwrap();
            String::from_utf8(raw).unwrap().lines().map(|h| format!("http://{h}:{port}")).collect()
        }
    };
    for server in &servers {
        let client = Client::new(server, None, None).unwrap();
        let local = if cluster.is_some() { "search_local" } else { "search" };
        let spans_local = if cluster.is_some() { "spans_local" } else { "spans" };
        let mut statements = vec![
            format!("ALTER TABLE {}.{local} DROP COLUMN resource_id", c.database),
            format!("ALTER TABLE {}.{spans_local} DROP COLUMN parent_span_id", c.database),
        ];
        if cluster.is_some() {
            statements.push(format!("ALTER TABLE {}.search DROP COLUMN resource_id", c.database));
            statements.push(format!("ALTER TABLE {}.spans DROP COLUMN parent_span_id", c.database));
        }
        statements.push(format!("DROP TABLE {}.schema_migrations", c.database));
        statements.push(format!(
            "CREATE TABLE {}.schema_migrations (version UInt32, applied_at DateTime, by String) ENGINE = TinyLog",
            c.database
        ));
        statements
            .push(format!("INSERT INTO {}.schema_migrations VALUES (2, now(), 'skein 0.0.0')", c.database));
        for sql in statements {
            client.query(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }
    let store = Delivered(open(c.clone()).await);
    let mut span = B::new(9, 1).service("upgraded").build();
    let mut resource = (*span.resource).clone();
    resource.attributes.push(KeyValue::new("k8s.pod.name", AttrValue::Str("pod-7".into())));
    span.resource = std::sync::Arc::new(resource);
    store.write(vec![span]).await.unwrap();
    let q = |pod: &str| TraceQuery {
        service: Some("upgraded".into()),
        tags: vec![("k8s.pod.name".into(), pod.into())],
        ..TraceQuery::default()
    };
    assert_eq!(store.find_traces(&q("pod-7")).await.unwrap().len(), 1);
    assert!(store.find_traces(&q("pod-8")).await.unwrap().is_empty());
    // A span whose tags only an older version indexed (in `tags`, by trace id) is found too.
    let old = B::new(10, 1).service("upgraded").attr("legacy.key", AttrValue::Str("old".into())).build();
    store.write(vec![old.clone()]).await.unwrap();
    let local = |t: &str| {
        if cluster.is_some() { format!("{}.{t}_local", c.database) } else { format!("{}.{t}", c.database) }
    };
    // Empties the current tag index on every server.
    let truncate_tag_refs = async || {
        for server in &servers {
            Client::new(server, None, None)
                .unwrap()
                .query(&format!("TRUNCATE TABLE {}", local("tag_refs")), &[])
                .await
                .unwrap();
        }
    };
    truncate_tag_refs().await;
    let legacy = TraceQuery { tags: vec![("legacy.key".into(), "old".into())], ..q("pod-7") };
    assert!(store.find_traces(&legacy).await.unwrap().is_empty(), "no index row, no candidate");
    let hex: String = old.trace_id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    Client::new(url, None, None)
        .unwrap()
        .query(
            &format!(
                "INSERT INTO {}.tags VALUES ('legacy.key', 'old', 'upgraded', toDateTime({}), unhex('{hex}'))",
                c.database,
                old.start_time_unix_nano / 1_000_000_000
            ),
            // On a cluster: on its shard before the insert returns.
            &[("insert_distributed_sync", "1")],
        )
        .await
        .unwrap();
    let found = store.find_traces(&legacy).await.unwrap();
    assert_eq!(found.len(), 1, "rows of the older index are searched");
    assert_eq!(found[0][0].trace_id, old.trace_id);
    // And one that schema version 4 indexed (in `trace_tags`, by an 8-byte trace key), alone
    // and together with a tag of the current index.
    let v4 = B::new(11, 1)
        .service("upgraded")
        .attr("legacy.key", AttrValue::Str("v4".into()))
        .attr("new.key", AttrValue::Str("now".into()))
        .build();
    store.write(vec![v4.clone()]).await.unwrap();
    // Empties the current tag index, then puts `new.key` = `value` (only) of trace `trace`
    // into it by a second span of the trace.
    let only_new_key_indexed = async |n: u8, trace: TraceId, value: &str| {
        truncate_tag_refs().await;
        let mut second =
            B::new(n, 2).service("upgraded").attr("new.key", AttrValue::Str(value.into())).build();
        second.trace_id = trace;
        store.write(vec![second]).await.unwrap();
    };
    only_new_key_indexed(11, v4.trace_id, "now").await;
    let v4_key = u64::from_le_bytes(v4.trace_id.as_bytes()[..8].try_into().unwrap());
    Client::new(url, None, None)
        .unwrap()
        .query(
            &format!(
                "INSERT INTO {}.trace_tags VALUES ('legacy.key', 'v4', 'upgraded', toDateTime({}), {v4_key})",
                c.database,
                v4.start_time_unix_nano / 1_000_000_000
            ),
            &[("insert_distributed_sync", "1")],
        )
        .await
        .unwrap();
    let v4_query = |tags: &[(&str, &str)]| TraceQuery {
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..q("pod-7")
    };
    // `legacy.key` = `legacy` finds `trace`, alone and with `new.key` = `new` in either order.
    let found_alone_and_with_new_key = async |legacy: &str, new: &str, trace: TraceId| {
        for tags in [
            &[("legacy.key", legacy)][..],
            &[("legacy.key", legacy), ("new.key", new)],
            &[("new.key", new), ("legacy.key", legacy)],
        ] {
            let found = store.find_traces(&v4_query(tags)).await.unwrap();
            assert_eq!(found.len(), 1, "{tags:?}");
            assert_eq!(found[0][0].trace_id, trace);
        }
    };
    found_alone_and_with_new_key("v4", "now", v4.trace_id).await;
    assert!(
        store.find_traces(&v4_query(&[("legacy.key", "v4"), ("new.key", "then")])).await.unwrap().is_empty()
    );
    // And one that schema versions 5 to 7 indexed (in `tag_index`, by a 4-byte trace key and
    // the trace's slot), alone and together with a tag of the current index (`tag_refs`).
    let v7 = B::new(13, 1)
        .service("upgraded")
        .attr("legacy.key", AttrValue::Str("v7".into()))
        .attr("new.key", AttrValue::Str("v8".into()))
        .build();
    store.write(vec![v7.clone()]).await.unwrap();
    let v7_key = u32::from_le_bytes(v7.trace_id.as_bytes()[..4].try_into().unwrap());
    let v7_tags = count_on(
        url,
        &format!("SELECT count() FROM {}.tag_refs WHERE key = 'legacy.key' AND value = 'v7'", c.database),
    )
    .await;
    assert_eq!(v7_tags, 1, "written into the current index");
    only_new_key_indexed(13, v7.trace_id, "v8").await;
    assert!(store.find_traces(&v4_query(&[("legacy.key", "v7")])).await.unwrap().is_empty(), "no index row");
    Client::new(url, None, None)
        .unwrap()
        .query(
            &format!(
                "INSERT INTO {db}.tag_index SELECT 'legacy.key', 'v7', 'upgraded', toDateTime({}), trace_key, slot \
                 FROM {db}.trace_refs WHERE trace_key = {v7_key} LIMIT 1",
                v7.start_time_unix_nano / 1_000_000_000,
                db = c.database,
            ),
            &[("insert_distributed_sync", "1")],
        )
        .await
        .unwrap();
    found_alone_and_with_new_key("v7", "v8", v7.trace_id).await;
    assert!(
        store.find_traces(&v4_query(&[("legacy.key", "v7"), ("new.key", "v7")])).await.unwrap().is_empty()
    );
    // And one that schema version 8 indexed (in `tag_refs`, the numbers in `idxs` and a long
    // value as it is; version 9 writes the long value's hash), alone and together with a tag
    // that version 9 indexed.
    let long = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let v8 = B::new(14, 1)
        .service("upgraded")
        .attr("legacy.key", AttrValue::Str(long.into()))
        .attr("new.key", AttrValue::Str("v9".into()))
        .build();
    store.write(vec![v8.clone()]).await.unwrap();
    let hashed = count_on(
        url,
        &format!(
            "SELECT count() FROM {}.tag_refs WHERE key = 'legacy.key' AND length(value) = 5 AND startsWith(value, unhex('ff'))",
            c.database
        ),
    )
    .await;
    assert_eq!(hashed, 1, "version 9 writes a long value as its hash");
    found_alone_and_with_new_key(long, "v9", v8.trace_id).await;
    only_new_key_indexed(14, v8.trace_id, "v9").await;
    assert!(store.find_traces(&v4_query(&[("legacy.key", long)])).await.unwrap().is_empty(), "no index row");
    let v8_key = u32::from_le_bytes(v8.trace_id.as_bytes()[..4].try_into().unwrap());
    Client::new(url, None, None)
        .unwrap()
        .query(
            &format!(
                "INSERT INTO {db}.tag_refs (key, value, service, timestamp, idxs, slot) \
                 SELECT 'legacy.key', '{long}', 'upgraded', timestamp, [idx], slot \
                 FROM {db}.trace_refs WHERE trace_key = {v8_key} LIMIT 1",
                db = c.database,
            ),
            &[("insert_distributed_sync", "1")],
        )
        .await
        .unwrap();
    found_alone_and_with_new_key(long, "v9", v8.trace_id).await;
    for server in &servers {
        for (table, column) in [("search", "resource_id"), ("spans", "parent_span_id")] {
            let local = if cluster.is_some() { format!("{table}_local") } else { table.to_owned() };
            let sql = format!(
                "SELECT count() FROM system.columns WHERE database = '{}' AND table = '{local}' AND name = '{column}'",
                c.database
            );
            assert_eq!(count_on(server, &sql).await, 1, "{server}: {local}.{column}");
        }
    }
    // Spans that versions 6 to 8 put in `span_index` (by 4-byte trace key and slot) are found
    // there; and spans that versions before 6 put in `search` (by trace id, with both span
    // ids) are found there, and their calls counted, next to those of version 6 (and
    // `spans.parent_span_id` for the calls).
    let (caller, callee) = (
        B::new(12, 1).service("v5-caller").build(),
        B::new(12, 2).service("v5-callee").name("v5-op").parent(1).build(),
    );
    store.write(vec![caller.clone(), callee.clone()]).await.unwrap();
    let truncate = async |table: &str| {
        for server in &servers {
            Client::new(server, None, None)
                .unwrap()
                .query(&format!("TRUNCATE TABLE {}", local(table)), &[])
                .await
                .unwrap();
        }
    };
    let by_operation = TraceQuery {
        service: Some("v5-callee".into()),
        operation: Some("v5-op".into()),
        ..TraceQuery::default()
    };
    let found = store.find_traces(&by_operation).await.unwrap();
    assert_eq!(found.len(), 1, "found by `span_refs`");
    assert_eq!(found[0][0].trace_id, caller.trace_id);
    truncate("span_refs").await;
    assert!(store.find_traces(&by_operation).await.unwrap().is_empty(), "no index row, no candidate");
    let v8_key = u32::from_le_bytes(callee.trace_id.as_bytes()[..4].try_into().unwrap());
    Client::new(url, None, None)
        .unwrap()
        .query(
            &format!(
                "INSERT INTO {db}.span_index SELECT 'v5-callee', 'v5-op', 2, timestamp, {}, 1000, 0, 0, trace_key, slot \
                 FROM {db}.trace_refs WHERE trace_key = {v8_key} LIMIT 1",
                callee.start_time_unix_nano,
                db = c.database,
            ),
            &[("insert_distributed_sync", "1")],
        )
        .await
        .unwrap();
    let found = store.find_traces(&by_operation).await.unwrap();
    assert_eq!(found.len(), 1, "rows of `span_index` are searched");
    assert_eq!(found[0][0].trace_id, caller.trace_id);
    truncate("span_index").await;
    assert!(store.find_traces(&by_operation).await.unwrap().is_empty(), "no index row, no candidate");
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let rows = [&caller, &callee]
        .iter()
        .map(|sp| {
            format!(
                "('{}', '{}', 2, toDateTime({}), {}, 1000, 0, unhex('{}'), unhex('{}'), unhex('{}'), 0)",
                sp.service_name(),
                sp.name,
                sp.start_time_unix_nano / 1_000_000_000,
                sp.start_time_unix_nano,
                hex(sp.trace_id.as_bytes()),
                hex(sp.span_id.as_bytes()),
                hex(&sp.parent_span_id.map(|p| *p.as_bytes()).unwrap_or([0; 8])),
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    Client::new(url, None, None)
        .unwrap()
        .query(
            &format!(
                "INSERT INTO {}.search (service, name, kind, timestamp, start_ns, duration_ns, error, trace_id, span_id, parent_span_id, resource_id) VALUES {rows}",
                c.database
            ),
            &[("insert_distributed_sync", "1")],
        )
        .await
        .unwrap();
    let found = store.find_traces(&by_operation).await.unwrap();
    assert_eq!(found.len(), 1, "rows of `search` are searched");
    assert_eq!(found[0].len(), 2);
    assert_eq!(found[0][0].trace_id, caller.trace_id);
    // The call is in both: version 6's parent column and the `search` rows (in a real
    // database a span is in one of them only, so each call counts once).
    let links = store.dependencies(TimeRange::ALL).await.unwrap();
    let calls =
        links.iter().find(|l| l.parent == "v5-caller" && l.child == "v5-callee").map(|l| l.call_count);
    assert_eq!(calls, Some(2), "{links:?}");
}

server_tests!(upgrade_from_version_2 {
    single: a_version_2_database_is_upgraded,
    cluster: a_version_2_cluster_is_upgraded_on_every_shard,
});
