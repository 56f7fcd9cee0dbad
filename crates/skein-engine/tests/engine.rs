//! The embedded engine through the `SpanStore` surface: the conformance suite (with spans in
//! the head and in blocks), reopen, retention, corrupt blocks, the checked-in v1 fixture, disk
//! full, and a model-based property test with flush and reopen steps.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use skein_engine::{Engine, EngineConfig};
use skein_model::{AttrValue, Span, SpanKind};
use skein_store::testdata::SpanBuilder as B;
use skein_store::{SpanStore, StoreError, TraceQuery};
use skein_wal::fs::FaultyFs;

fn config(dir: &Path) -> EngineConfig {
    EngineConfig {
        retention: Duration::from_secs(100 * 365 * 24 * 3600), // test spans are from 2024
        ..EngineConfig::new(dir)
    }
}

fn open(dir: &Path) -> Engine {
    Engine::open(config(dir)).unwrap().0
}

/// The engine under the conformance suite; with `flush_every_write`, every write is cut into
/// a block at once, so reads go through blocks instead of the head.
#[derive(Debug)]
struct Tested {
    engine: Engine,
    flush_every_write: bool,
    _dir: tempfile::TempDir,
}

impl Tested {
    fn new(flush_every_write: bool) -> Tested {
        let dir = tempfile::tempdir().unwrap();
        Tested { engine: open(dir.path()), flush_every_write, _dir: dir }
    }
}

#[async_trait::async_trait]
impl SpanStore for Tested {
    async fn write(&self, spans: Vec<Span>) -> Result<(), StoreError> {
        self.engine.write(spans).await?;
        if self.flush_every_write {
            self.engine.flush().await?;
        }
        Ok(())
    }
    async fn trace(&self, id: skein_model::TraceId) -> Result<Option<Vec<Span>>, StoreError> {
        self.engine.trace(id).await
    }
    async fn find_traces(&self, q: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError> {
        self.engine.find_traces(q).await
    }
    async fn services(&self) -> Result<Vec<String>, StoreError> {
        self.engine.services().await
    }
    async fn operations(
        &self,
        s: &str,
        k: Option<SpanKind>,
    ) -> Result<Vec<skein_store::Operation>, StoreError> {
        self.engine.operations(s, k).await
    }
    async fn dependencies(
        &self,
        r: skein_model::TimeRange,
    ) -> Result<Vec<skein_store::DependencyLink>, StoreError> {
        self.engine.dependencies(r).await
    }
    fn stats(&self) -> skein_store::StoreStats {
        self.engine.stats()
    }
    async fn traces(
        &self,
        ids: &[skein_model::TraceId],
    ) -> Result<std::collections::HashMap<skein_model::TraceId, Vec<Span>>, StoreError> {
        self.engine.traces(ids).await
    }
    async fn scan(
        &self,
        range: skein_model::TimeRange,
        max_spans: usize,
        attributes: skein_store::KeepAttribute,
    ) -> Result<skein_store::Scan, StoreError> {
        self.engine.scan(range, max_spans, attributes).await
    }
}

#[tokio::test]
async fn passes_the_conformance_suite_from_the_head() {
    skein_store::conformance::run_all(|| async { Tested::new(false) }).await;
}

#[tokio::test]
async fn passes_the_conformance_suite_from_blocks() {
    skein_store::conformance::run_all(|| async { Tested::new(true) }).await;
}

fn trace(n: u8, spans: u8) -> Vec<Span> {
    (1..=spans)
        .map(|i| {
            let b = B::new(n, i).service(if i == 1 { "front" } else { "back" }).name(format!("op{i}"));
            let b = if i > 1 { b.parent(1) } else { b };
            b.attr("i", AttrValue::Int(i as i64)).build()
        })
        .collect()
}

fn sorted(mut v: Vec<Span>) -> Vec<Span> {
    v.sort_by_key(|s| s.span_id);
    v
}

#[tokio::test]
async fn reopen_recovers_head_from_the_wal_and_blocks_from_disk_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path());
        e.write(trace(1, 3)).await.unwrap();
        e.flush().await.unwrap();
        e.write(trace(2, 2)).await.unwrap();
        // A trace split across a block and the head.
        e.write(vec![B::new(1, 9).service("late").parent(1).build()]).await.unwrap();
        assert_eq!(e.block_count(), 1);
        e.close().await;
    }
    let (e, report) = Engine::open(config(dir.path())).unwrap();
    assert_eq!(report.blocks, 1);
    assert_eq!(report.wal_records_replayed, 2, "only the records no block holds are replayed");
    let t1 = e.trace(B::trace_id(1)).await.unwrap().unwrap();
    assert_eq!(t1.len(), 4, "block part and head part merged");
    assert_eq!(sorted(e.trace(B::trace_id(2)).await.unwrap().unwrap()), sorted(trace(2, 2)));
    e.flush().await.unwrap();
    e.close().await;
    let (e, report) = Engine::open(config(dir.path())).unwrap();
    assert_eq!((report.blocks, report.wal_records_replayed), (2, 0));
    assert_eq!(e.trace(B::trace_id(1)).await.unwrap().unwrap().len(), 4);
    assert_eq!(e.stats().spans_stored, 6);
    // Segments whose records are in blocks are deleted: what is left is the writers' current
    // segments, headers only.
    let wal_segments: Vec<u64> = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .collect();
    assert!(wal_segments.len() <= 3, "{wal_segments:?}");
    assert!(wal_segments.iter().all(|len| *len == skein_wal::SEGMENT_HEADER_LEN), "{wal_segments:?}");
}

#[tokio::test]
async fn retention_deletes_whole_old_blocks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path());
        e.write(trace(1, 2)).await.unwrap();
        e.flush().await.unwrap();
        assert_eq!(e.block_count(), 1);
        e.close().await;
    }
    // Reopened with a retention of one day: the 2024 block is past it.
    let (e, _) =
        Engine::open(EngineConfig { retention: Duration::from_secs(86_400), ..config(dir.path()) }).unwrap();
    e.enforce_retention().unwrap();
    assert_eq!(e.block_count(), 0);
    assert!(e.trace(B::trace_id(1)).await.unwrap().is_none());
    assert_eq!(e.stats().spans_evicted, 2);
    assert_eq!(std::fs::read_dir(dir.path().join("blocks")).unwrap().count(), 0);
}

fn block_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("blocks")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// A data directory with traces 1 and 2 in one block each; returns it and trace 1's block.
async fn two_blocks() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    for n in [1, 2] {
        e.write(trace(n, 2)).await.unwrap();
        e.flush().await.unwrap();
    }
    e.close().await;
    let first = block_files(dir.path())[0].clone();
    (dir, first)
}

