//! The doctor's answers as types: the JSON of `GET /api/v1/doctor` and
//! `GET /api/v1/traces/{id}/diagnosis` is written from these, and `skein doctor` and the tests
//! read it back into them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{EdgeHealth, Example, Finding, FindingKind, Pair};

/// When this process last stored spans, shared by the receivers (which record) and the doctor
/// (which asks how long the ingest has been quiet). Starts at the process's start.
#[derive(Clone, Debug)]
pub struct IngestActivity(Arc<AtomicU64>);

impl IngestActivity {
    /// Quiet since now (the process's start).
    pub fn starting_now() -> Self {
        IngestActivity(Arc::new(AtomicU64::new(crate::params::now_nanos())))
    }

    /// Spans were just stored.
    pub fn record_now(&self) {
        self.0.fetch_max(crate::params::now_nanos(), Ordering::Relaxed);
    }

    /// Unix nanoseconds of the last stored batch (or the start).
    pub fn last_nanos(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// `GET /api/v1/doctor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DoctorReport {
    pub window: Window,
    /// Spans that ended this recently are not evidence yet, unless the ingest is quiet.
    pub grace_seconds: f64,
    /// How long the ingest must have received nothing for every span to count as settled.
    pub settle_seconds: f64,
    /// How long this Skein has received nothing.
    pub quiet_for_seconds: f64,
    /// Whether the ingest has been quiet for `settle_seconds`: everything received is judged.
    pub ingest_quiet: bool,
    pub service: Option<String>,
    pub traces: usize,
    pub spans: usize,
    /// Traces with a span too recent to judge: they are not judged, and so not called healthy.
    pub unsettled_traces: usize,
    pub truncated: bool,
    /// Whether any finding is a broken chain.
    pub broken: bool,
    pub findings: Vec<FindingReport>,
    pub edges: Vec<EdgeReport>,
}

/// A time window, unix nanoseconds as decimal strings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub start: String,
    pub end: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingReport {
    /// `split_trace`, `detached_work`, `orphan_spans` or `uninstrumented_peer`.
    pub kind: String,
    pub broken: bool,
    pub service: String,
    pub peer: Option<String>,
    pub operation: String,
    pub peer_operation: Option<String>,
    pub count: usize,
    pub confidence: f64,
    pub message: String,
    /// What the finding rests on.
    pub evidence: String,
    pub examples: Vec<ExampleReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleReport {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    #[serde(rename = "otherTraceID")]
    pub other_trace_id: Option<String>,
    #[serde(rename = "otherSpanID")]
    pub other_span_id: Option<String>,
    /// For pairs: no other candidate, so the two pieces surely belong together.
    pub unambiguous: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeReport {
    pub caller: String,
    pub callee: String,
    pub joined: usize,
    pub split: usize,
    pub health: f64,
}

/// `GET /api/v1/traces/{id}/diagnosis`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// The trace (or its surroundings) is too recent to judge yet.
    pub unsettled: bool,
    pub problems: Vec<Problem>,
    pub related: Vec<Related>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: String,
    /// `continues_in` or `continues_from` for pairs; absent for orphans.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub relation: Option<String>,
    #[serde(rename = "spanID")]
    pub span_id: String,
    #[serde(rename = "otherTraceID", skip_serializing_if = "Option::is_none", default)]
    pub other_trace_id: Option<String>,
    #[serde(rename = "otherSpanID", skip_serializing_if = "Option::is_none", default)]
    pub other_span_id: Option<String>,
    #[serde(rename = "missingParentID", skip_serializing_if = "Option::is_none", default)]
    pub missing_parent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub confidence: Option<f64>,
    /// For pairs: whether this pairing is the only one possible.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unambiguous: Option<bool>,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Related {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub relation: String,
    pub kind: String,
    pub confidence: f64,
    pub unambiguous: bool,
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl From<&Example> for ExampleReport {
    fn from(e: &Example) -> Self {
        ExampleReport {
            trace_id: e.trace_id.to_hex(),
            span_id: e.span_id.to_hex(),
            other_trace_id: e.other_trace_id.map(|t| t.to_hex()),
            other_span_id: e.other_span_id.map(|s| s.to_hex()),
            unambiguous: e.unambiguous,
        }
    }
}

impl From<&Finding> for FindingReport {
    fn from(f: &Finding) -> Self {
        FindingReport {
            kind: f.kind.as_str().to_owned(),
            broken: f.broken,
            service: f.service.clone(),
            peer: f.peer.clone(),
            operation: f.operation.clone(),
            peer_operation: f.peer_operation.clone(),
            count: f.count,
            confidence: round3(f.confidence),
            message: f.message.clone(),
            evidence: f.evidence.clone(),
            examples: f.examples.iter().map(ExampleReport::from).collect(),
        }
    }
}

impl From<&EdgeHealth> for EdgeReport {
    fn from(e: &EdgeHealth) -> Self {
        EdgeReport {
            caller: e.caller.clone(),
            callee: e.callee.clone(),
            joined: e.joined,
            split: e.split,
            health: round3(e.health()),
        }
    }
}

impl Problem {
    /// The problem a pair makes for the trace on its `relation` side.
    pub fn of_pair(p: &Pair, continues_in: bool) -> Problem {
        let (span, other_trace, other_span) = if continues_in {
            (p.from_span, p.to_trace, p.to_span)
        } else {
            (p.to_span, p.from_trace, p.from_span)
        };
        let message = match (p.kind, continues_in) {
            (FindingKind::SplitTrace, true) => {
                "the request continues in another trace: the context was lost after this span"
            }
            (FindingKind::SplitTrace, false) => {
                "this trace is the continuation of a request whose context was lost in another trace"
            }
            (_, true) => "work started under this span lost its context and runs in another trace",
            (_, false) => {
                "this trace started while a request of another trace ran in the same process: its context was lost"
            }
        };
        Problem {
            kind: p.kind.as_str().to_owned(),
            relation: Some(if continues_in { "continues_in" } else { "continues_from" }.to_owned()),
            span_id: span.to_hex(),
            other_trace_id: Some(other_trace.to_hex()),
            other_span_id: Some(other_span.to_hex()),
            missing_parent_id: None,
            confidence: Some(p.confidence_milli as f64 / 1000.0),
            unambiguous: Some(p.unambiguous),
            message: message.to_owned(),
        }
    }
}
