//! Jaeger's UI JSON model (`internal/uimodel` in Jaeger) and the conversion from Skein's
//! model, following the OTLP → Jaeger mapping of the OpenTelemetry Collector translator.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::Engine as _;
use serde::Serialize;
use skein_model::{AttrValue, KeyValue, SERVICE_NAME, Span, SpanId, TraceId};
use skein_store::synthetic_tags;

/// `{"data":…,"total":…,"limit":…,"offset":…,"errors":…}`, Jaeger's envelope for every answer.
#[derive(Debug, Serialize)]
pub struct Response<T> {
    pub data: T,
    pub total: usize,
    pub limit: usize,
    pub offset: usize,
    pub errors: Option<Vec<ResponseError>>,
}

impl<T> Response<T> {
    pub fn new(data: T, total: usize) -> Self {
        Response { data, total, limit: 0, offset: 0, errors: None }
    }
}

/// One entry of `errors`.
#[derive(Debug, Serialize)]
pub struct ResponseError {
    pub code: u16,
    pub msg: String,
    #[serde(rename = "traceID", skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<JSpan>,
    pub processes: BTreeMap<String, Process>,
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JSpan {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub flags: u32,
    pub operation_name: String,
    pub references: Vec<Reference>,
    /// Microseconds since the unix epoch.
    pub start_time: u64,
    /// Microseconds.
    pub duration: u64,
    pub tags: Vec<Tag>,
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
    pub warnings: Option<Vec<String>>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    pub ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    pub service_name: String,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Serialize)]
pub struct Log {
    pub timestamp: u64,
    pub fields: Vec<Tag>,
}

/// A typed tag: `{"key":…,"type":"string|bool|int64|float64|binary","value":…}`.
#[derive(Debug, Serialize, PartialEq)]
pub struct Tag {
    pub key: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: serde_json::Value,
}

/// Largest integer a JavaScript number holds exactly; beyond it Jaeger sends int64 as a string.
const MAX_SAFE_INT: i64 = (1 << 53) - 1;

impl Tag {
    pub fn string(key: impl Into<String>, value: impl Into<String>) -> Tag {
        Tag { key: key.into(), kind: "string", value: value.into().into() }
    }