#[tokio::test]
async fn a_corrupt_block_is_reported_and_set_aside_and_the_rest_stays_readable() {
    let (dir, first) = two_blocks().await;
    let mut bytes = std::fs::read(&first).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0xff; // inside the index
    std::fs::write(&first, &bytes).unwrap();
    let (e, report) = Engine::open(config(dir.path())).unwrap();
    assert_eq!(report.corrupt_blocks.len(), 1, "{report:?}");
    assert!(report.corrupt_blocks[0].contains("index crc mismatch"), "{report:?}");
    assert!(first.with_extension("blk.corrupt").exists());
    assert!(e.trace(B::trace_id(1)).await.unwrap().is_none());
    assert_eq!(e.trace(B::trace_id(2)).await.unwrap().unwrap().len(), 2);
}

#[tokio::test]
async fn a_corrupt_chunk_skips_only_that_chunk() {
    let (dir, first) = two_blocks().await;
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[3] ^= 0xff; // inside the first (only) chunk
    std::fs::write(&first, &bytes).unwrap();
    let e = open(dir.path());
    assert!(
        e.trace(B::trace_id(1)).await.unwrap().is_none(),
        "the corrupt chunk is skipped, not returned wrong"
    );
    assert_eq!(e.trace(B::trace_id(2)).await.unwrap().unwrap().len(), 2);
    let found =
        e.find_traces(&TraceQuery { service: Some("front".into()), ..TraceQuery::default() }).await.unwrap();
    assert_eq!(found.len(), 1);
}

/// Blocks written by each format version, checked in: later versions must still read them.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Trace 3 of the fixtures from format 4 on: 40 spans, each with its own `order.id`, more values
/// than a chunk's postings list, so they are in the chunk's Bloom filter.
fn fixture_bloom_spans() -> Vec<Span> {
    (1..=40u8)
        .map(|i| {
            B::new(3, i)
                .service("fixture")
                .attr("order.id", AttrValue::Str(format!("order-{i}").into()))
                .build()
        })
        .collect()
}

/// Spans of one name whose attribute values repeat the last ones of their key and name, of
/// every kind a repeat is written for (format 10), with big times and UUIDs.
fn fixture_repeat_spans() -> Vec<Span> {
    (1..=6u8)
        .map(|i| {
            let b = B::new(4, i)
                .service("fixture")
                .name(if i % 2 == 0 { "GET /cart" } else { "SELECT cart" })
                .attr("server.port", AttrValue::Int(8080 + (i as i64 / 5)))
                .attr("http.route", AttrValue::Str("/api/cart".into()))
                .attr("cached", AttrValue::Bool(i < 4))
                .attr("ratio", AttrValue::Double(0.25))
                .attr("session", AttrValue::Str(format!("s-{}", i / 2).into()))
                .attr("request.id", AttrValue::Str(format!("{i:08x}-0b7d-4c1e-9a55-3e2f1d0c9b8a").into()))
                .times(1_700_000_000_000_000_000 + i as u64 * 1_234_567, 1_700_000_000_900_000_000);
            if i > 1 { b.parent(1) } else { b }.build()
        })
        .collect()
}

/// What the fixture of `version` holds.
fn fixture_spans_of(version: u32) -> Vec<Span> {
    let mut spans = fixture_spans();
    if version >= 4 {
        spans.extend(fixture_bloom_spans());
    }
    if version >= 10 {
        spans.extend(fixture_repeat_spans());
    }
    spans
}

fn fixture_spans() -> Vec<Span> {
    let mut spans = trace(1, 3);
    spans.push(
        B::new(2, 1)
            .service("fixture")
            .scope("skein-otel", "0.1.0")
            .kind(SpanKind::Server)
            .attr("list", AttrValue::Array(vec![AttrValue::Str("a".into()), AttrValue::Double(1.5)]))
            .attr("raw", AttrValue::Bytes(vec![0, 255]))
            .event("exception", 7, vec![])
            .link(1, 1)
            .error("boom")
            .build(),
    );
    spans
}

#[tokio::test]
async fn reads_the_checked_in_fixture_of_every_format_version() {
    let current = Path::new(FIXTURES).join(format!("v{}", skein_engine::block::BLOCK_VERSION));
    if std::env::var_os("SKEIN_REGENERATE_FIXTURES").is_some() {
        let _ = std::fs::remove_dir_all(&current);
        let e = open(&current);
        e.write(fixture_spans_of(skein_engine::block::BLOCK_VERSION)).await.unwrap();
        e.flush().await.unwrap();
        e.close().await;
        let _ = std::fs::remove_dir_all(current.join("wal"));
        let _ = std::fs::remove_file(current.join("LOCK"));
    }
    for version in 1..=skein_engine::block::BLOCK_VERSION {
        let fixture = Path::new(FIXTURES).join(format!("v{version}"));
        // Work on a copy: opening creates a WAL and a lock file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blocks")).unwrap();
        for f in block_files(&fixture) {
            std::fs::copy(&f, dir.path().join("blocks").join(f.file_name().unwrap())).unwrap();
        }
        let (e, report) = Engine::open(config(dir.path())).unwrap();
        assert_eq!((report.blocks, report.corrupt_blocks.len()), (1, 0), "v{version}: {report:?}");
        let want = fixture_spans_of(version);
        let ids: BTreeSet<_> = want.iter().map(|s| s.trace_id).collect();
        for id in ids {
            let got = sorted(e.trace(id).await.unwrap().unwrap());
            let expected = sorted(want.iter().filter(|s| s.trace_id == id).cloned().collect());
            assert_eq!(got, expected, "v{version}");
        }
        let services: Vec<String> =
            want.iter().map(|s| s.service_name().to_owned()).collect::<BTreeSet<_>>().into_iter().collect();
        let red = e.red(0..u64::MAX, &services, true).await.unwrap();
        assert_eq!(red.is_some(), version >= 4, "v{version}: RED pre-aggregates from format 4 on");
        if let Some(red) = red {
            assert_eq!(red.calls(), want.len() as u64, "v{version}");
        }
        if version >= 4 {
            let order = |v: &str| TraceQuery {
                service: Some("fixture".into()),
                tags: vec![("order.id".into(), v.into())],
                ..TraceQuery::default()
            };
            assert_eq!(e.find_traces(&order("order-17")).await.unwrap().len(), 1, "v{version}: bloom");
            assert!(e.find_traces(&order("order-99")).await.unwrap().is_empty(), "v{version}");
        }
        let found = e
            .find_traces(&TraceQuery {
                service: Some("fixture".into()),
                tags: vec![("error".into(), "true".into())],
                ..TraceQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "v{version}: search works on old blocks too");
    }
}

/// Compaction copies chunks as they are: a format 6 block's (one zstd frame each) and a new
/// block's (packed column by column, format 7) end up side by side in one block, and every
/// span of both reads back, by id and by search, also after a reopen.
#[tokio::test]
async fn compaction_merges_zstd_and_packed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("blocks")).unwrap();
    for f in block_files(&Path::new(FIXTURES).join("v6")) {
        std::fs::copy(&f, dir.path().join("blocks").join(f.file_name().unwrap())).unwrap();
    }
    let cfg = EngineConfig { compact_min_blocks: 2, ..config(dir.path()) };
    let (e, _) = Engine::open(cfg.clone()).unwrap();
    let fresh: Vec<Span> = (1..=30u8)
        .map(|i| {
            B::new(9, i)
                .service("fresh")
                .attr("order.id", AttrValue::Str(format!("fresh-{i}").into()))
                .build()
        })
        .collect();
    e.write(fresh.clone()).await.unwrap();
    e.flush().await.unwrap();
    let packed =
        block_files(dir.path()).into_iter().map(|f| std::fs::read(f).unwrap()[0]).collect::<BTreeSet<u8>>();
    assert_eq!(
        packed,
        BTreeSet::from([0x28, 0xC7]),
        "a zstd chunk first in the old block, a packed one in the new"
    );
    assert!(e.compact().await.unwrap());
    assert_eq!(block_files(dir.path()).len(), 1, "merged into one block");
    let mut e = e;
    for round in ["compacted", "reopened"] {
        let mut want = fixture_spans_of(6);
        want.extend(fresh.clone());
        let ids: BTreeSet<_> = want.iter().map(|s| s.trace_id).collect();
        for id in ids {
            let got = sorted(e.trace(id).await.unwrap().unwrap());
            let expected = sorted(want.iter().filter(|s| s.trace_id == id).cloned().collect());
            assert_eq!(got, expected, "{round}");
        }
        for (service, value) in [("fixture", "order-17"), ("fresh", "fresh-12")] {
            let q = TraceQuery {
                service: Some(service.into()),
                tags: vec![("order.id".into(), value.into())],
                ..TraceQuery::default()
            };
            assert_eq!(e.find_traces(&q).await.unwrap().len(), 1, "{round}: {value}");
        }
        e.close().await;
        e = Engine::open(cfg.clone()).unwrap().0;
    }
}

