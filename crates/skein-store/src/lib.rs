//! Storage for Skein: the [`SpanStore`] trait every backend implements, the query types,
//! the one definition of "does this span match a search" ([`SpanMatcher`]), an in-memory
//! backend ([`MemoryStore`]), the binary span encoding backends share ([`codec`]) and the
//! `conformance` suite (feature `testsuite`) that every backend must pass.
//!
//! This crate knows nothing of wire formats (OTLP, Jaeger JSON) or of files.
#![forbid(unsafe_code)]

use async_trait::async_trait;
use skein_model::{AttrValue, Span, SpanKind, TimeRange, TraceId};

pub mod codec;
#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
mod matcher;
mod memory;
pub mod red;
#[cfg(any(test, feature = "testsuite"))]
pub mod testdata;

pub use matcher::{SpanMatcher, synthetic_tags, synthetic_tags_of};
pub use memory::{MemoryStore, MemoryStoreConfig};

/// Why a store could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store is over capacity for now; the caller should retry later (OTLP throttling).
    #[error("storage overloaded: {0}")]
    Overloaded(String),
    /// The store cannot serve requests at all (closed, disk gone).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The disk is full: nothing was written; writes succeed again once space is freed.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Anything else.
    #[error("storage error: {0}")]
    Internal(String),
}

/// Whether a failed storage call was reading or writing: overload refuses a write with
/// "slow down" but makes a read unavailable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl StoreError {
    /// The one mapping of storage errors to protocol answers, for every HTTP and gRPC layer:
    /// the HTTP status (OTLP throttling 429 for an overloaded write, 503 when unavailable,
    /// 500 otherwise).
    pub fn http_status(&self, access: Access) -> u16 {
        match (self, access) {
            (StoreError::Overloaded(_), Access::Write) => 429,
            (StoreError::Overloaded(_) | StoreError::Unavailable(_) | StoreError::DiskFull(_), _) => 503,
            (StoreError::Internal(_), _) => 500,
        }
    }

    /// The gRPC status code: `RESOURCE_EXHAUSTED` (8, also gRPC's code for "the file system is
    /// out of space"), `UNAVAILABLE` (14), `INTERNAL` (13).
    pub fn grpc_code(&self) -> i32 {
        match self {
            StoreError::Overloaded(_) | StoreError::DiskFull(_) => 8,
            StoreError::Unavailable(_) => 14,
            StoreError::Internal(_) => 13,
        }
    }

    /// Seconds a client should wait before retrying; `None` when retrying will not help.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            StoreError::Overloaded(_) => Some(1),
            StoreError::Unavailable(_) => Some(5),
            // Space comes back when someone frees it or retention drops old data: retry, slowly.
            StoreError::DiskFull(_) => Some(30),
            StoreError::Internal(_) => None,
        }
    }

    /// The `reason` label of the refused-spans metric.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            StoreError::Overloaded(_) => "throttled",
            StoreError::DiskFull(_) => "disk_full",
            _ => "storage_error",
        }
    }
}

/// A search for traces, in the terms of the Jaeger API.
///
/// A trace matches when **one** of its spans satisfies every given condition at once.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub operation: Option<String>,
    /// `key=value` pairs; a pair matches a span attribute, a resource attribute, an event
    /// attribute, or one of the [`synthetic_tags`] (`span.kind`, `error`, …).
    pub tags: Vec<(String, String)>,
    pub min_duration_nanos: Option<u64>,
    pub max_duration_nanos: Option<u64>,
    /// The matching span's start time must lie in this range.
    pub time: TimeRange,
    /// At most this many traces, newest (by trace start) first.
    pub limit: usize,
}

impl Default for TraceQuery {
    fn default() -> Self {
        TraceQuery {
            service: None,
            operation: None,
            tags: Vec::new(),
            min_duration_nanos: None,
            max_duration_nanos: None,
            time: TimeRange::ALL,
            limit: 20,
        }
    }
}

/// An operation (span name) of a service, with the kind of its spans.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Operation {
    pub name: String,
    pub span_kind: SpanKind,
}

/// Calls from one service to another, counted from parent/child spans.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
}

/// Traces the default [`SpanStore::scan`] reads at most (whole traces through
/// `find_traces`, which holds them all at once).
pub const DEFAULT_SCAN_TRACES: usize = 10_000;

/// Which span attributes a [`SpanStore::scan`] keeps, by key.
pub type KeepAttribute = for<'a> fn(&'a str) -> bool;

