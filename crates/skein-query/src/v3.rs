//! Jaeger v3 API handlers: traces as OTLP JSON (`{"result": TracesData}`).

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use skein_model::{Span, TimeRange};
use skein_store::{StoreError, TraceQuery};

use crate::SharedStore;
use crate::duration::parse_go_duration;
use crate::params::{self, DEFAULT_LIMIT, DEFAULT_LOOKBACK_NANOS, MAX_LIMIT, ParamError};

type Pairs = Query<Vec<(String, String)>>;

/// A failed v3 request: `{"error":{"httpCode":…,"message":…}}`, as Jaeger's HTTP gateway.
#[derive(Debug)]
pub(crate) struct V3Error {
    status: StatusCode,
    message: String,
}

impl V3Error {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        V3Error { status, message: message.into() }
    }
}

impl From<ParamError> for V3Error {
    fn from(e: ParamError) -> Self {
        V3Error { status: StatusCode::BAD_REQUEST, message: e.0 }
    }
}

impl From<StoreError> for V3Error {
    fn from(e: StoreError) -> Self {
        V3Error { status: crate::store_error_status(&e), message: e.to_string() }
    }
}

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        let body = json!({"error": {"httpCode": self.status.as_u16(), "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

fn result(spans: &[Span]) -> Json<serde_json::Value> {
    let data = skein_otlp::to_traces_data(spans);
    Json(json!({ "result": skein_otlp::traces_data_to_json(&data) }))
}

pub(crate) async fn get_trace(
    State(store): State<SharedStore>,
    Path(trace_id): Path<String>,
) -> Result<Json<serde_json::Value>, V3Error> {
    let id = params::parse_trace_id(&trace_id)?;
    match store.trace(id).await? {
        Some(mut spans) => {
            spans.sort_by_key(|s| (s.start_time_unix_nano, s.span_id));
            Ok(result(&spans))
        }
        None => Err(V3Error { status: StatusCode::NOT_FOUND, message: "trace not found".into() }),
    }
}

pub(crate) async fn services(State(store): State<SharedStore>) -> Result<Json<serde_json::Value>, V3Error> {
    Ok(Json(json!({ "services": store.services().await? })))
}

pub(crate) async fn operations(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> Result<Json<serde_json::Value>, V3Error> {
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let service = get("service")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ParamError("parameter 'service' is required".into()))?;
    let kind = params::parse_span_kind(get("span_kind"))?;
    let ops: Vec<_> = store
        .operations(service, kind)
        .await?
        .into_iter()
        .map(|o| json!({"name": o.name, "spanKind": o.span_kind.as_str()}))
        .collect();
    Ok(Json(json!({ "operations": ops })))
}

fn rfc3339_nanos(name: &str, v: &str) -> Result<u64, ParamError> {
    humantime::parse_rfc3339_weak(v)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .ok_or_else(|| {
            ParamError(format!(
                "malformed '{name}' parameter {v:?}: expected an RFC 3339 time such as 2024-01-01T00:00:00Z"
            ))
        })
}

/// `GET /api/v3/traces?query.service_name=…&query.operation_name=…&query.attributes={json}
/// &query.start_time_min=<rfc3339>&query.start_time_max=…&query.duration_min=<dur>
/// &query.duration_max=…&query.search_depth=<n>`.
pub(crate) async fn find_traces(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> Result<Json<serde_json::Value>, V3Error> {
    let get =
        |name: &str| pairs.iter().rev().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str());
    let service = get("query.service_name")
        .ok_or_else(|| ParamError("parameter 'query.service_name' is required".into()))?;
    let now = params::now_nanos();
    let end = get("query.start_time_max")
        .map(|v| rfc3339_nanos("query.start_time_max", v))
        .transpose()?
        .unwrap_or(now);
    let start = get("query.start_time_min")
        .map(|v| rfc3339_nanos("query.start_time_min", v))
        .transpose()?
        .unwrap_or(end.saturating_sub(DEFAULT_LOOKBACK_NANOS));
    let duration = |name: &str| -> Result<Option<u64>, ParamError> {
        get(name)
            .map(|v| {
                parse_go_duration(v).map_err(|e| ParamError(format!("malformed '{name}' parameter: {e}")))
            })
            .transpose()
    };
    let mut query = TraceQuery {
        service: Some(service.to_owned()),
        operation: get("query.operation_name").map(str::to_owned),
        min_duration_nanos: duration("query.duration_min")?,
        max_duration_nanos: duration("query.duration_max")?,
        time: TimeRange::new(start, end.saturating_add(1)),
        limit: DEFAULT_LIMIT,
        ..TraceQuery::default()
    };
    if let Some(attrs) = get("query.attributes") {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(attrs).map_err(|e| {
            ParamError(format!(
                "malformed 'query.attributes' parameter {attrs:?}: expected a JSON object ({e})"
            ))
        })?;
        query.tags = map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
            .collect();
    }
    if let Some(depth) = get("query.search_depth").or_else(|| get("query.num_traces")) {
        query.limit = depth.parse().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ParamError(format!(
                "malformed 'query.search_depth' parameter {depth:?}: expected a number from 1 to {MAX_LIMIT}"
            ))
        })?;
    }
    let traces = store.find_traces(&query).await?;
    let spans: Vec<Span> = traces.into_iter().flatten().collect();
    Ok(result(&spans))
}