/// Searches skip chunks whose postings rule the tags out, and still find what matches.
#[tokio::test]
async fn postings_prune_chunks_without_losing_matches() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let mut spans = Vec::new();
    for n in 1..=50u8 {
        let mut b = B::new(n, 1)
            .service("api")
            .attr("http.response.status_code", AttrValue::Int(if n % 10 == 0 { 500 } else { 200 }))
            .attr("order.id", AttrValue::Str(format!("order-{n}").into()))
            .attr("cache.hit", AttrValue::Bool(n % 2 == 0))
            .kind(if n % 5 == 0 { SpanKind::Client } else { SpanKind::Server });
        if n % 10 == 0 {
            b = b.event("retry", 1, vec![]).error("upstream failed");
        }
        spans.push(b.build());
    }
    e.write(spans).await.unwrap();
    e.flush().await.unwrap();
    let q = |tags: &[(&str, &str)]| TraceQuery {
        service: Some("api".into()),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        limit: 100,
        ..TraceQuery::default()
    };
    assert_eq!(e.find_traces(&q(&[("http.response.status_code", "500")])).await.unwrap().len(), 5);
    assert_eq!(
        e.find_traces(&q(&[("http.response.status_code", "0500")])).await.unwrap().len(),
        5,
        "ints match by value"
    );
    assert_eq!(
        e.find_traces(&q(&[("order.id", "order-7")])).await.unwrap().len(),
        1,
        "high-cardinality keys still match"
    );
    assert!(e.find_traces(&q(&[("http.response.status_code", "404")])).await.unwrap().is_empty());
    assert!(e.find_traces(&q(&[("no.such.key", "x")])).await.unwrap().is_empty());
    assert_eq!(e.find_traces(&q(&[("service.name", "api")])).await.unwrap().len(), 50, "resource attributes");
    assert_eq!(e.find_traces(&q(&[("cache.hit", "true")])).await.unwrap().len(), 25, "booleans");
    assert_eq!(e.find_traces(&q(&[("event", "retry")])).await.unwrap().len(), 5, "event names");
    assert!(e.find_traces(&q(&[("event", "other")])).await.unwrap().is_empty());
    assert_eq!(e.find_traces(&q(&[("span.kind", "client")])).await.unwrap().len(), 10, "synthetic tags");
    assert_eq!(e.find_traces(&q(&[("error", "true")])).await.unwrap().len(), 5);
    assert_eq!(e.find_traces(&q(&[("otel.status_description", "upstream failed")])).await.unwrap().len(), 5);
    // Every span lasts 10 ms: duration ranges rule chunks in or out.
    let dur = |min: Option<u64>, max: Option<u64>| TraceQuery {
        min_duration_nanos: min,
        max_duration_nanos: max,
        ..q(&[])
    };
    assert_eq!(e.find_traces(&dur(Some(10_000_000), Some(10_000_000))).await.unwrap().len(), 50);
    assert!(e.find_traces(&dur(Some(10_000_001), None)).await.unwrap().is_empty());
    assert!(e.find_traces(&dur(None, Some(9_999_999))).await.unwrap().is_empty());
}

