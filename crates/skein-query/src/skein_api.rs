//! Skein's own endpoints under `/api/v1/…` (beside the Jaeger-compatible ones): trace analysis
//! the web UI shows. Times are unix nanoseconds as decimal strings, as in OTLP JSON.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::SharedStore;
use crate::analysis;
use crate::doctor;
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

/// Traces analysed by one doctor request, at most.
pub const DOCTOR_MAX_TRACES: usize = 10_000;
/// Traces around one trace analysed for its diagnosis, at most.
pub const DIAGNOSIS_MAX_TRACES: usize = 2_000;

fn duration_param(pairs: &[(String, String)], name: &str, default: u64) -> Result<u64, V3Error> {
    match pairs.iter().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => crate::duration::parse_go_duration(v)
            .map_err(|e| V3Error::new(StatusCode::BAD_REQUEST, format!("parameter '{name}': {e}"))),
    }
}

/// Runs the doctor over every trace with a span starting in `range`.
async fn run_doctor(
    store: &SharedStore,
    range: skein_model::TimeRange,
    config: &doctor::DoctorConfig,
    limit: usize,
    include: Option<Vec<skein_model::Span>>,
) -> Result<(doctor::Report, bool), V3Error> {
    let query = skein_store::TraceQuery { time: range, limit, ..Default::default() };
    let mut traces = store.find_traces(&query).await?;
    let truncated = traces.len() >= limit;
    // The trace being diagnosed is analysed even when the window holds more than `limit`.
    if let Some(spans) = include
        && let Some(id) = spans.first().map(|s| s.trace_id)
        && !traces.iter().any(|t| t.first().is_some_and(|s| s.trace_id == id))
    {
        traces.push(spans);
    }
    let config = *config;
    let report = tokio::task::spawn_blocking(move || doctor::diagnose(&traces, &config))
        .await
        .map_err(|e| V3Error::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the doctor failed: {e}")))?;
    Ok((report, truncated))
}

fn example_json(e: &doctor::Example) -> Value {
    json!({
        "traceID": e.trace_id.to_hex(),
        "spanID": e.span_id.to_hex(),
        "otherTraceID": e.other_trace_id.map(|t| t.to_hex()),
        "otherSpanID": e.other_span_id.map(|s| s.to_hex()),
    })
}

fn finding_json(f: &doctor::Finding) -> Value {
    json!({
        "kind": f.kind.as_str(),
        "broken": f.kind.is_break(),
        "service": f.service,
        "peer": f.peer,
        "operation": f.operation,
        "peerOperation": f.peer_operation,
        "count": f.count,
        "confidence": (f.confidence * 1000.0).round() / 1000.0,
        "message": f.message,
        "examples": f.examples.iter().map(example_json).collect::<Vec<_>>(),
    })
}

/// `GET /api/v1/doctor?lookback=15m&service=&grace=30s`: where chains break (see `docs/doctor.md`).
pub(crate) async fn doctor_report(
    State(store): State<SharedStore>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, V3Error> {
    let lookback = duration_param(&pairs, "lookback", 15 * 60 * 1_000_000_000)?;
    let now = params::now_nanos();
    let mut config = doctor::DoctorConfig::new(now);
    config.grace_nanos = duration_param(&pairs, "grace", config.grace_nanos)?;
    let service =
        pairs.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str()).filter(|s| !s.is_empty());
    let range = skein_model::TimeRange::new(now.saturating_sub(lookback), now.saturating_add(1));
    let (report, truncated) = run_doctor(&store, range, &config, DOCTOR_MAX_TRACES, None).await?;
    let involves = |a: &str, b: Option<&str>| service.is_none_or(|s| a == s || b == Some(s));
    let findings: Vec<Value> = report
        .findings
        .iter()
        .filter(|f| involves(&f.service, f.peer.as_deref()))
        .map(finding_json)
        .collect();
    let edges: Vec<Value> = report
        .edges
        .iter()
        .filter(|e| involves(&e.caller, Some(&e.callee)))
        .map(|e| {
            json!({
                "caller": e.caller, "callee": e.callee, "joined": e.joined, "split": e.split,
                "health": (e.health() * 1000.0).round() / 1000.0,
            })
        })
        .collect();
    let broken = findings.iter().any(|f| f["broken"] == true);
    Ok(Json(json!({
        "window": {"start": range.start_unix_nano.to_string(), "end": range.end_unix_nano.to_string()},
        "graceSeconds": config.grace_nanos as f64 / 1e9,
        "service": service,
        "traces": report.traces,
        "spans": report.spans,
        "truncated": truncated,
        "broken": broken,
        "findings": findings,
        "edges": edges,
    })))
}

/// `GET /api/v1/traces/{traceID}/diagnosis?grace=30s`: one trace's problems, and the other
/// pieces of the same request (the traces it continues in, or continues from).
pub(crate) async fn trace_diagnosis(
    State(store): State<SharedStore>,
    Path(trace_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, V3Error> {
    let id = params::parse_trace_id(&trace_id)?;
    let Some(spans) = store.trace(id).await? else {
        return Err(V3Error::new(StatusCode::NOT_FOUND, "trace not found"));
    };
    let mut config = doctor::DoctorConfig::new(params::now_nanos());
    config.grace_nanos = duration_param(&pairs, "grace", config.grace_nanos)?;
    let start = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_time_unix_nano).max().unwrap_or(0);
    // Pieces of the same request start within it, give or take the tolerated skew and slack;
    // the trace page asks this for every trace it shows, so the window stays narrow.
    let margin = 1_000_000_000;
    let range = skein_model::TimeRange::new(start.saturating_sub(margin), end.saturating_add(margin));
    let (report, _) = run_doctor(&store, range, &config, DIAGNOSIS_MAX_TRACES, Some(spans)).await?;
    let mut problems = Vec::new();
    let mut related = Vec::new();
    for p in &report.pairs {
        let kind = p.kind.as_str();
        let confidence = p.confidence_milli as f64 / 1000.0;
        if p.from_trace == id && p.to_trace != id {
            problems.push(json!({
                "kind": kind, "relation": "continues_in", "spanID": p.from_span.to_hex(), "otherTraceID": p.to_trace.to_hex(),
                "otherSpanID": p.to_span.to_hex(), "confidence": confidence,
                "message": "the request continues in another trace: the context was lost after this span",
            }));
            related.push(json!({"traceID": p.to_trace.to_hex(), "relation": "continues_in", "kind": kind, "confidence": confidence}));
        } else if p.to_trace == id && p.from_trace != id {
            problems.push(json!({
                "kind": kind, "relation": "continues_from", "spanID": p.to_span.to_hex(), "otherTraceID": p.from_trace.to_hex(),
                "otherSpanID": p.from_span.to_hex(), "confidence": confidence,
                "message": "this trace is the continuation of a request whose context was lost in another trace",
            }));
            related.push(json!({"traceID": p.from_trace.to_hex(), "relation": "continues_from", "kind": kind, "confidence": confidence}));
        }
    }
    for (t, span, parent) in &report.orphans {
        if *t == id {
            problems.push(json!({
                "kind": "orphan_spans", "spanID": span.to_hex(), "missingParentID": parent.to_hex(),
                "message": "this span's parent is not in the trace",
            }));
        }
    }
    Ok(Json(json!({"traceID": id.to_hex(), "problems": problems, "related": related})))
}