/// What [`SpanStore::scan`] keeps of a span: its place in the trace, timing, kind, name,
/// resource, how many links it has, and the attributes the caller asked for. About half the
/// size of a [`Span`], so an analysis over a million spans stays in a few hundred MiB.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanSpan {
    pub trace_id: TraceId,
    pub span_id: skein_model::SpanId,
    pub parent_span_id: Option<skein_model::SpanId>,
    pub name: skein_model::Str,
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    /// Status Error.
    pub error: bool,
    /// The kept attributes, encoded as [`codec::Writer::attrs`] writes them: a few bytes each
    /// instead of a `KeyValue` and its strings. Read them with [`ScanSpan::attribute`] and
    /// [`ScanSpan::str_attribute`].
    pub attributes: Box<[u8]>,
    pub links: u32,
    pub resource: std::sync::Arc<skein_model::Resource>,
}

impl ScanSpan {
    /// What a scan keeps of `span`: the attributes whose key `keep` accepts, and nothing of its
    /// events or other attributes (they are not copied).
    pub fn of(span: &Span, keep: KeepAttribute) -> ScanSpan {
        ScanSpan {
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            name: span.name.clone(),
            kind: span.kind,
            start_time_unix_nano: span.start_time_unix_nano,
            end_time_unix_nano: span.end_time_unix_nano,
            error: span.status.code == skein_model::StatusCode::Error,
            attributes: {
                // No kept attribute: no bytes at all (and no allocation), read as a count of 0.
                let kept = span.attributes.iter().filter(|kv| keep(&kv.key));
                match kept.clone().count() {
                    0 => Box::default(),
                    n => {
                        let mut w = codec::Writer::default();
                        w.varint(n as u64);
                        for kv in kept {
                            w.str(&kv.key);
                            w.value(&kv.value);
                        }
                        w.buf.into_boxed_slice()
                    }
                }
            },
            links: span.links.len() as u32,
            resource: std::sync::Arc::clone(&span.resource),
        }
    }

    /// The span's service (`service.name` of its resource).
    pub fn service_name(&self) -> &str {
        self.resource.service_name()
    }

    /// Finds the kept attribute `key` and hands the reader, positioned at its value, to `read`.
    fn find<'a, T>(&'a self, key: &str, read: impl FnOnce(&mut codec::Reader<'a>) -> Option<T>) -> Option<T> {
        let mut r = codec::Reader { buf: &self.attributes, pos: 0 };
        if r.buf.is_empty() {
            return None;
        }
        for _ in 0..r.count().ok()? {
            if r.text().ok()? == key {
                return read(&mut r);
            }
            // Step over the value; a string is not copied to be skipped.
            if r.buf.get(r.pos) == Some(&1) {
                r.pos += 1;
                r.text().ok()?;
            } else {
                r.value(0).ok()?;
            }
        }
        None
    }

    /// The value of the kept attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<AttrValue> {
        self.find(key, |r| r.value(0).ok())
    }

    /// The value of the kept attribute `key` when it is a string, borrowed.
    pub fn str_attribute(&self, key: &str) -> Option<&str> {
        self.find(key, |r| match r.u8().ok()? {
            1 => r.text().ok(),
            _ => None,
        })
    }
}

/// What [`SpanStore::scan`] read.
#[derive(Debug, Default)]
pub struct Scan {
    pub traces: std::collections::HashMap<TraceId, Vec<ScanSpan>>,
    /// How many spans `traces` holds.
    pub spans: usize,
    /// There were more than `max_spans` spans.
    pub truncated: bool,
}