/// Keys with more values per chunk than its postings list (client addresses, order ids) are in
/// each chunk's Bloom filter: a search for one such value, or for a value that is nowhere, reads
/// the chunks that may hold it instead of every chunk — in blocks written from the head, in a
/// block whose chunks compaction copied, and after a reopen.
#[tokio::test]
async fn bloom_filters_prune_chunks_for_high_cardinality_values() {
    let dir = tempfile::tempdir().unwrap();
    let (blocks, per_block) = (8u32, 3_000u32);
    let address = |n: u32| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
    let span = |n: u32| {
        let mut s = B::new(1, 1)
            .service("frontend")
            .kind(SpanKind::Server)
            .attr("client.address", AttrValue::Str(address(n).into()))
            .attr("app.order.id", AttrValue::Int(1_000_000 + n as i64))
            .attr("app.weight", AttrValue::Double(0.5))
            .build();
        let mut id = [0u8; 16];
        id[0] = 0x5a;
        id[12..].copy_from_slice(&n.to_be_bytes());
        s.trace_id = skein_model::TraceId::from_bytes(id).unwrap();
        s.start_time_unix_nano += n as u64 * 1_000_000;
        s.end_time_unix_nano += n as u64 * 1_000_000;
        s
    };
    let check = |e: Engine, when: &'static str| async move {
        let reads = |tags: &[(&str, &str)]| {
            let q = TraceQuery {
                service: Some("frontend".into()),
                tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                limit: 20,
                ..TraceQuery::default()
            };
            let e = &e;
            async move {
                let before = e.chunks_read();
                let found = e.find_traces(&q).await.unwrap();
                (found, e.chunks_read() - before)
            }
        };
        // A key whose values are not matched by text (a double) is read everywhere: every chunk.
        let (found, all) = reads(&[("app.weight", "0.25")]).await;
        assert!(found.is_empty(), "{when}");
        assert!(all >= blocks as u64, "{when}: the unindexed search read {all} chunks");
        let n = 5 * per_block + 1_234;
        let (found, read) = reads(&[("client.address", &address(n))]).await;
        assert_eq!(found.len(), 1, "{when}");
        assert_eq!(found[0][0], span(n), "{when}");
        // The chunk that holds it, once to search and once to return the trace, plus a rare
        // false positive of another chunk's filter.
        assert!(read <= 3, "{when}: a client address search read {read} of {all} chunks");
        let (found, read) = reads(&[("app.order.id", &(1_000_000 + n).to_string())]).await;
        assert_eq!(found.len(), 1, "{when}: integers");
        assert!(read <= 3, "{when}: an order id search read {read} chunks");
        let (found, read) = reads(&[("client.address", "192.168.1.1")]).await;
        assert!(found.is_empty(), "{when}");
        assert!(read <= 1, "{when}: a search for a value that is nowhere read {read} chunks");
        let (found, _) = reads(&[("client.address", &address(n)), ("app.order.id", "7")]).await;
        assert!(found.is_empty(), "{when}: both tags on one span");
        e
    };
    let (e, _) = Engine::open(EngineConfig { compact_min_blocks: 2, ..config(dir.path()) }).unwrap();
    for b in 0..blocks {
        e.write((0..per_block).map(|i| span(b * per_block + i)).collect()).await.unwrap();
        e.flush().await.unwrap();
    }
    assert_eq!(e.block_count(), blocks as usize);
    let e = check(e, "written from the head").await;
    assert!(e.compact().await.unwrap());
    assert_eq!(e.block_count(), 1);
    let e = check(e, "compacted").await;
    e.close().await;
    check(open(dir.path()), "reopened").await;
}

async fn check_red(
    e: &Engine,
    services: &[String],
    cases: Vec<(std::ops::Range<u64>, skein_store::red::RedSummary)>,
    when: &str,
) {
    for (minutes, want) in cases {
        let got =
            e.red(minutes.clone(), services, true).await.unwrap().expect("the engine keeps pre-aggregates");
        assert!(got == want, "{when}, minutes {minutes:?}: {} calls, recount {}", got.calls(), want.calls());
    }
}

/// The RED pre-aggregates the engine answers agree exactly with a recount of the spans it holds:
/// from the head, from blocks, after a compaction merged blocks, after a reopen (head replayed
/// from the WAL) and after retention dropped old blocks.
#[tokio::test]
async fn red_pre_aggregates_agree_with_a_recount_through_flush_compaction_reopen_and_retention() {
    use skein_store::red::RED_CELL_NANOS;
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let base = skein_store::testdata::BASE_TIME;
    let old = skein_store::testdata::spans_over_minutes(0, 600, base);
    let recent = skein_store::testdata::spans_over_minutes(10_000, 300, now - 3_600_000_000_000);
    let services: Vec<String> = vec!["api".into(), "cart".into()];
    let recount = |spans: &[Span], minutes: &std::ops::Range<u64>| {
        skein_store::testdata::red_recount(spans, minutes, &services)
    };
    let old_minutes = base / RED_CELL_NANOS..(base + 600 * 397_000_000) / RED_CELL_NANOS + 1;
    // Part of the window only: cells outside it are left out.
    let some_minutes = old_minutes.start + 1..old_minutes.start + 3;
    let recent_minutes = (now - 3_600_000_000_000) / RED_CELL_NANOS..now / RED_CELL_NANOS + 1;
    // Each window, and what a recount of `old` and `recent` spans gives for it.
    let cases = |old_spans: &[Span], recent_spans: &[Span]| {
        vec![
            (old_minutes.clone(), recount(old_spans, &old_minutes)),
            (some_minutes.clone(), recount(old_spans, &some_minutes)),
            (recent_minutes.clone(), recount(recent_spans, &recent_minutes)),
        ]
    };
    let (e, _) = Engine::open(EngineConfig { compact_min_blocks: 2, ..config(dir.path()) }).unwrap();
    e.write(old[..200].to_vec()).await.unwrap();
    check_red(&e, &services, cases(&old[..200], &[]), "in the head").await;
    e.flush().await.unwrap();
    e.write(old[200..400].to_vec()).await.unwrap();
    check_red(&e, &services, cases(&old[..400], &[]), "a block and the head").await;
    e.flush().await.unwrap();
    e.write(old[400..].to_vec()).await.unwrap();
    e.flush().await.unwrap();
    assert!(e.compact().await.unwrap());
    assert_eq!(e.block_count(), 1);
    check_red(&e, &services, cases(&old, &[]), "compacted").await;
    assert!(old.iter().map(|s| s.start_time_unix_nano / RED_CELL_NANOS).collect::<BTreeSet<_>>().len() > 3);
    e.write(recent.clone()).await.unwrap();
    e.close().await;
    // Reopened twice: the recent spans are only in the WAL, replayed into the head.
    let e = open(dir.path());
    let more = skein_store::testdata::spans_over_minutes(20_000, 50, now - 1_800_000_000_000);
    e.write(more.clone()).await.unwrap();
    e.close().await;
    let e = open(dir.path());
    let recent_all: Vec<Span> = recent.iter().chain(&more).cloned().collect();
    check_red(&e, &services, cases(&old, &recent_all), "reopened").await;
    e.flush().await.unwrap();
    e.close().await;
    // A retention of one day drops the block of 2024, and its cells with it.
    let (e, _) =
        Engine::open(EngineConfig { retention: Duration::from_secs(86_400), ..config(dir.path()) }).unwrap();
    e.enforce_retention().unwrap();
    assert!(e.trace(old[0].trace_id).await.unwrap().is_none());
    let got = e.red(old_minutes.clone(), &services, true).await.unwrap().unwrap();
    assert!(got.is_empty(), "retention dropped the old cells: {} calls left", got.calls());
    assert_eq!(
        e.red(recent_minutes.clone(), &services, true).await.unwrap().unwrap(),
        recount(&recent_all, &recent_minutes)
    );
}