    pub fn from_attr(key: &str, value: &AttrValue) -> Tag {
        let (kind, value) = match value {
            AttrValue::Empty => ("string", "".into()),
            AttrValue::Str(s) => ("string", s.as_str().into()),
            AttrValue::Bool(b) => ("bool", (*b).into()),
            AttrValue::Int(i) if (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(i) => ("int64", (*i).into()),
            AttrValue::Int(i) => ("int64", i.to_string().into()),
            AttrValue::Double(d) => match serde_json::Number::from_f64(*d) {
                Some(n) => ("float64", serde_json::Value::Number(n)),
                None => ("float64", d.to_string().into()),
            },
            AttrValue::Bytes(b) => ("binary", base64::engine::general_purpose::STANDARD.encode(b).into()),
            nested @ (AttrValue::Array(_) | AttrValue::KvList(_)) => {
                ("string", attr_to_json(nested).to_string().into())
            }
        };
        Tag { key: key.to_owned(), kind, value }
    }
}

/// An attribute value as plain JSON (arrays and kvlists as JSON arrays and objects).
pub fn attr_to_json(value: &AttrValue) -> serde_json::Value {
    match value {
        AttrValue::Empty => serde_json::Value::Null,
        AttrValue::Str(s) => s.as_str().into(),
        AttrValue::Bool(b) => (*b).into(),
        AttrValue::Int(i) => (*i).into(),
        AttrValue::Double(d) => serde_json::Number::from_f64(*d)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| d.to_string().into()),
        AttrValue::Bytes(b) => base64::engine::general_purpose::STANDARD.encode(b).into(),
        AttrValue::Array(items) => items.iter().map(attr_to_json).collect(),
        AttrValue::KvList(kvs) => kvs
            .iter()
            .map(|kv| (kv.key.to_string(), attr_to_json(&kv.value)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn tags(attrs: &[KeyValue]) -> Vec<Tag> {
    attrs.iter().map(|kv| Tag::from_attr(&kv.key, &kv.value)).collect()
}

fn micros(nanos: u64) -> u64 {
    nanos / 1_000
}

/// Converts the spans of one trace into Jaeger's trace view. Spans are ordered by start time;
/// duplicates of one span id (OTLP retries) are shown once; spans whose parent is not in the
/// trace keep their reference and carry a warning.
pub fn to_jaeger_trace(trace_id: TraceId, mut spans: Vec<Span>) -> Trace {
    spans.sort_by(|a, b| a.span_id.cmp(&b.span_id).then(a.start_time_unix_nano.cmp(&b.start_time_unix_nano)));
    spans.dedup_by(|a, b| a.span_id == b.span_id);
    spans.sort_by(|a, b| a.start_time_unix_nano.cmp(&b.start_time_unix_nano).then(a.span_id.cmp(&b.span_id)));

    let present: HashSet<SpanId> = spans.iter().map(|s| s.span_id).collect();
    let mut processes: Vec<Process> = Vec::new();
    let mut by_resource: HashMap<*const skein_model::Resource, usize> = HashMap::new();
    let mut out = Vec::with_capacity(spans.len());
    for span in &spans {
        let idx = *by_resource.entry(std::sync::Arc::as_ptr(&span.resource)).or_insert_with(|| {
            let process = Process {
                service_name: span.service_name().to_owned(),
                tags: span
                    .resource
                    .attributes
                    .iter()
                    .filter(|kv| kv.key != SERVICE_NAME)
                    .map(|kv| Tag::from_attr(&kv.key, &kv.value))
                    .collect(),
            };
            match processes.iter().position(|p| *p == process) {
                Some(i) => i,
                None => {
                    processes.push(process);
                    processes.len() - 1
                }
            }
        });
        out.push(to_jaeger_span(span, format!("p{}", idx + 1), &present));
    }
    Trace {
        trace_id: trace_id.to_hex(),
        spans: out,
        processes: processes.into_iter().enumerate().map(|(i, p)| (format!("p{}", i + 1), p)).collect(),
        warnings: None,
    }
}

fn to_jaeger_span(span: &Span, process_id: String, present: &HashSet<SpanId>) -> JSpan {
    let trace_id = span.trace_id.to_hex();
    let mut references = Vec::with_capacity(1 + span.links.len());
    let mut warnings = Vec::new();
    if let Some(parent) = span.parent_span_id {
        references.push(Reference {
            ref_type: "CHILD_OF",
            trace_id: trace_id.clone(),
            span_id: parent.to_hex(),
        });
        if !present.contains(&parent) {
            warnings.push(format!(
                "parent span {parent} is not in this trace: the parent was lost, dropped or not yet received"
            ));
        }
    }
    for link in &span.links {
        references.push(Reference {
            ref_type: "FOLLOWS_FROM",
            trace_id: link.trace_id.to_hex(),
            span_id: link.span_id.to_hex(),
        });
    }
    let mut tags = tags(&span.attributes);
    tags.extend(synthetic_tags(span).into_iter().map(|(k, v)| {
        if k == "error" { Tag { key: k.into(), kind: "bool", value: true.into() } } else { Tag::string(k, v) }
    }));
    if !span.trace_state.is_empty() {
        tags.push(Tag::string("w3c.tracestate", span.trace_state.clone()));
    }
    for (key, n) in [
        ("otel.dropped_attributes_count", span.dropped_attributes_count),
        ("otel.dropped_events_count", span.dropped_events_count),
        ("otel.dropped_links_count", span.dropped_links_count),
    ] {
        if n > 0 {
            tags.push(Tag { key: key.into(), kind: "int64", value: n.into() });
        }
    }
    let logs = span
        .events
        .iter()
        .map(|e| {
            let mut fields = vec![Tag::string("event", e.name.clone())];
            fields.extend(self::tags(&e.attributes));
            Log { timestamp: micros(e.time_unix_nano), fields }
        })
        .collect();
    JSpan {
        trace_id,
        span_id: span.span_id.to_hex(),
        flags: span.flags & 0xff,
        operation_name: span.name.to_string(),
        references,
        start_time: micros(span.start_time_unix_nano),
        duration: micros(span.duration_nanos()),
        tags,
        logs,
        process_id,
        warnings: if warnings.is_empty() { None } else { Some(warnings) },
    }
}
