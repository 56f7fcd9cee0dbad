//! Jaeger v3 API handlers: traces as OTLP JSON (`{"result": TracesData}`), trace summaries
//! (what Jaeger UI 2.19 and later search with), services, operations and dependencies.
//!
//! Parameters follow Jaeger's query service: the canonical names are the proto3 JSON
//! (camelCase) ones, `query.serviceName`, and the snake_case names Jaeger still accepts,
//! `query.service_name`, work too. The searches also take a POST body `{"query": {...}}`, as
//! the gRPC gateway's additional bindings in Jaeger's IDL define.

use std::collections::{BTreeMap, HashSet};
use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use skein_model::{Span, SpanKind, TimeRange, TraceId};
use skein_store::{StoreError, TraceQuery};

use crate::SharedStore;
use crate::duration::parse_go_duration;
use crate::params::{self, DEFAULT_LOOKBACK_NANOS, MAX_LIMIT, ParamError};

type Pairs = Query<Vec<(String, String)>>;

/// `query.searchDepth` when the request has none, as in Jaeger's v3 query service.
pub const DEFAULT_SEARCH_DEPTH: usize = 100;

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

    fn no_traces() -> Self {
        V3Error::new(StatusCode::NOT_FOUND, "No traces found")
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

/// Query-string parameters, looked up by canonical name with Jaeger's deprecated alias.
struct V3Params<'a>(&'a [(String, String)]);

impl<'a> V3Params<'a> {
    /// The last non-empty value of `canonical`, else of `deprecated`, with the name it came under.
    fn get(&self, canonical: &'static str, deprecated: &'static str) -> Option<(&'a str, &'static str)> {
        let find = |name: &'static str| {
            self.0.iter().rev().find(|(k, v)| k == name && !v.is_empty()).map(|(_, v)| (v.as_str(), name))
        };
        find(canonical).or_else(|| find(deprecated))
    }
}

fn result(spans: &[Span]) -> Json<serde_json::Value> {
    let data = skein_otlp::to_traces_data(spans);
    Json(json!({ "result": skein_otlp::traces_data_to_json(&data) }))
}

/// A trace id as Jaeger's v3 gateway reads it: hex (up to 32 digits), else base64 of 8 or 16
/// bytes (standard or URL alphabet, padded or not).
fn parse_v3_trace_id(s: &str) -> Result<TraceId, ParamError> {
    let hex_err = match params::parse_trace_id(s) {
        Ok(id) => return Ok(id),
        Err(e) => e,
    };
    if s.len() > 24 {
        return Err(hex_err);
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        if let Ok(bytes) = engine.decode(s) {
            let mut id = [0u8; 16];
            match bytes.len() {
                16 => id.copy_from_slice(&bytes),
                8 => id[8..].copy_from_slice(&bytes),
                _ => continue,
            }
            return TraceId::from_bytes(id).map_err(|e| ParamError(format!("malformed trace id {s:?}: {e}")));
        }
    }
    Err(hex_err)
}

/// Unix nanoseconds of an RFC 3339 time (`2024-01-01T00:00:00.5Z`, `…+02:00`).
fn rfc3339_nanos(name: &str, v: &str) -> Result<u64, ParamError> {
    let bad = || {
        ParamError(format!(
            "malformed '{name}' parameter {v:?}: expected an RFC 3339 time such as 2024-01-01T00:00:00Z"
        ))
    };
    // humantime reads `Z` times; a numeric offset is applied here.
    let (local, offset_secs) = match v.len().checked_sub(6).and_then(|i| v.get(i..).map(|tail| (i, tail))) {
        Some((i, tail))
            if v.contains('T')
                && (tail.starts_with('+') || tail.starts_with('-'))
                && tail.as_bytes()[3] == b':' =>
        {
            let hours: i64 = tail[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = tail[4..6].parse().map_err(|_| bad())?;
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            (&v[..i], sign * (hours * 3600 + minutes * 60))
        }
        _ => (v.strip_suffix('Z').or_else(|| v.strip_suffix('z')).ok_or_else(bad)?, 0),
    };
    let t = humantime::parse_rfc3339(&format!("{local}Z")).map_err(|_| bad())?;
    let nanos = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_nanos() as i128;
    u64::try_from(nanos - i128::from(offset_secs) * 1_000_000_000).map_err(|_| bad())
}

fn parse_bool(name: &str, v: &str) -> Result<bool, ParamError> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ParamError(format!("malformed '{name}' parameter {v:?}: expected true or false"))),
    }
}