#[tokio::test]
async fn disk_full_refuses_ingest_keeps_what_is_stored_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyFs::default();
    let (e, _) = Engine::open(EngineConfig { fs: Arc::new(disk.clone()), ..config(dir.path()) }).unwrap();
    e.write(trace(1, 2)).await.unwrap();
    disk.set_disk_full(true);
    let err = e.write(trace(2, 2)).await.unwrap_err();
    assert!(matches!(err, StoreError::DiskFull(_)), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    let err = e.flush().await.unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(e.trace(B::trace_id(1)).await.unwrap().unwrap().len(), 2, "stored data still readable");
    disk.set_disk_full(false);
    e.write(trace(2, 2)).await.unwrap();
    e.flush().await.unwrap();
    e.close().await;
    let e = open(dir.path());
    assert_eq!(e.trace(B::trace_id(1)).await.unwrap().unwrap().len(), 2);
    assert_eq!(e.trace(B::trace_id(2)).await.unwrap().unwrap().len(), 2);
}

/// A compaction streams its block to a temporary file: when the disk fills up half-way it
/// fails, leaves no file behind and changes nothing; once there is room, it succeeds.
#[tokio::test]
async fn a_compaction_that_runs_out_of_disk_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyFs::default();
    let (e, _) = Engine::open(EngineConfig {
        fs: Arc::new(disk.clone()),
        compact_min_blocks: 2,
        ..config(dir.path())
    })
    .unwrap();
    for n in 1..=3u8 {
        e.write(trace(n, 3)).await.unwrap();
        e.flush().await.unwrap();
    }
    let files = block_files(dir.path());
    assert_eq!(files.len(), 3);
    disk.short_write_then_enospc(100);
    assert!(e.compact().await.is_err(), "the disk filled up");
    assert_eq!(block_files(dir.path()), files, "the blocks are as they were");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for n in 1..=3u8 {
        assert_eq!(e.trace(B::trace_id(n)).await.unwrap().unwrap().len(), 3);
    }
    assert!(e.compact().await.unwrap(), "with room, the compaction runs");
    assert_eq!(e.block_count(), 1);
    for n in 1..=3u8 {
        assert_eq!(sorted(e.trace(B::trace_id(n)).await.unwrap().unwrap()), sorted(trace(n, 3)));
    }
    e.close().await;
}

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<(u8, u8)>),
    Flush,
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => proptest::collection::vec((1u8..6, any::<u8>()), 1..8).prop_map(Op::Write),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Writes, flushes and reopens in any order: every trace reads back exactly as written.
    #[test]
    fn model_with_flush_and_reopen(ops in proptest::collection::vec(op(), 1..20)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut model: std::collections::BTreeMap<u8, Vec<Span>> = Default::default();
            let mut engine = open(dir.path());
            let mut next_span: u32 = 0;
            for op in ops {
                match op {
                    Op::Write(items) => {
                        let mut batch = Vec::new();
                        for (t, salt) in items {
                            next_span += 1;
                            let mut s = B::new(t, 1).service(if salt % 2 == 0 { "even" } else { "odd" }).build();
                            let mut id = [0u8; 8];
                            id[4..].copy_from_slice(&next_span.to_be_bytes());
                            s.span_id = skein_model::SpanId::from_bytes(id).unwrap();
                            s.attributes.push(skein_model::KeyValue::new("salt", AttrValue::Int(salt as i64)));
                            model.entry(t).or_default().push(s.clone());
                            batch.push(s);
                        }
                        engine.write(batch).await.unwrap();
                    }
                    Op::Flush => engine.flush().await.unwrap(),
                    Op::Compact => {
                        engine.compact().await.unwrap();
                    }
                    Op::Reopen => {
                        engine.close().await;
                        engine = open(dir.path());
                    }
                }
                for (t, spans) in &model {
                    let got = engine.trace(B::trace_id(*t)).await.unwrap().unwrap_or_default();
                    prop_assert_eq!(sorted(got), sorted(spans.clone()));
                }
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_second_engine_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = Engine::open(config(dir.path())).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "data directory {} is in use by another skein process; stop it or choose another --data-dir",
            dir.path().display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_faster_than_blocks_are_written_is_refused_not_buffered_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    let slow = FaultyFs::default();
    slow.set_write_atomic_delay(Duration::from_millis(1500));
    let (e, _) = Engine::open(EngineConfig {
        head_max_bytes: 2_000,
        overload_wait: Duration::from_millis(100),
        fs: Arc::new(slow),
        ..config(dir.path())
    })
    .unwrap();
    let mut refused = None;
    let mut accepted = 0u8;
    for n in 1..=200u8 {
        match e.write(trace(n, 3)).await {
            Ok(()) => accepted += 1,
            Err(err) => {
                refused = Some(err);
                break;
            }
        }
    }
    let err = refused.expect("a slow disk must eventually refuse writes");
    assert!(matches!(err, StoreError::Overloaded(_)), "{err}");
    assert!(err.to_string().contains("retry later"), "{err}");
    // Nothing accepted is lost, and once the block is written, writes are accepted again.
    for n in 1..=accepted {
        assert!(e.trace(B::trace_id(n)).await.unwrap().is_some(), "accepted trace {n} readable");
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    e.write(trace(250, 3)).await.unwrap();
}

/// An engine that compacts as soon as two small blocks wait.
fn compacting(dir: &Path) -> Engine {
    Engine::open(EngineConfig { compact_min_blocks: 2, ..config(dir) }).unwrap().0
}

#[tokio::test]
async fn compaction_merges_small_blocks_and_every_span_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let e = compacting(dir.path());
    // Six blocks; trace 1 is split over the first and the fourth.
    let t1 = trace(1, 4);
    e.write(t1[..2].to_vec()).await.unwrap();
    e.flush().await.unwrap();
    for n in [2, 3] {
        e.write(trace(n, 3)).await.unwrap();
        e.flush().await.unwrap();
    }
    e.write(t1[2..].to_vec()).await.unwrap();
    e.flush().await.unwrap();
    for n in [4, 5] {
        e.write(trace(n, 2)).await.unwrap();
        e.flush().await.unwrap();
    }
    assert_eq!(e.block_count(), 6);
    let before: Vec<PathBuf> = block_files(dir.path());
    let stored = e.stats().spans_stored;

    assert!(e.compact().await.unwrap(), "six small blocks are merged");
    assert_eq!(e.block_count(), 1);
    assert!(!e.compact().await.unwrap(), "nothing left to merge");
    let after = block_files(dir.path());
    assert_eq!(after.len(), 1, "the merged blocks' files are deleted: {after:?}");
    assert!(!before.contains(&after[0]));
    assert_eq!(e.stats().spans_stored, stored);
    assert_eq!(
        e.stats().traces_stored,
        5,
        "trace 1, possibly in two chunks of the merged block, counts once"
    );
    assert_eq!(
        sorted(e.trace(B::trace_id(1)).await.unwrap().unwrap()),
        sorted(t1.clone()),
        "a split trace is whole"
    );
    for (n, len) in [(2, 3), (3, 3), (4, 2), (5, 2)] {
        assert_eq!(sorted(e.trace(B::trace_id(n)).await.unwrap().unwrap()), sorted(trace(n, len)));
    }
    let found = e
        .find_traces(&TraceQuery { service: Some("front".into()), limit: 100, ..TraceQuery::default() })
        .await
        .unwrap();
    assert_eq!(found.len(), 5);
    e.close().await;

    let (e, report) = Engine::open(config(dir.path())).unwrap();
    assert_eq!((report.blocks, report.wal_records_replayed), (1, 0));
    assert_eq!(sorted(e.trace(B::trace_id(1)).await.unwrap().unwrap()), sorted(t1));
    assert_eq!(e.stats().spans_stored, stored);
}

/// Compaction copies the compressed chunks of format 2 to 4 blocks as they are and decodes
/// those of format 1 (which have no postings): after merging one block of each, every trace,
/// search and operation is as before, and the v3 block's chunk bytes are in the merged file.
#[tokio::test]
async fn compaction_merges_blocks_of_every_format_version() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("blocks")).unwrap();
    for version in 1..=skein_engine::block::BLOCK_VERSION {
        let from = block_files(&Path::new(FIXTURES).join(format!("v{version}"))).remove(0);
        std::fs::copy(from, dir.path().join("blocks").join(format!("{version:020}.blk"))).unwrap();
    }
    let e = compacting(dir.path());
    assert_eq!(e.block_count(), skein_engine::block::BLOCK_VERSION as usize);
    let stored = e.stats().spans_stored;
    let operations = e.operations("fixture", None).await.unwrap();
    assert!(!operations.is_empty());

    assert!(e.compact().await.unwrap());
    assert_eq!(e.block_count(), 1);
    assert_eq!(e.stats().spans_stored, stored);
    assert_eq!(e.operations("fixture", None).await.unwrap(), operations);
    let want = fixture_spans();
    for id in [B::trace_id(1), B::trace_id(2)] {
        let expected = sorted(want.iter().filter(|s| s.trace_id == id).cloned().collect());
        assert_eq!(sorted(e.trace(id).await.unwrap().unwrap()), expected);
    }
    let error_tag = TraceQuery {
        service: Some("fixture".into()),
        tags: vec![("error".into(), "true".into())],
        ..TraceQuery::default()
    };
    assert_eq!(e.find_traces(&error_tag).await.unwrap().len(), 1, "postings survive the copy");
    let no_match = TraceQuery { tags: vec![("error".into(), "false".into())], ..error_tag.clone() };
    assert!(e.find_traces(&no_match).await.unwrap().is_empty());
    let order = TraceQuery { tags: vec![("order.id".into(), "order-17".into())], ..error_tag.clone() };
    assert_eq!(
        e.find_traces(&order).await.unwrap().len(),
        1,
        "the v4 and v5 chunks' Bloom filters survive the copy"
    );
    // Both chunks with `order.id` values keep filters that rule out a value that is nowhere
    // (the v4 filter after its chunk, the v5 one in the merged block's Bloom section): the
    // search reads no chunk.
    let before = e.chunks_read();
    let absent = TraceQuery { tags: vec![("order.id".into(), "order-99".into())], ..error_tag.clone() };
    assert!(e.find_traces(&absent).await.unwrap().is_empty());
    assert_eq!(e.chunks_read() - before, 0, "the filters ruled every chunk out");
    assert_eq!(sorted(e.trace(B::trace_id(3)).await.unwrap().unwrap()), sorted(fixture_bloom_spans()));

    // The v3 fixture's chunk (everything before its index) appears verbatim in the merged block.
    let v3 = std::fs::read(block_files(&Path::new(FIXTURES).join("v3")).remove(0)).unwrap();
    let index_offset = u64::from_le_bytes(v3[v3.len() - 32..v3.len() - 24].try_into().unwrap()) as usize;
    let merged = std::fs::read(block_files(dir.path()).remove(0)).unwrap();
    assert!(merged.windows(index_offset).any(|w| w == &v3[..index_offset]), "v3 chunk copied");
    e.close().await;

    let (e, report) = Engine::open(config(dir.path())).unwrap();
    assert_eq!((report.blocks, report.corrupt_blocks.len()), (1, 0));
    assert_eq!(e.find_traces(&error_tag).await.unwrap().len(), 1);
}

