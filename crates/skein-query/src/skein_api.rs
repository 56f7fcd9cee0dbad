//! Skein's own endpoints under `/api/v1/…` (beside the Jaeger-compatible ones): trace analysis
//! the web UI shows. Times are unix nanoseconds as decimal strings, as in OTLP JSON.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::SharedStore;
use crate::analysis;
use crate::params;
use crate::v3::V3Error;

/// `GET /api/v1/traces/{traceID}/critical-path`:
/// `{"traceID":…,"segments":[{"spanID":…,"start":"<ns>","end":"<ns>"}…]}`, latest segment first.
pub(crate) async fn critical_path(
    State(store): State<SharedStore>,
    Path(trace_id): Path<String>,
) -> Result<Json<Value>, V3Error> {
    let id = params::parse_trace_id(&trace_id)?;
    let Some(spans) = store.trace(id).await? else {
        return Err(V3Error::new(StatusCode::NOT_FOUND, "trace not found"));
    };
    let segments: Vec<Value> = analysis::critical_path(&spans)
        .iter()
        .map(
            |s| json!({"spanID": s.span_id.to_hex(), "start": s.start.to_string(), "end": s.end.to_string()}),
        )
        .collect();
    Ok(Json(json!({"traceID": id.to_hex(), "segments": segments})))
}

/// `GET /api/v1/traces/{traceID}/view`: the trace as the UI's trace page draws it ([`crate::view`]).
pub(crate) async fn trace_view(
    State(store): State<SharedStore>,
    Path(trace_id): Path<String>,
) -> Result<Json<crate::view::TraceView>, V3Error> {
    let id = params::parse_trace_id(&trace_id)?;
    match store.trace(id).await? {
        Some(spans) => Ok(Json(crate::view::trace_view(id, spans))),
        None => Err(V3Error::new(StatusCode::NOT_FOUND, "trace not found")),
    }
}