/// Counters a backend reports for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub spans_stored: u64,
    pub traces_stored: u64,
    /// Spans dropped to stay within the store's bounds since start.
    pub spans_evicted: u64,
    pub traces_evicted: u64,
    /// Storage files (blocks) on disk; 0 for stores without files.
    pub blocks: u64,
    /// Blocks small enough to be merged by a compaction that has not run yet.
    pub blocks_awaiting_compaction: u64,
    /// Nanoseconds of serial work since start, by part (work under an exclusive lock, or done
    /// by one thread for every span): what bounds how ingest scales with cores. Empty for
    /// stores that do not measure it.
    pub serial_nanos: Vec<(&'static str, u64)>,
    /// Nanoseconds of CPU time of background work since start, by part (for the embedded
    /// engine: block writes and compactions, outside their chunk encoding): work that runs as
    /// concurrent tasks, so not serial. Empty for stores that do not measure it.
    pub background_nanos: Vec<(&'static str, u64)>,
    /// Bytes of memory the store holds for what it has stored, by part (for the embedded
    /// engine: its blocks' trace-id index, postings, chunk tables and kept Bloom filters):
    /// what grows with the data. Empty for stores that do not measure it.
    pub memory_bytes: Vec<(&'static str, u64)>,
}

/// An OTLP/protobuf export request as a receiver got it (see [`SpanStore::write_request`]).
#[derive(Clone, Copy, Debug)]
pub struct OtlpRequest<'a> {
    /// The `ExportTraceServiceRequest`'s protobuf bytes, uncompressed.
    pub protobuf: &'a [u8],
    /// The body as it came over the wire, when it came compressed in a coding a store may keep
    /// as it is: decompressed, it is `protobuf` exactly.
    pub compressed: Option<Compressed<'a>>,
}

impl<'a> OtlpRequest<'a> {
    /// A request that came uncompressed (or whose compressed form is not kept).
    pub fn plain(protobuf: &'a [u8]) -> Self {
        OtlpRequest { protobuf, compressed: None }
    }
}

/// A request body as it came compressed: the coding and the compressed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressed<'a> {
    /// gzip (RFC 1952; members one after another decompress to their bytes one after another).
    Gzip(&'a [u8]),
    /// zstd (RFC 8878; frames one after another, likewise).
    Zstd(&'a [u8]),
}

/// A place to keep spans and find them again. Every backend passes the `conformance` suite.
#[async_trait]
pub trait SpanStore: std::fmt::Debug + Send + Sync + 'static {
    /// Stores a batch. When this returns `Ok`, the spans are as durable as the backend
    /// promises and visible to every read that starts afterwards.
    async fn write(&self, spans: Vec<Span>) -> Result<(), StoreError>;

    /// Stores a batch decoded from `request`, an OTLP/protobuf `ExportTraceServiceRequest`
    /// of which `spans` are every span: none was rejected. Stores that log what they store may
    /// log the request as it came instead of encoding the spans again (the embedded engine's
    /// WAL does); the default stores `spans`.
    async fn write_request(&self, spans: Vec<Span>, request: OtlpRequest<'_>) -> Result<(), StoreError> {
        let _ = request;
        self.write(spans).await
    }

    /// All spans of one trace, in no particular order; `None` when none are stored.
    async fn trace(&self, id: TraceId) -> Result<Option<Vec<Span>>, StoreError>;

    /// The spans of each of `ids` that is stored. The default asks trace by trace; stores
    /// that can read neighbouring traces together (the embedded engine) override it.
    async fn traces(
        &self,
        ids: &[TraceId],
    ) -> Result<std::collections::HashMap<TraceId, Vec<Span>>, StoreError> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for &id in ids {
            if let Some(spans) = self.trace(id).await? {
                found.insert(id, spans);
            }
        }
        Ok(found)
    }

    /// Traces matching the query, newest first, each with all its spans.
    async fn find_traces(&self, query: &TraceQuery) -> Result<Vec<Vec<Span>>, StoreError>;

    /// Every service that has spans stored, sorted.
    async fn services(&self) -> Result<Vec<String>, StoreError>;

    /// The operations of a service, sorted; only those of `kind` when given.
    async fn operations(&self, service: &str, kind: Option<SpanKind>) -> Result<Vec<Operation>, StoreError>;

    /// Service-to-service calls among spans that start in `range`, sorted.
    async fn dependencies(&self, range: TimeRange) -> Result<Vec<DependencyLink>, StoreError>;

    /// Counters for monitoring; cheap to call.
    fn stats(&self) -> StoreStats;

    /// Every span that starts in `range`, and possibly others stored beside them (a whole
    /// analysis reads everything once instead of trace by trace), grouped by trace and kept
    /// as [`ScanSpan`]s with only the attributes whose key `attributes` accepts. At most `max_spans`, with `truncated` set when there were more. A trace may be
    /// incomplete (its other spans stored elsewhere), and a span may come twice (at-least-once
    /// delivery).
    ///
    /// The default reads whole traces through [`SpanStore::find_traces`], the newest
    /// [`DEFAULT_SCAN_TRACES`] at most; stores with a cheaper sequential read (the embedded
    /// engine) override it.
    async fn scan(
        &self,
        range: TimeRange,
        max_spans: usize,
        attributes: KeepAttribute,
    ) -> Result<Scan, StoreError> {
        let query =
            TraceQuery { time: range, limit: max_spans.clamp(1, DEFAULT_SCAN_TRACES), ..Default::default() };
        let traces = self.find_traces(&query).await?;
        let mut scan = Scan { truncated: traces.len() >= query.limit, ..Scan::default() };
        for trace in traces {
            if scan.spans + trace.len() > max_spans {
                scan.truncated = true;
                break;
            }
            scan.spans += trace.len();
            let id = trace[0].trace_id;
            scan.traces.insert(id, trace.iter().map(|s| ScanSpan::of(s, attributes)).collect());
        }
        Ok(scan)
    }

    /// RED pre-aggregates ([`red::RedSummary`]) of `services` for the minutes in `minutes`
    /// (span start / 60 s), with latency sketches when `latency` (empty ones otherwise), or
    /// `None` when the store does not keep them for all of that range: the caller then counts
    /// from a [`SpanStore::scan`]. The default keeps none.
    async fn red(
        &self,
        minutes: std::ops::Range<u64>,
        services: &[String],
        latency: bool,
    ) -> Result<Option<red::RedSummary>, StoreError> {
        let _ = (minutes, services, latency);
        Ok(None)
    }

    /// Moves buffered data to its long-term form (the engine writes its head into a block).
    /// Called at shutdown; stores without such a buffer do nothing.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Counts parent→child service calls within one trace's spans (shared by backends that
/// compute dependencies from whole traces).
pub fn count_dependencies<'a>(
    spans: impl IntoIterator<Item = &'a Span> + Clone,
    range: TimeRange,
    out: &mut std::collections::BTreeMap<(String, String), u64>,
) {
    let by_id: std::collections::HashMap<_, _> = spans.clone().into_iter().map(|s| (s.span_id, s)).collect();
    for span in spans {
        if !range.contains(span.start_time_unix_nano) {
            continue;
        }
        let Some(parent) = span.parent_span_id.and_then(|p| by_id.get(&p)) else {
            continue;
        };
        let (from, to) = (parent.service_name(), span.service_name());
        if from != to {
            *out.entry((from.to_owned(), to.to_owned())).or_default() += 1;
        }
    }
}