/// Parses the `query.*` parameters of `/api/v3/traces` and `/api/v3/trace-summaries`.
///
/// `query.serviceName` may be absent (any service, as Jaeger UI's "all services");
/// `query.startTimeMin` is inclusive and `query.startTimeMax` exclusive, RFC 3339, by default
/// the last 48 hours; durations use Go syntax; `query.searchDepth` (or `query.num_traces`)
/// is 1–10000, default 100; `query.rawTraces` must be a boolean (traces are always returned as
/// stored); `query.filter` (experimental in Jaeger and off by default there) is refused.
pub fn parse_v3_search(pairs: &[(String, String)], now: Option<u64>) -> Result<TraceQuery, ParamError> {
    let p = V3Params(pairs);
    if let Some((_, name)) = p.get("query.filter", "query.filter") {
        return Err(ParamError(format!(
            "parameter '{name}' (structured filters) is not supported; use the other query.* parameters"
        )));
    }
    let end = match p.get("query.startTimeMax", "query.start_time_max") {
        Some((v, name)) => rfc3339_nanos(name, v)?,
        None => now.unwrap_or_else(params::now_nanos).saturating_add(1),
    };
    let start = match p.get("query.startTimeMin", "query.start_time_min") {
        Some((v, name)) => rfc3339_nanos(name, v)?,
        None => end.saturating_sub(DEFAULT_LOOKBACK_NANOS),
    };
    if start >= end {
        return Err(ParamError("'query.startTimeMin' must be before 'query.startTimeMax'".into()));
    }
    let duration = |canonical, deprecated| -> Result<Option<u64>, ParamError> {
        p.get(canonical, deprecated)
            .map(|(v, name)| {
                parse_go_duration(v).map_err(|e| ParamError(format!("malformed '{name}' parameter: {e}")))
            })
            .transpose()
    };
    let mut query = TraceQuery {
        service: p.get("query.serviceName", "query.service_name").map(|(v, _)| v.to_owned()),
        operation: p.get("query.operationName", "query.operation_name").map(|(v, _)| v.to_owned()),
        min_duration_nanos: duration("query.durationMin", "query.duration_min")?,
        max_duration_nanos: duration("query.durationMax", "query.duration_max")?,
        time: TimeRange::new(start, end),
        limit: DEFAULT_SEARCH_DEPTH,
        ..TraceQuery::default()
    };
    if let (Some(min), Some(max)) = (query.min_duration_nanos, query.max_duration_nanos)
        && min > max
    {
        return Err(ParamError("'query.durationMax' must not be smaller than 'query.durationMin'".into()));
    }
    if let Some((attrs, _)) = p.get("query.attributes", "query.attributes") {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(attrs).map_err(|e| {
            ParamError(format!(
                "malformed 'query.attributes' parameter {attrs:?}: expected a JSON object of strings ({e})"
            ))
        })?;
        query.tags = map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
            .collect();
    }
    let depth = p
        .get("query.searchDepth", "query.search_depth")
        .or_else(|| p.get("query.num_traces", "query.numTraces"));
    if let Some((depth, name)) = depth {
        query.limit = depth.parse().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ParamError(format!(
                "malformed '{name}' parameter {depth:?}: expected a number from 1 to {MAX_LIMIT}"
            ))
        })?;
    }
    if let Some((raw, name)) = p.get("query.rawTraces", "query.raw_traces") {
        parse_bool(name, raw)?;
    }
    Ok(query)
}

