//! Prometheus metrics of the server (`GET /metrics`).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use skein_store::SpanStore;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub protocol: &'static str,
    /// `invalid` (bad span or request), `too_large`, `throttled`, `disk_full`, `storage_error`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

/// The labels of the span metrics series: those of the OpenTelemetry Collector's spanmetrics
/// connector, so dashboards and Jaeger's Prometheus-backed Monitor tab read them unchanged.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    pub service_name: String,
    pub span_name: String,
    pub span_kind: &'static str,
    pub status_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service_name: String,
}

/// The span name that operations past `--span-metrics-max-operations` are counted under.
pub const OTHER_OPERATION: &str = "_other";

/// Latency buckets in milliseconds: the spanmetrics connector's defaults.
const DURATION_BUCKETS_MS: [f64; 16] = [
    2.0, 4.0, 6.0, 8.0, 10.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1000.0, 1400.0, 2000.0, 5000.0, 10_000.0,
    15_000.0,
];

type HistogramFamily = Family<SpanLabels, Histogram, fn() -> Histogram>;

/// RED series of the stored spans (`--span-metrics`): calls and a duration histogram per
/// service, span name, kind and status. At most `max_operations` span names per service get
/// series of their own; the others are counted under [`OTHER_OPERATION`], and how many spans
/// were folded so is counted too.
#[derive(Clone, Debug)]
pub struct SpanMetrics {
    calls: Family<SpanLabels, Counter>,
    duration: HistogramFamily,
    folded: Family<ServiceLabels, Counter>,
    /// Per service, the span names that have series of their own.
    names: Arc<std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<String>>>>,
    max_operations: usize,
}

/// One batch's spans, counted before they are stored (the store takes them) and added to the
/// series once the store has them.
#[derive(Debug, Default)]
pub struct SpanTally {
    groups: std::collections::HashMap<(String, String, &'static str, &'static str), Vec<f64>>,
}

fn kind_label(kind: skein_model::SpanKind) -> &'static str {
    use skein_model::SpanKind::*;
    match kind {
        Unspecified => "SPAN_KIND_UNSPECIFIED",
        Internal => "SPAN_KIND_INTERNAL",
        Server => "SPAN_KIND_SERVER",
        Client => "SPAN_KIND_CLIENT",
        Producer => "SPAN_KIND_PRODUCER",
        Consumer => "SPAN_KIND_CONSUMER",
    }
}

fn status_label(code: skein_model::StatusCode) -> &'static str {
    match code {
        skein_model::StatusCode::Unset => "STATUS_CODE_UNSET",
        skein_model::StatusCode::Ok => "STATUS_CODE_OK",
        skein_model::StatusCode::Error => "STATUS_CODE_ERROR",
    }
}

impl SpanMetrics {
    fn new(registry: &mut Registry, max_operations: usize) -> Self {
        let calls = Family::<SpanLabels, Counter>::default();
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS_MS.iter().copied()));
        let folded = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "traces_span_metrics_calls",
            "Spans stored, by service, span name, kind and status (--span-metrics)",
            calls.clone(),
        );
        registry.register(
            "traces_span_metrics_duration_milliseconds",
            "Durations of the spans stored, in milliseconds (--span-metrics)",
            duration.clone(),
        );
        registry.register(
            "skein_span_metrics_folded_spans",
            "Spans counted under span_name=\"_other\" because their service already had --span-metrics-max-operations names",
            folded.clone(),
        );
        SpanMetrics { calls, duration, folded, names: Default::default(), max_operations }
    }

    /// Counts `spans` by series, before the store takes them.
    pub fn tally(&self, spans: &[skein_model::Span]) -> SpanTally {
        let mut tally = SpanTally::default();
        for s in spans {
            let key = (
                s.service_name().to_owned(),
                s.name.to_string(),
                kind_label(s.kind),
                status_label(s.status.code),
            );
            tally.groups.entry(key).or_default().push(s.duration_nanos() as f64 / 1e6);
        }
        tally
    }

    /// Adds a stored batch's tally to the series.
    pub fn add(&self, tally: SpanTally) {
        let mut names = self.names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((service, name, span_kind, status_code), durations) in tally.groups {
            let known = names.entry(service.clone()).or_default();
            let span_name = if known.contains(&name) || known.len() < self.max_operations {
                known.insert(name.clone());
                name
            } else {
                self.folded
                    .get_or_create(&ServiceLabels { service_name: service.clone() })
                    .inc_by(durations.len() as u64);
                OTHER_OPERATION.to_owned()
            };
            let labels = SpanLabels { service_name: service, span_name, span_kind, status_code };
            self.calls.get_or_create(&labels).inc_by(durations.len() as u64);
            let histogram = self.duration.get_or_create(&labels);
            for ms in durations {
                histogram.observe(ms);
            }
        }
    }
}

/// The server's counters. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The RED series of stored spans, with `--span-metrics`.
    pub span_metrics: Option<SpanMetrics>,
    pub spans_received: Family<ProtocolLabels, Counter>,
    pub spans_refused: Family<RefusedLabels, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    /// OTLP requests refused before their spans could be read.
    pub requests_refused: Family<RefusedLabels, Counter>,
}