/// Blocks number their services each in their own order; a compaction that copies chunks must
/// renumber the chunks' service lists and postings, or searches by service and tag would skip
/// the chunks that match.
#[tokio::test]
async fn compaction_keeps_each_services_postings_when_blocks_number_services_differently() {
    let dir = tempfile::tempdir().unwrap();
    let e = compacting(dir.path());
    let span = |n: u8, service: &str, value: &str| {
        B::new(n, 1)
            .service(service)
            .name(format!("{service}-op"))
            .attr("k", AttrValue::Str(value.into()))
            .build()
    };
    for block in [
        vec![span(1, "alpha", "a1"), span(2, "beta", "b1")],
        vec![span(3, "gamma", "g2"), span(4, "beta", "b2")],
        vec![span(5, "gamma", "g3")],
    ] {
        e.write(block).await.unwrap();
        e.flush().await.unwrap();
    }
    let find = |service: &str, value: &str| {
        let q = TraceQuery {
            service: Some(service.into()),
            tags: vec![("k".into(), value.into())],
            limit: 10,
            ..TraceQuery::default()
        };
        let e = &e;
        async move { e.find_traces(&q).await.unwrap().iter().map(|t| t[0].name.clone()).collect::<Vec<_>>() }
    };
    let cases =
        [("alpha", "a1"), ("beta", "b1"), ("beta", "b2"), ("gamma", "g2"), ("gamma", "g3"), ("alpha", "b2")];
    let mut before = Vec::new();
    for (service, value) in cases {
        before.push(find(service, value).await);
    }
    let operations = [
        e.operations("alpha", None).await.unwrap(),
        e.operations("beta", None).await.unwrap(),
        e.operations("gamma", None).await.unwrap(),
    ];

    assert!(e.compact().await.unwrap());
    assert_eq!(e.block_count(), 1);
    for ((service, value), want) in cases.into_iter().zip(&before) {
        assert_eq!(&find(service, value).await, want, "{service} k={value}");
    }
    assert_eq!(before[2], vec!["beta-op".to_owned()]);
    assert!(before[5].is_empty());
    assert_eq!(e.services().await.unwrap(), ["alpha", "beta", "gamma"]);
    for (service, ops) in ["alpha", "beta", "gamma"].into_iter().zip(&operations) {
        assert_eq!(&e.operations(service, None).await.unwrap(), ops);
    }
}

