//! Skein's own endpoints under `/api/v1/…` (beside the Jaeger-compatible ones): trace analysis
//! the web UI shows. Times are unix nanoseconds as decimal strings, as in OTLP JSON.

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::SharedStore;
use crate::analysis;
use crate::doctor;
use crate::doctor::report::{
    Diagnosis, DoctorReport, EdgeReport, FindingReport, IngestActivity, Problem, Related, Window,
};
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

/// Spans one doctor request reads, at most (trimmed to what the detectors read: about 300
/// bytes each with the doctor's indexes, so this bounds the request's memory).
pub const DOCTOR_MAX_SPANS: usize = 2_000_000;
/// Spans around one trace read for its diagnosis, at most.
pub const DIAGNOSIS_MAX_SPANS: usize = 200_000;

fn duration_param(pairs: &[(String, String)], name: &str, default: u64) -> Result<u64, V3Error> {
    match pairs.iter().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, v)) => crate::duration::parse_go_duration(v)
            .map_err(|e| V3Error::new(StatusCode::BAD_REQUEST, format!("parameter '{name}': {e}"))),
    }
}

/// Runs the doctor over every trace with a span starting in `range`: one sequential read of
/// the window (trimmed spans), grouped by trace; a trace with a span whose parent was not read
/// (it may lie outside the window) is read whole before it is judged.
async fn run_doctor(
    store: &SharedStore,
    range: skein_model::TimeRange,
    config: &doctor::DoctorConfig,
    max_spans: usize,
    include: Option<Vec<skein_model::Span>>,
) -> Result<(doctor::Report, bool), V3Error> {
    use std::collections::{HashMap, HashSet};
    type Traces = HashMap<skein_model::TraceId, Vec<skein_store::ScanSpan>>;
    let failed = |e: tokio::task::JoinError| {
        V3Error::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the doctor failed: {e}"))
    };
    let scanned = |spans: &[skein_model::Span]| -> Vec<skein_store::ScanSpan> {
        spans.iter().map(|s| skein_store::ScanSpan::of(s, doctor::reads_attribute)).collect()
    };
    let scan = store.scan(range, max_spans, doctor::reads_attribute).await?;
    let truncated = scan.truncated;
    // The window's traces, and those of them with a span whose parent was not read (off the
    // runtime's threads: a window holds up to millions of spans).
    let (mut traces, partial) = tokio::task::spawn_blocking(move || {
        let mut traces: Traces = scan.traces;
        traces.retain(|_, spans| spans.iter().any(|s| range.contains(s.start_time_unix_nano)));
        let partial: Vec<skein_model::TraceId> = traces
            .iter()
            .filter(|(_, spans)| {
                let ids: HashSet<skein_model::SpanId> = spans.iter().map(|s| s.span_id).collect();
                spans.iter().any(|s| s.parent_span_id.is_some_and(|p| !ids.contains(&p)))
            })
            .map(|(id, _)| *id)
            .collect();
        (traces, partial)
    })
    .await
    .map_err(failed)?;
    for (id, spans) in store.traces(&partial).await? {
        traces.insert(id, scanned(&spans));
    }
    // The trace being diagnosed is analysed even when the window holds more than `max_spans`.
    if let Some(spans) = include
        && let Some(id) = spans.first().map(|s| s.trace_id)
    {
        traces.insert(id, scanned(&spans));
    }
    let config = *config;
    let report = tokio::task::spawn_blocking(move || {
        // Newest first, as a search answers: the report lists what it finds in this order.
        let mut traces: Vec<(u64, Vec<skein_store::ScanSpan>)> = traces
            .into_values()
            .map(|spans| (spans.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0), spans))
            .collect();
        traces.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1[0].trace_id.cmp(&b.1[0].trace_id)));
        let traces: Vec<Vec<skein_store::ScanSpan>> = traces.into_iter().map(|(_, spans)| spans).collect();
        doctor::diagnose(&traces, &config)
    })
    .await
    .map_err(failed)?;
    Ok((report, truncated))
}

/// How long the ingest must have been quiet for every span to count as settled, by default:
/// a little more than the OpenTelemetry SDKs' batch processor delay (5 s), so the last batch of
/// a service that is still running has arrived.
pub const DEFAULT_SETTLE_NANOS: u64 = 6_000_000_000;

/// The doctor's settings from a request's `grace` and `settle`, and how quiet the ingest is.
fn doctor_config(
    pairs: &[(String, String)],
    activity: &IngestActivity,
) -> Result<(doctor::DoctorConfig, u64, u64), V3Error> {
    let now = params::now_nanos();
    let mut config = doctor::DoctorConfig::new(now);
    config.grace_nanos = duration_param(pairs, "grace", config.grace_nanos)?;
    let settle = duration_param(pairs, "settle", DEFAULT_SETTLE_NANOS)?;
    let quiet_for = now.saturating_sub(activity.last_nanos());
    config.ingest_quiet = quiet_for >= settle;
    Ok((config, settle, quiet_for))
}

