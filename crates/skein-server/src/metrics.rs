//! Prometheus metrics of the server (`GET /metrics`).

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
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

/// The server's counters. Cloning shares them.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
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
        Ok(())
    }
}

impl Metrics {
    pub fn new(store: Arc<dyn SpanStore>) -> Self {
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
        Metrics { registry: Arc::new(registry), spans_received, spans_refused, requests, requests_refused }
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