#[tokio::test]
async fn a_compaction_stopped_after_writing_its_block_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let e = compacting(dir.path());
    for n in 1..=3 {
        e.write(trace(n, 2)).await.unwrap();
        e.flush().await.unwrap();
    }
    // Keep copies of the small blocks, compact, then put them back: as if the process died
    // between writing the merged block and deleting the blocks it replaces.
    let saved: Vec<(PathBuf, Vec<u8>)> = block_files(dir.path())
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert!(e.compact().await.unwrap());
    e.close().await;
    for (p, bytes) in &saved {
        std::fs::write(p, bytes).unwrap();
    }
    let (e, report) = Engine::open(config(dir.path())).unwrap();
    assert_eq!(report.compacted_blocks_removed, 3);
    assert_eq!(report.blocks, 1);
    assert_eq!(block_files(dir.path()).len(), 1);
    assert_eq!(e.stats().spans_stored, 6, "no span counted twice");
    for n in 1..=3 {
        assert_eq!(e.trace(B::trace_id(n)).await.unwrap().unwrap().len(), 2);
    }
}

/// The serial work the engine reports (for the bench's scaling figures) grows with what it
/// does: writes count time under the head's lock and on the WAL writer. Block writes and
/// compactions, which run as concurrent tasks, count as background work. Every part is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_and_background_work_are_counted_by_part() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(EngineConfig { compact_min_blocks: 2, ..config(dir.path()) }).unwrap();
    let parts = |e: &Engine| {
        let stats = e.stats();
        stats
            .serial_nanos
            .into_iter()
            .chain(stats.background_nanos)
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let start = parts(&e);
    assert_eq!(
        e.stats().serial_nanos.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        ["head_lock"],
        "every serial part is reported"
    );
    assert_eq!(
        e.stats().background_nanos.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        ["block_writer", "compaction", "wal_writers"],
        "every background part is reported (several WAL writers share the appends)"
    );
    for b in 0..2u8 {
        let spans: Vec<Span> = (1..=200u8).map(|i| B::new(i, b + 1).build()).collect();
        e.write(spans).await.unwrap();
        e.flush().await.unwrap();
    }
    let written = parts(&e);
    for part in ["head_lock", "wal_writers", "block_writer"] {
        assert!(written[part] > start[part], "{part}: {start:?} -> {written:?}");
    }
    assert!(e.compact().await.unwrap());
    assert!(parts(&e)["compaction"] > written["compaction"]);
    e.close().await;

    // With one WAL writer, its thread is serial work.
    let (e, _) = Engine::open(EngineConfig { wal_writers: 1, ..config(dir.path()) }).unwrap();
    e.write(vec![B::new(1, 9).build()]).await.unwrap();
    let serial = e.stats().serial_nanos;
    assert_eq!(serial.iter().map(|(p, _)| *p).collect::<Vec<_>>(), ["head_lock", "wal_writer"]);
    assert!(serial[1].1 > 0);
}

/// A head large enough for many chunks (encoded on several threads at once) reads back
/// exactly, in a block and after a compaction, and every trace is found by id and by tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_chunks_encoded_in_parallel_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (e, _) = Engine::open(EngineConfig { compact_min_blocks: 2, ..config(dir.path()) }).unwrap();
    // About 550 bytes per span as the writer estimates them: 6,000 spans make about six
    // chunks per block, more than the queue of two per core holds.
    let span = |t: u32, i: u8| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&t.to_be_bytes());
        id[15] = 1;
        let mut b = B::new(1, i)
            .service(if t.is_multiple_of(3) { "a" } else { "b" })
            .attr("trace.no", AttrValue::Int(t.into()));
        for k in 0..20 {
            b = b.attr(&format!("k{k}"), AttrValue::Int(i64::from(t) * 20 + k));
        }
        Span { trace_id: skein_model::TraceId::from_bytes(id).unwrap(), ..b.build() }
    };
    let mut all = Vec::new();
    for half in 0..2u32 {
        let spans: Vec<Span> =
            (half * 3000..(half + 1) * 3000).flat_map(|t| [span(t, 1), span(t, 2)]).collect();
        all.extend(spans.clone());
        e.write(spans).await.unwrap();
        e.flush().await.unwrap();
    }
    let check = |e: Engine, when: &'static str| {
        let all = all.clone();
        async move {
            for t in [0u32, 1, 1499, 2999, 3000, 4321, 5999] {
                let want: Vec<&Span> =
                    all.iter().filter(|s| s.trace_id.as_bytes()[..4] == t.to_be_bytes()).collect();
                let mut got = e.trace(want[0].trace_id).await.unwrap().expect(when);
                got.sort_by_key(|s| s.span_id);
                assert_eq!(got.iter().collect::<Vec<_>>(), want, "{when}: trace {t}");
                let q =
                    TraceQuery { tags: vec![("trace.no".into(), t.to_string())], ..TraceQuery::default() };
                assert_eq!(e.find_traces(&q).await.unwrap().len(), 1, "{when}: search {t}");
            }
            e
        }
    };
    let e = check(e, "in blocks").await;
    assert!(e.compact().await.unwrap());
    check(e, "compacted").await;
}

