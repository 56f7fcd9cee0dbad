//! The query side of Skein: the Jaeger v1 JSON API (what Grafana's Jaeger data source and
//! Jaeger UI call), the Jaeger v3 API (OTLP JSON), and search parameter parsing.
//!
//! [`router`] returns an axum `Router` over any [`SpanStore`]; it holds no process-wide
//! state and never writes. Trace analysis ([`analysis`]: the critical path) lives here too.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use skein_store::SpanStore;

pub mod analysis;
pub mod doctor;
pub mod duration;
pub mod jaeger;
pub mod params;
mod skein_api;
mod v1;
mod v3;
pub mod view;

/// The store a query handler reads from.
pub type SharedStore = Arc<dyn SpanStore>;

/// The HTTP status for a storage failure (logged once here for every API version).
pub(crate) fn store_error_status(e: &skein_store::StoreError) -> axum::http::StatusCode {
    tracing::warn!(error = %e, "query failed in storage");
    axum::http::StatusCode::from_u16(e.http_status(skein_store::Access::Read)).expect("a valid status")
}

/// All query routes: Jaeger v1 under `/api/…` and v3 under `/api/v3/…`.
pub fn router(store: SharedStore) -> Router {
    Router::new()
        .route("/api/services", get(v1::services))
        .route("/api/services/{service}/operations", get(v1::service_operations))
        .route("/api/operations", get(v1::operations))
        .route("/api/traces", get(v1::find_traces))
        .route("/api/traces/{trace_id}", get(v1::get_trace))
        .route("/api/dependencies", get(v1::dependencies))
        .route("/api/v1/traces/{trace_id}/critical-path", get(skein_api::critical_path))
        .route("/api/v1/traces/{trace_id}/view", get(skein_api::trace_view))
        .route("/api/v1/traces/{trace_id}/diagnosis", get(skein_api::trace_diagnosis))
        .route("/api/v1/doctor", get(skein_api::doctor_report))
        .route("/api/v3/services", get(v3::services))
        .route("/api/v3/operations", get(v3::operations))
        .route("/api/v3/traces", get(v3::find_traces))
        .route("/api/v3/traces/{trace_id}", get(v3::get_trace))
        .with_state(store)
}

#[cfg(test)]
mod tests;