/// Turns counted pairs into sorted [`DependencyLink`]s.
pub fn dependency_links(counts: std::collections::BTreeMap<(String, String), u64>) -> Vec<DependencyLink> {
    counts
        .into_iter()
        .map(|((parent, child), call_count)| DependencyLink { parent, child, call_count })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_errors_map_to_the_otlp_answers() {
        let over = StoreError::Overloaded("x".into());
        let down = StoreError::Unavailable("x".into());
        let bug = StoreError::Internal("x".into());
        let row = |e: &StoreError| {
            (e.http_status(Access::Write), e.http_status(Access::Read), e.grpc_code(), e.retry_after_secs())
        };
        assert_eq!(row(&over), (429, 503, 8, Some(1)), "overload: throttle writes, retry soon");
        assert_eq!(row(&down), (503, 503, 14, Some(5)));
        assert_eq!(row(&bug), (500, 500, 13, None), "an internal error is not retryable");
        assert_eq!((over.metric_reason(), down.metric_reason()), ("throttled", "storage_error"));
        let full = StoreError::DiskFull("x".into());
        assert_eq!(row(&full), (503, 503, 8, Some(30)), "disk full: retryable, slowly, named as such");
        assert_eq!(full.metric_reason(), "disk_full");
    }
}

#[cfg(test)]
mod scan_span_tests {
    use super::*;
    use crate::testdata::SpanBuilder;

    #[test]
    fn kept_attributes_are_read_back_by_key() {
        let span = SpanBuilder::new(1, 1)
            .attr("server.address", AttrValue::Str("cart.local".into()))
            .attr("server.port", AttrValue::Int(8080))
            .attr("http.route", AttrValue::Str("/cart/{user}".into()))
            .attr("secret", AttrValue::Str("not kept".into()))
            .build();
        let s = ScanSpan::of(&span, |k| k != "secret");
        assert_eq!(s.str_attribute("server.address"), Some("cart.local"));
        assert_eq!(s.str_attribute("http.route"), Some("/cart/{user}"));
        assert_eq!(s.attribute("server.port"), Some(AttrValue::Int(8080)));
        assert_eq!(s.str_attribute("server.port"), None, "not a string");
        assert_eq!(s.attribute("secret"), None, "not kept");
        assert_eq!(s.attribute("missing"), None);
        let bare = ScanSpan::of(&SpanBuilder::new(1, 2).build(), |_| true);
        assert!(bare.attributes.is_empty(), "no attributes, no bytes");
        assert_eq!(bare.attribute("server.address"), None);
    }
}