/// A POST body `{"query": {...}}` (proto3 JSON: camelCase or snake_case field names, times as
/// RFC 3339 strings, durations as `"1.5s"`, `attributes` an object) as the query-string pairs
/// the GET form of the same search would have.
fn body_to_pairs(body: &serde_json::Value) -> Result<Vec<(String, String)>, ParamError> {
    let query = match body.get("query") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Object(query)) => query,
        Some(_) => return Err(ParamError("malformed request body: 'query' must be a JSON object".into())),
    };
    Ok(query
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (format!("query.{k}"), text)
        })
        .collect())
}

fn parse_body(body: &[u8]) -> Result<Vec<(String, String)>, ParamError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ParamError(format!("malformed request body: expected JSON {{\"query\": {{…}}}} ({e})"))
    })?;
    body_to_pairs(&value)
}

pub(crate) async fn get_trace(
    State(store): State<SharedStore>,
    Path(trace_id): Path<String>,
    Query(pairs): Pairs,
) -> Result<Json<serde_json::Value>, V3Error> {
    let id = parse_v3_trace_id(&trace_id)?;
    // The optional time bounds and `rawTraces` are checked like Jaeger does; a trace by id
    // is a direct lookup here, so the bounds do not narrow it, and traces are always raw.
    let p = V3Params(&pairs);
    for (canonical, deprecated) in [("startTime", "start_time"), ("endTime", "end_time")] {
        if let Some((v, name)) = p.get(canonical, deprecated) {
            rfc3339_nanos(name, v)?;
        }
    }
    if let Some((v, name)) = p.get("rawTraces", "raw_traces") {
        parse_bool(name, v)?;
    }
    match store.trace(id).await? {
        Some(mut spans) => {
            spans.sort_by_key(|s| (s.start_time_unix_nano, s.span_id));
            Ok(result(&spans))
        }
        None => Err(V3Error::no_traces()),
    }
}

pub(crate) async fn services(State(store): State<SharedStore>) -> Result<Json<serde_json::Value>, V3Error> {
    Ok(Json(json!({ "services": store.services().await? })))
}