/// `GET /api/v1/doctor?lookback=15m&service=&grace=30s&settle=6s`: where chains break (see
/// `docs/doctor.md`).
pub(crate) async fn doctor_report(
    State(store): State<SharedStore>,
    Extension(activity): Extension<IngestActivity>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<DoctorReport>, V3Error> {
    let lookback = duration_param(&pairs, "lookback", 15 * 60 * 1_000_000_000)?;
    let (config, settle, quiet_for) = doctor_config(&pairs, &activity)?;
    let now = config.now_nanos;
    let service =
        pairs.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str()).filter(|s| !s.is_empty());
    let range = skein_model::TimeRange::new(now.saturating_sub(lookback), now.saturating_add(1));
    let (report, truncated) = run_doctor(&store, range, &config, DOCTOR_MAX_SPANS, None).await?;
    let involves = |a: &str, b: Option<&str>| service.is_none_or(|s| a == s || b == Some(s));
    let findings: Vec<FindingReport> = report
        .findings
        .iter()
        .filter(|f| involves(&f.service, f.peer.as_deref()))
        .map(FindingReport::from)
        .collect();
    let edges: Vec<EdgeReport> =
        report.edges.iter().filter(|e| involves(&e.caller, Some(&e.callee))).map(EdgeReport::from).collect();
    Ok(Json(DoctorReport {
        window: Window { start: range.start_unix_nano.to_string(), end: range.end_unix_nano.to_string() },
        grace_seconds: config.grace_nanos as f64 / 1e9,
        settle_seconds: settle as f64 / 1e9,
        quiet_for_seconds: (quiet_for as f64 / 1e6).round() / 1e3,
        ingest_quiet: config.ingest_quiet,
        service: service.map(str::to_owned),
        traces: report.traces,
        spans: report.spans,
        unsettled_traces: report.unsettled_traces,
        truncated,
        broken: findings.iter().any(|f| f.broken),
        findings,
        edges,
    }))
}

/// `GET /api/v1/traces/{traceID}/diagnosis?grace=30s&settle=6s`: one trace's problems, and the
/// other pieces of the same request (the traces it continues in, or continues from). Only
/// broken chains are offered as other pieces.
pub(crate) async fn trace_diagnosis(
    State(store): State<SharedStore>,
    Extension(activity): Extension<IngestActivity>,
    Path(trace_id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<Diagnosis>, V3Error> {
    let id = params::parse_trace_id(&trace_id)?;
    let Some(spans) = store.trace(id).await? else {
        return Err(V3Error::new(StatusCode::NOT_FOUND, "trace not found"));
    };
    let (config, _, _) = doctor_config(&pairs, &activity)?;
    let start = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_time_unix_nano).max().unwrap_or(0);
    // Pieces of the same request start within it, give or take the tolerated skew and slack;
    // the trace page asks this for every trace it shows, so the window stays narrow.
    let margin = 1_000_000_000;
    let range = skein_model::TimeRange::new(start.saturating_sub(margin), end.saturating_add(margin));
    let (report, _) = run_doctor(&store, range, &config, DIAGNOSIS_MAX_SPANS, Some(spans)).await?;
    let mut diagnosis = Diagnosis {
        trace_id: id.to_hex(),
        unsettled: report.unsettled_traces > 0,
        problems: Vec::new(),
        related: Vec::new(),
    };
    for p in &report.pairs {
        let continues_in = match (p.from_trace == id, p.to_trace == id) {
            (true, false) => true,
            (false, true) => false,
            _ => continue,
        };
        let problem = Problem::of_pair(p, continues_in);
        diagnosis.related.push(Related {
            trace_id: problem.other_trace_id.clone().expect("a pair has another trace"),
            relation: problem.relation.clone().expect("a pair has a relation"),
            kind: problem.kind.clone(),
            confidence: p.confidence_milli as f64 / 1000.0,
            unambiguous: p.unambiguous,
        });
        diagnosis.problems.push(problem);
    }
    for (t, span, parent) in &report.orphans {
        if *t == id {
            diagnosis.problems.push(Problem {
                kind: "orphan_spans".into(),
                relation: None,
                span_id: span.to_hex(),
                other_trace_id: None,
                other_span_id: None,
                missing_parent_id: Some(parent.to_hex()),
                confidence: None,
                unambiguous: None,
                message: "this span's parent is not in the trace".into(),
            });
        }
    }
    Ok(Json(diagnosis))
}
