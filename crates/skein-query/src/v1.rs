//! Jaeger v1 JSON handlers.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use skein_model::TimeRange;
use skein_store::StoreError;

use crate::SharedStore;
use crate::jaeger::{self, ResponseError};
use crate::params::{self, ParamError, TracesRequest};

type Pairs = Query<Vec<(String, String)>>;

/// A failed v1 request: Jaeger's `{"data":null,…,"errors":[{"code":…,"msg":…}]}` with the status.
#[derive(Debug)]
pub(crate) struct V1Error {
    status: StatusCode,
    msg: String,
}

impl V1Error {
    pub(crate) fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        V1Error { status, msg: msg.into() }
    }
}

impl From<ParamError> for V1Error {
    fn from(e: ParamError) -> Self {
        V1Error::new(StatusCode::BAD_REQUEST, e.0)
    }
}

impl From<StoreError> for V1Error {
    fn from(e: StoreError) -> Self {
        V1Error::new(crate::store_error_status(&e), e.to_string())
    }
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        let body = jaeger::Response {
            data: serde_json::Value::Null,
            total: 0,
            limit: 0,
            offset: 0,
            errors: Some(vec![ResponseError { code: self.status.as_u16(), msg: self.msg, trace_id: None }]),
        };
        (self.status, Json(body)).into_response()
    }
}

type V1Result<T> = Result<Json<jaeger::Response<T>>, V1Error>;

fn ok<T: Serialize>(data: Vec<T>) -> V1Result<Vec<T>> {
    let total = data.len();
    Ok(Json(jaeger::Response::new(data, total)))
}

pub(crate) async fn services(State(store): State<SharedStore>) -> V1Result<Vec<String>> {
    ok(store.services().await?)
}

pub(crate) async fn service_operations(
    State(store): State<SharedStore>,
    Path(service): Path<String>,
) -> V1Result<Vec<String>> {
    let mut names: Vec<String> =
        store.operations(&service, None).await?.into_iter().map(|o| o.name).collect();
    names.dedup();
    ok(names)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OperationJson {
    name: String,
    span_kind: &'static str,
}

pub(crate) async fn operations(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> V1Result<Vec<OperationJson>> {
    let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let service = get("service")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| V1Error::new(StatusCode::BAD_REQUEST, "parameter 'service' is required"))?;
    let kind = params::parse_span_kind(get("spanKind"))?;
    let ops = store.operations(service, kind).await?;
    ok(ops.into_iter().map(|o| OperationJson { name: o.name, span_kind: o.span_kind.as_str() }).collect())
}

pub(crate) async fn get_trace(
    State(store): State<SharedStore>,
    Path(trace_id): Path<String>,
) -> V1Result<Vec<jaeger::Trace>> {
    let id = params::parse_trace_id(&trace_id)?;
    match store.trace(id).await? {
        Some(spans) => ok(vec![jaeger::to_jaeger_trace(id, spans)]),
        None => Err(V1Error::new(StatusCode::NOT_FOUND, "trace not found")),
    }
}

pub(crate) async fn find_traces(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> V1Result<Vec<jaeger::Trace>> {
    match params::parse_jaeger_search(&pairs, None)? {
        TracesRequest::Ids(ids) => {
            let mut traces = Vec::new();
            for id in ids {
                if let Some(spans) = store.trace(id).await? {
                    traces.push(jaeger::to_jaeger_trace(id, spans));
                }
            }
            ok(traces)
        }
        TracesRequest::Search(query) => {
            let found = store.find_traces(&query).await?;
            ok(found.into_iter().map(|spans| jaeger::to_jaeger_trace(spans[0].trace_id, spans)).collect())
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DependencyJson {
    parent: String,
    child: String,
    call_count: u64,
}

/// `GET /api/dependencies?endTs=<ms>&lookback=<ms>`, both in milliseconds as in Jaeger.
/// The window of `endTs` (unix ms, default now) and `lookback` (ms, default
/// `default_lookback_ms`) as Jaeger's dependencies API reads them: the span start range (the
/// end included) and the lookback in milliseconds.
pub(crate) fn window_millis(
    pairs: &[(String, String)],
    default_lookback_ms: u64,
) -> Result<(TimeRange, u64), V1Error> {
    let get = |name: &str| pairs.iter().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| v.as_str());
    let millis = |name: &str, default: u64| -> Result<u64, V1Error> {
        match get(name) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().map_err(|_| {
                V1Error::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed '{name}' parameter {v:?}: expected milliseconds"),
                )
            }),
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let end = millis("endTs", now_ms)?;
    let lookback = millis("lookback", default_lookback_ms)?;
    let range = TimeRange::new(
        end.saturating_sub(lookback).saturating_mul(1_000_000),
        end.saturating_add(1).saturating_mul(1_000_000),
    );
    Ok((range, lookback))
}

pub(crate) async fn dependencies(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> V1Result<Vec<DependencyJson>> {
    let (range, _) = window_millis(&pairs, 24 * 3600 * 1000)?;
    let links = store.dependencies(range).await?;
    ok(links
        .into_iter()
        .map(|l| DependencyJson { parent: l.parent, child: l.child, call_count: l.call_count })
        .collect())
}
