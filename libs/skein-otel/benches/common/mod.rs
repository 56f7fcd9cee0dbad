//! What both benchmarks share: the provider every traced case records through.

use std::sync::LazyLock;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

/// An exporter that discards, so the figures are the cost on the application's thread (span
/// creation, attributes, context, the hand-off to the batch queue), not the network.
#[derive(Debug)]
pub struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// A batch span processor feeding [`Discard`].
pub static PROVIDER: LazyLock<SdkTracerProvider> =
    LazyLock::new(|| SdkTracerProvider::builder().with_batch_exporter(Discard).build());