#[derive(Debug)]
struct StoreCollector(Arc<dyn SpanStore>);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let counter = ConstCounter::new(stats.spans_evicted);
        counter.encode(encoder.encode_descriptor(
            "skein_spans_evicted",
            "Spans dropped by the store to stay within its bounds (oldest traces first)",
            None,
            counter.metric_type(),
        )?)?;
        let counter = ConstCounter::new(stats.traces_evicted);
        counter.encode(encoder.encode_descriptor(
            "skein_traces_evicted",
            "Traces dropped by the store to stay within its bounds",
            None,
            counter.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(stats.spans_stored as i64);
        gauge.encode(encoder.encode_descriptor(
            "skein_spans_stored",
            "Spans held by the store",
            None,
            gauge.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(stats.blocks as i64);
        gauge.encode(encoder.encode_descriptor(
            "skein_storage_blocks",
            "Block files of the embedded storage",
            None,
            gauge.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(stats.blocks_awaiting_compaction as i64);
        gauge.encode(encoder.encode_descriptor(
            "skein_storage_blocks_awaiting_compaction",
            "Small blocks that the next compaction will merge",
            None,
            gauge.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(stats.traces_stored as i64);
        gauge.encode(encoder.encode_descriptor(
            "skein_traces_stored",
            "Traces held by the store",
            None,
            gauge.metric_type(),
        )?)?;
        seconds_by_part(
            &mut encoder,
            "skein_storage_serial_seconds",
            "Serial work of ingest since start, by part: under the head's exclusive lock, and on the WAL writer thread when there is one",
            &stats.serial_nanos,
        )?;
        seconds_by_part(
            &mut encoder,
            "skein_storage_background_seconds",
            "CPU time of background work since start, by part: block writes and compactions outside their chunk encoding, and the WAL's writer threads when there are several; each runs as concurrent tasks or threads, so it is not serial",
            &stats.background_nanos,
        )?;
        if !stats.memory_bytes.is_empty() {
            let mut family = encoder.encode_descriptor(
                "skein_storage_memory_bytes",
                "Bytes of memory the store holds for the data it has stored, by part: the blocks' trace-id index, their postings, chunk and service tables, and the Bloom filters searches have kept",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (part, bytes) in &stats.memory_bytes {
                let gauge = ConstGauge::new(*bytes as i64);
                gauge.encode(family.encode_family(&[("part", *part)])?)?;
            }
        }
        Ok(())
    }
}

/// A counter family `name` of seconds by `part`, from nanoseconds; nothing when `parts` is
/// empty (a store that does not measure them).
fn seconds_by_part(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    parts: &[(&'static str, u64)],
) -> Result<(), std::fmt::Error> {
    if parts.is_empty() {
        return Ok(());
    }
    let mut family =
        encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (part, nanos) in parts {
        let counter = ConstCounter::new(*nanos as f64 / 1e9);
        counter.encode(family.encode_family(&[("part", *part)])?)?;
    }
    Ok(())
}

impl Metrics {
    pub fn new(store: Arc<dyn SpanStore>) -> Self {
        Self::with_span_metrics(store, None)
    }

    /// [`Metrics::new`], plus the RED series of stored spans when `span_metrics` gives the
    /// most span names per service (`--span-metrics`, `--span-metrics-max-operations`).
    pub fn with_span_metrics(store: Arc<dyn SpanStore>, span_metrics: Option<usize>) -> Self {
        let mut registry = Registry::default();
        let spans_received = Family::<ProtocolLabels, Counter>::default();
        let spans_refused = Family::<RefusedLabels, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let requests_refused = Family::<RefusedLabels, Counter>::default();
        registry.register("skein_spans_received", "Spans accepted and stored", spans_received.clone());
        registry.register("skein_spans_refused", "Spans refused, by reason", spans_refused.clone());
        registry.register(
            "skein_http_requests",
            "HTTP and gRPC requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "skein_requests_refused",
            "OTLP requests refused before their spans were read, by reason: too_large, decompression_ratio, malformed, unsupported_encoding, throttled",
            requests_refused.clone(),
        );
        registry.register_collector(Box::new(StoreCollector(store)));
        let span_metrics = span_metrics.map(|max| SpanMetrics::new(&mut registry, max));
        Metrics {
            registry: Arc::new(registry),
            span_metrics,
            spans_received,
            spans_refused,
            requests,
            requests_refused,
        }
    }

    pub fn refused(&self, protocol: &'static str, reason: &'static str, n: u64) {
        if n > 0 {
            self.spans_refused.get_or_create(&RefusedLabels { protocol, reason }).inc_by(n);
        }
    }

    /// Counts one request refused before its spans were read.
    pub fn request_refused(&self, protocol: &'static str, reason: &'static str) {
        self.requests_refused.get_or_create(&RefusedLabels { protocol, reason }).inc();
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.to_owned(), status }).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}