/// Format 6: a block's trace index stays on disk, and the open block keeps the first id of each
/// page of 128 entries and a filter of 8 bits per trace, not an entry per trace; every trace is
/// still found, and an absent one is not.
#[tokio::test]
async fn the_trace_index_stays_on_disk_and_finds_every_trace() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let id = |n: u32| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
        b[12..].copy_from_slice(&(n + 1).to_be_bytes());
        skein_model::TraceId::from_bytes(b).unwrap()
    };
    let spans: Vec<Span> = (0..20_000u32)
        .map(|n| {
            let span_id = skein_model::SpanId::from_bytes((n as u64 + 1).to_be_bytes()).unwrap();
            B::new(1, 1).service("many").ids(id(n), span_id, None).build()
        })
        .collect();
    e.write(spans).await.unwrap();
    e.flush().await.unwrap();
    assert_eq!(e.block_count(), 1);
    let stats = e.stats();
    let index = stats.memory_bytes.iter().find(|(part, _)| *part == "trace_index").unwrap().1;
    // The first key and (format 10) the end of each page of 128 entries, and a filter of 8 bits
    // per trace: 1.2 bytes per trace (6 in format 5).
    assert!(
        index <= 20_000 / 128 * (16 + 8) + 20_000 + 128,
        "{index} bytes of trace index in memory for 20,000 traces"
    );
    for n in (0..20_000).step_by(997).chain([19_999]) {
        let got = e.trace(id(n)).await.unwrap().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].trace_id, id(n));
    }
    assert!(e.trace(id(20_001)).await.unwrap().is_none());
    e.close().await;
}

/// What the blocks keep of their indexes that grows with their spans (postings, trace filters,
/// column dictionaries) stays within `index_memory_bytes`, however many blocks there are: with
/// a budget of a third of what they would keep, searches (by listed, Bloom-filtered and absent
/// values) and lookups by id answer exactly as with every part in memory, the parts let go read
/// from the blocks' files again — before and after a reopen, and after a compaction.
#[tokio::test]
async fn the_blocks_indexes_stay_within_their_memory_budget() {
    let (blocks, per_block) = (12u32, 2_000u32);
    let address = |n: u32| format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
    let trace_id = |n: u32| {
        let mut id = [0u8; 16];
        id[0] = 0x7b;
        id[4..8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
        id[12..].copy_from_slice(&n.to_be_bytes());
        skein_model::TraceId::from_bytes(id).unwrap()
    };
    let span = |n: u32| {
        let mut s = B::new(1, 1)
            .service(["frontend", "checkout", "cart"][(n % 3) as usize])
            .kind(SpanKind::Server)
            .attr("client.address", AttrValue::Str(address(n).into()))
            .attr("http.route", AttrValue::Str(format!("/api/{}", n % 7).into()))
            .attr("app.tier", AttrValue::Int((n % 4) as i64))
            .build();
        s.trace_id = trace_id(n);
        s.start_time_unix_nano += n as u64 * 1_000_000;
        s.end_time_unix_nano += n as u64 * 1_000_000;
        s
    };
    let part = |e: &Engine, name: &str| -> u64 {
        e.stats().memory_bytes.iter().find(|(p, _)| *p == name).unwrap().1
    };
    let held = |e: &Engine| part(e, "postings");
    let fill = |budget: u64| {
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            EngineConfig { index_memory_bytes: budget, compact_min_blocks: 1_000, ..config(dir.path()) };
        (dir, cfg)
    };
    // Every answer the test asks for, in order.
    let answers = |e: Engine| async move {
        let mut out: Vec<String> = Vec::new();
        let before = e.chunks_read();
        let q = |service: &str, tags: &[(&str, String)]| TraceQuery {
            service: Some(service.into()),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            limit: 50,
            ..TraceQuery::default()
        };
        for n in [0u32, 4_321, 11_999, 23_999] {
            let found = e
                .find_traces(&q(
                    ["frontend", "checkout", "cart"][(n % 3) as usize],
                    &[("client.address", address(n))],
                ))
                .await
                .unwrap();
            assert_eq!(found.len(), 1, "client address of span {n}");
            out.push(format!("{:?}", found.iter().map(|t| t[0].trace_id).collect::<Vec<_>>()));
            let got = e.trace(trace_id(n)).await.unwrap().unwrap();
            assert_eq!(got, vec![span(n)]);
        }
        assert!(e.trace(trace_id(per_block * blocks + 5)).await.unwrap().is_none());
        for (service, route, tier) in [("cart", 3, 1), ("frontend", 0, 3), ("checkout", 6, 0)] {
            let found = e
                .find_traces(&q(
                    service,
                    &[("http.route", format!("/api/{route}")), ("app.tier", tier.to_string())],
                ))
                .await
                .unwrap();
            assert!(!found.is_empty(), "{service} {route} {tier}");
            out.push(format!("{:?}", found.iter().map(|t| t[0].trace_id).collect::<Vec<_>>()));
        }
        assert!(
            e.find_traces(&q("cart", &[("client.address", "192.168.0.1".into())])).await.unwrap().is_empty()
        );
        assert!(e.find_traces(&q("cart", &[("http.route", "/nowhere".into())])).await.unwrap().is_empty());
        // As many chunks read: the postings read again prune as those kept did.
        out.push(format!("{} chunks read", e.chunks_read() - before));
        (e, out)
    };

    let (_all_dir, cfg) = fill(u64::MAX / 4);
    let (e, _) = Engine::open(cfg).unwrap();
    for b in 0..blocks {
        e.write((0..per_block).map(|i| span(b * per_block + i)).collect()).await.unwrap();
        e.flush().await.unwrap();
    }
    assert_eq!(e.block_count(), blocks as usize);
    let everything = held(&e);
    let trace_index = part(&e, "trace_index");
    let (e, want) = answers(e).await;
    assert_eq!(held(&e), everything, "nothing is let go without a budget");
    e.close().await;

    let budget = everything / 3;
    let (dir, cfg) = fill(budget);
    let (e, _) = Engine::open(cfg.clone()).unwrap();
    for b in 0..blocks {
        e.write((0..per_block).map(|i| span(b * per_block + i)).collect()).await.unwrap();
        e.flush().await.unwrap();
        assert!(held(&e) <= budget, "{} bytes of postings kept over a budget of {budget}", held(&e));
    }
    let (e, got) = answers(e).await;
    assert_eq!(got, want, "within the budget");
    assert!(held(&e) <= budget && held(&e) > 0, "{} of {budget}", held(&e));
    // Trace filters are let go too (the first keys of the trace section's pages stay).
    assert!(part(&e, "trace_index") < trace_index, "{} of {trace_index}", part(&e, "trace_index"));
    e.close().await;

    let (e, _) = Engine::open(cfg.clone()).unwrap();
    assert!(held(&e) <= budget, "reopened: {} of {budget}", held(&e));
    let (e, got) = answers(e).await;
    assert_eq!(got, want, "reopened");
    e.close().await;

    let (e, _) = Engine::open(EngineConfig { compact_min_blocks: 2, ..cfg }).unwrap();
    while e.compact().await.unwrap() {}
    assert!(e.block_count() < blocks as usize);
    assert!(held(&e) <= budget, "compacted: {} of {budget}", held(&e));
    let (e, got) = answers(e).await;
    assert_eq!(got, want, "compacted");
    e.close().await;
    drop(dir);
}
