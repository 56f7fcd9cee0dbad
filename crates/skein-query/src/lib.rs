//! The query side of Skein: the Jaeger v1 JSON API (what Grafana's Jaeger data source and
//! Jaeger UI call), the Jaeger v3 API (OTLP JSON), and search parameter parsing.
//!
//! [`router`] returns an axum `Router` over any [`SpanStore`]; it holds no process-wide
//! state and never writes. Trace analysis ([`analysis`]: the critical path) lives here too.
#![forbid(unsafe_code)]

use std::sync::Arc;

use axum::Router;
use axum::response::IntoResponse as _;
use axum::routing::get;
use skein_store::SpanStore;

pub mod analysis;
pub mod doctor;
pub mod duration;
pub mod jaeger;
pub mod map;
pub mod metrics;
pub mod params;
mod skein_api;
mod v1;
pub mod v3;
pub mod view;

/// The store a query handler reads from.
pub type SharedStore = Arc<dyn SpanStore>;

/// The HTTP status for a storage failure (logged once here for every API version).
pub(crate) fn store_error_status(e: &skein_store::StoreError) -> axum::http::StatusCode {
    tracing::warn!(error = %e, "query failed in storage");
    axum::http::StatusCode::from_u16(e.http_status(skein_store::Access::Read)).expect("a valid status")
}

/// All query routes: Jaeger v1 under `/api/…` (with Jaeger's `?prettyPrint=true`) and v3
/// under `/api/v3/…`, and Skein's own under `/api/v1/…`. The doctor counts the ingest as
/// quiet from the moment this router was made (no receiver reports to it).
pub fn router(store: SharedStore) -> Router {
    router_with_activity(store, doctor::report::IngestActivity::starting_now())
}

/// [`router`], with the receivers' record of when spans were last stored, which tells the
/// doctor when every exporter has flushed.
pub fn router_with_activity(store: SharedStore, activity: doctor::report::IngestActivity) -> Router {
    let v1 = Router::new()
        .route("/api/services", get(v1::services))
        .route("/api/services/{service}/operations", get(v1::service_operations))
        .route("/api/operations", get(v1::operations))
        .route("/api/traces", get(v1::find_traces))
        .route("/api/traces/{trace_id}", get(v1::get_trace))
        .route("/api/dependencies", get(v1::dependencies))
        .route("/api/metrics/calls", get(metrics::calls))
        .route("/api/metrics/errors", get(metrics::errors))
        .route("/api/metrics/latencies", get(metrics::latencies))
        .route("/api/metrics/minstep", get(metrics::min_step))
        .layer(axum::middleware::from_fn(pretty_print));
    Router::new()
        .merge(v1)
        .route("/api/v1/traces/{trace_id}/critical-path", get(skein_api::critical_path))
        .route("/api/v1/traces/{trace_id}/view", get(skein_api::trace_view))
        .route("/api/v1/traces/{trace_id}/diagnosis", get(skein_api::trace_diagnosis))
        .route("/api/v1/doctor", get(skein_api::doctor_report))
        .route("/api/v1/service-map", get(map::handler))
        .layer(axum::Extension(activity))
        .route("/api/v3/services", get(v3::services))
        .route("/api/v3/operations", get(v3::operations))
        .route("/api/v3/traces", get(v3::find_traces).post(v3::find_traces_post))
        .route("/api/v3/traces/{trace_id}", get(v3::get_trace))
        .route("/api/v3/trace-summaries", get(v3::find_trace_summaries).post(v3::find_trace_summaries_post))
        .route("/api/v3/dependencies", get(v3::dependencies))
        .with_state(store)
}

/// Jaeger's v1 `prettyPrint` parameter: any value but empty or `false` indents the JSON
/// answer by four spaces, keeping its field order.
async fn pretty_print(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let wanted = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri()).is_ok_and(|q| {
        q.0.iter().rev().find(|(k, _)| k == "prettyPrint").is_some_and(|(_, v)| !v.is_empty() && v != "false")
    });
    let response = next.run(request).await;
    if !wanted {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut out = Vec::with_capacity(bytes.len() * 2);
    let mut reader = serde_json::Deserializer::from_slice(&bytes);
    let mut writer = serde_json::Serializer::with_formatter(
        &mut out,
        serde_json::ser::PrettyFormatter::with_indent(b"    "),
    );
    if serde_transcode::transcode(&mut reader, &mut writer).is_err() {
        // Not JSON: sent as it was.
        return axum::response::Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, axum::body::Body::from(out))
}

#[cfg(test)]
mod tests;