pub(crate) async fn operations(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> Result<Json<serde_json::Value>, V3Error> {
    let p = V3Params(&pairs);
    let (service, _) =
        p.get("service", "service").ok_or_else(|| ParamError("parameter 'service' is required".into()))?;
    let kind = params::parse_span_kind(p.get("spanKind", "span_kind").map(|(v, _)| v))?;
    let ops: Vec<_> = store
        .operations(service, kind)
        .await?
        .into_iter()
        .map(|o| {
            // Jaeger names an operation without a kind `internal`.
            let kind = if o.span_kind == SpanKind::Unspecified { SpanKind::Internal } else { o.span_kind };
            json!({"name": o.name, "spanKind": kind.as_str()})
        })
        .collect();
    Ok(Json(json!({ "operations": ops })))
}

async fn search(store: &SharedStore, pairs: &[(String, String)]) -> Result<Vec<Vec<Span>>, V3Error> {
    let query = parse_v3_search(pairs, None)?;
    Ok(store.find_traces(&query).await?)
}

async fn traces_answer(
    store: &SharedStore,
    pairs: &[(String, String)],
) -> Result<Json<serde_json::Value>, V3Error> {
    let traces = search(store, pairs).await?;
    if traces.is_empty() {
        return Err(V3Error::no_traces());
    }
    let spans: Vec<Span> = traces.into_iter().flatten().collect();
    Ok(result(&spans))
}

/// `GET /api/v3/traces?query.serviceName=…`: every span of every found trace, or 404
/// `No traces found` (as Jaeger).
pub(crate) async fn find_traces(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> Result<Json<serde_json::Value>, V3Error> {
    traces_answer(&store, &pairs).await
}

/// `POST /api/v3/traces` with `{"query": {...}}`.
pub(crate) async fn find_traces_post(
    State(store): State<SharedStore>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, V3Error> {
    traces_answer(&store, &parse_body(&body)?).await
}

/// One service's share of a trace, in a [`TraceSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    pub name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub span_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub error_span_count: u32,
}

/// Jaeger's `api_v3.TraceSummary`, as its gateway writes it in proto3 JSON: 64-bit times as
/// decimal strings, zero counts and empty names left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSummary {
    pub trace_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root_service_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub root_operation_name: String,
    #[serde(with = "decimal")]
    pub min_start_time_unix_nano: u64,
    #[serde(with = "decimal")]
    pub max_end_time_unix_nano: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub span_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub error_span_count: u32,
    #[serde(skip_serializing_if = "is_zero")]
    pub orphan_span_count: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSummary>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

mod decimal {
    pub fn serialize<S: serde::Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }
}

/// The summary of one trace's spans, as Jaeger computes it: the root is the earliest span
/// without a parent; an orphan is a span whose parent is not in the trace; an error span has
/// status ERROR; services are sorted by name. A span id sent twice (a retry) counts once.
pub fn summarize(spans: &[Span]) -> Option<TraceSummary> {
    let first = spans.first()?;
    let mut seen = HashSet::with_capacity(spans.len());
    let unique: Vec<&Span> = spans.iter().filter(|s| seen.insert(s.span_id)).collect();
    let mut services: BTreeMap<&str, ServiceSummary> = BTreeMap::new();
    let mut root: Option<&Span> = None;
    let mut summary = TraceSummary {
        trace_id: first.trace_id.to_hex(),
        root_service_name: String::new(),
        root_operation_name: String::new(),
        min_start_time_unix_nano: u64::MAX,
        max_end_time_unix_nano: 0,
        span_count: 0,
        error_span_count: 0,
        orphan_span_count: 0,
        services: Vec::new(),
    };
    for span in &unique {
        let error = span.status.code == skein_model::StatusCode::Error;
        let service = services.entry(span.service_name()).or_insert_with(|| ServiceSummary {
            name: span.service_name().to_owned(),
            span_count: 0,
            error_span_count: 0,
        });
        service.span_count += 1;
        service.error_span_count += u32::from(error);
        summary.span_count += 1;
        summary.error_span_count += u32::from(error);
        summary.min_start_time_unix_nano = summary.min_start_time_unix_nano.min(span.start_time_unix_nano);
        summary.max_end_time_unix_nano = summary.max_end_time_unix_nano.max(span.end_time_unix_nano);
        match span.parent_span_id {
            None => {
                if root.is_none_or(|r| span.start_time_unix_nano < r.start_time_unix_nano) {
                    root = Some(span);
                }
            }
            Some(parent) => summary.orphan_span_count += u32::from(!seen.contains(&parent)),
        }
    }
    if let Some(root) = root {
        summary.root_service_name = root.service_name().to_owned();
        summary.root_operation_name = root.name.to_string();
    }
    summary.services = services.into_values().collect();
    Some(summary)
}

async fn summaries_answer(
    store: &SharedStore,
    pairs: &[(String, String)],
) -> Result<Json<serde_json::Value>, V3Error> {
    let traces = search(store, pairs).await?;
    let summaries: Vec<TraceSummary> = traces.iter().filter_map(|t| summarize(t)).collect();
    // proto3 JSON leaves an empty repeated field out, as Jaeger's gateway does.
    if summaries.is_empty() {
        return Ok(Json(json!({})));
    }
    Ok(Json(json!({ "summaries": summaries })))
}

/// `GET /api/v3/trace-summaries?query.serviceName=…`: one summary per found trace, in the
/// order of the v1 search with the same filters (newest first).
pub(crate) async fn find_trace_summaries(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> Result<Json<serde_json::Value>, V3Error> {
    summaries_answer(&store, &pairs).await
}

/// `POST /api/v3/trace-summaries` with `{"query": {...}}`.
pub(crate) async fn find_trace_summaries_post(
    State(store): State<SharedStore>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, V3Error> {
    summaries_answer(&store, &parse_body(&body)?).await
}

/// `GET /api/v3/dependencies?startTime=<rfc3339>&endTime=<rfc3339>` (default: the last 24 h):
/// `{"dependencies": [{"parent", "child", "callCount"}]}`, the count a decimal string (uint64
/// in proto3 JSON).
pub(crate) async fn dependencies(
    State(store): State<SharedStore>,
    Query(pairs): Pairs,
) -> Result<Json<serde_json::Value>, V3Error> {
    let p = V3Params(&pairs);
    let end = match p.get("endTime", "end_time") {
        Some((v, name)) => rfc3339_nanos(name, v)?,
        None => params::now_nanos(),
    };
    let start = match p.get("startTime", "start_time") {
        Some((v, name)) => rfc3339_nanos(name, v)?,
        None => end.saturating_sub(24 * 3600 * 1_000_000_000),
    };
    if start > end {
        return Err(ParamError("'startTime' must not be after 'endTime'".into()).into());
    }
    let links = store.dependencies(TimeRange::new(start, end.saturating_add(1))).await?;
    let deps: Vec<_> = links
        .into_iter()
        .map(|l| json!({"parent": l.parent, "child": l.child, "callCount": l.call_count.to_string()}))
        .collect();
    Ok(Json(json!({ "dependencies": deps })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        let z = rfc3339_nanos("t", "2024-01-01T00:00:00Z").unwrap();
        assert_eq!(z, 1_704_067_200_000_000_000);
        assert_eq!(rfc3339_nanos("t", "2024-01-01T00:00:00.000000123Z").unwrap(), z + 123);
        assert_eq!(rfc3339_nanos("t", "2024-01-01T02:00:00+02:00").unwrap(), z);
        assert_eq!(rfc3339_nanos("t", "2023-12-31T19:30:00-04:30").unwrap(), z);
        for bad in ["2024-01-01", "yesterday", "2024-01-01T00:00:00+2:00", "2024-01-01T00:00:00"] {
            assert!(rfc3339_nanos("t", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trace_ids_in_hex_or_base64() {
        let hex = "0af7651916cd43dd8448eb211c80319c";
        let id = TraceId::from_hex(hex).unwrap();
        assert_eq!(parse_v3_trace_id(hex).unwrap(), id);
        assert_eq!(parse_v3_trace_id("CvdlGRbNQ92ESOshHIAxnA==").unwrap(), id);
        assert_eq!(parse_v3_trace_id("CvdlGRbNQ92ESOshHIAxnA").unwrap(), id);
        assert_eq!(parse_v3_trace_id("AAAAAAAAAAE=").unwrap(), TraceId::from_hex("1").unwrap());
        assert!(parse_v3_trace_id("not an id!").is_err());
    }

    #[test]
    fn canonical_names_win_over_deprecated_ones() {
        let pairs = |q: &[(&str, &str)]| -> Vec<(String, String)> {
            q.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let q = parse_v3_search(
            &pairs(&[
                ("query.service_name", "old"),
                ("query.serviceName", "new"),
                ("query.startTimeMin", "2024-01-01T00:00:00Z"),
                ("query.start_time_max", "2024-01-01T00:01:00Z"),
                ("query.num_traces", "7"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(q.service.as_deref(), Some("new"));
        assert_eq!(q.time, TimeRange::new(1_704_067_200_000_000_000, 1_704_067_260_000_000_000));
        assert_eq!(q.limit, 7);
        let q = parse_v3_search(&[], Some(1_000_000_000_000_000_000)).unwrap();
        assert_eq!((q.service, q.limit), (None, DEFAULT_SEARCH_DEPTH));
        let err = parse_v3_search(&pairs(&[("query.rawTraces", "maybe")]), None).unwrap_err();
        assert_eq!(err.0, "malformed 'query.rawTraces' parameter \"maybe\": expected true or false");
    }
}
