//! The path every OTLP request takes after decoding, whatever its transport.

use std::sync::Arc;

use skein_otlp::proto::collector::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use skein_otlp::{ConvertedBatch, Limits};
use skein_store::{OtlpRequest, SpanStore, StoreError};

use crate::metrics::Metrics;

/// Why a whole request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body is not an OTLP request at all.
    #[error("{0}")]
    Malformed(String),
    /// Every span of the request was invalid (the message names the problems).
    #[error("no valid spans in request: {0}")]
    Invalid(String),
    /// The store could not take the spans.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Validates, converts and stores OTLP requests, and counts what happened.
#[derive(Clone, Debug)]
pub struct Ingest {
    store: Arc<dyn SpanStore>,
    limits: Limits,
    /// Decodes protobuf requests with `limits`, one resource and scope shared by all the
    /// requests that send the same.
    decoder: Arc<skein_otlp::ProtobufDecoder>,
    metrics: Metrics,
    /// When spans were last stored, for the doctor (has every exporter flushed?).
    activity: Option<skein_query::doctor::report::IngestActivity>,
}

impl Ingest {
    pub fn new(store: Arc<dyn SpanStore>, limits: Limits, metrics: Metrics) -> Self {
        let decoder = Arc::new(skein_otlp::ProtobufDecoder::new(limits.clone()));
        Ingest { store, limits, decoder, metrics, activity: None }
    }

    /// Records, after every stored batch, when spans were last stored.
    pub fn with_activity(mut self, activity: skein_query::doctor::report::IngestActivity) -> Self {
        self.activity = Some(activity);
        self
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stores the valid spans of a decoded request (OTLP/JSON). Answers success (partial
    /// success when some spans were rejected) only once the store has them.
    pub async fn export(
        &self,
        request: ExportTraceServiceRequest,
        protocol: &'static str,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        self.store(skein_otlp::to_model(request, &self.limits), None, protocol).await
    }

    /// Decodes an OTLP/protobuf request body straight into spans and stores the valid ones,
    /// answering as [`Ingest::export`] does.
    pub async fn export_protobuf(
        &self,
        body: &[u8],
        protocol: &'static str,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        self.export_received(OtlpRequest::plain(body), protocol).await
    }

    /// [`Ingest::export_protobuf`] for a request that may have come compressed: the store
    /// may log its body as it came.
    pub async fn export_received(
        &self,
        request: OtlpRequest<'_>,
        protocol: &'static str,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        let batch =
            self.decoder.decode(request.protobuf).map_err(|e| IngestError::Malformed(e.to_string()))?;
        self.store(batch, Some(request), protocol).await
    }

    /// Stores the valid spans of `batch`, decoded from `request` when that is an
    /// OTLP/protobuf body (handed to the store with them when every span in it is valid).
    /// Answers success (with partial success when some spans were rejected) only once the
    /// store has them.
    async fn store(
        &self,
        batch: ConvertedBatch,
        request: Option<OtlpRequest<'_>>,
        protocol: &'static str,
    ) -> Result<ExportTraceServiceResponse, IngestError> {
        if batch.spans.is_empty() {
            if batch.rejected == 0 {
                return Ok(ExportTraceServiceResponse { partial_success: None });
            }
            self.metrics.refused(protocol, "invalid", batch.rejected);
            return Err(IngestError::Invalid(batch.error_message()));
        }
        let accepted = batch.spans.len() as u64;
        let (rejected, error_message) = (batch.rejected, batch.error_message());
        let tally = self.metrics.span_metrics.as_ref().map(|m| m.tally(&batch.spans));
        let written = match request {
            Some(request) if rejected == 0 => self.store.write_request(batch.spans, request).await,
            _ => self.store.write(batch.spans).await,
        };
        if let Err(e) = written {
            self.metrics.refused(protocol, e.metric_reason(), accepted);
            self.metrics.refused(protocol, "invalid", rejected);
            return Err(e.into());
        }
        self.metrics
            .spans_received
            .get_or_create(&crate::metrics::ProtocolLabels { protocol })
            .inc_by(accepted);
        if let Some(activity) = &self.activity {
            activity.record_now();
        }
        if let (Some(m), Some(tally)) = (&self.metrics.span_metrics, tally) {
            m.add(tally);
        }
        if rejected == 0 {
            return Ok(ExportTraceServiceResponse { partial_success: None });
        }
        self.metrics.refused(protocol, "invalid", rejected);
        tracing::debug!(protocol, rejected, accepted, "partial success");
        Ok(ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message,
            }),
        })
    }
}
