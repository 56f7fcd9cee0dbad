//! The trace view: one trace in the compact form the web UI's trace page draws, with its
//! critical path. `GET /api/v1/traces/{traceID}/view`.
//!
//! Every field of every span is kept (nothing is summarised away), but strings are interned in
//! one table and times are offsets, so a 50,000-span trace is a few megabytes that a browser
//! parses in tens of milliseconds, where OTLP JSON would be ~35 MB. The format is specified in
//! `docs/query-api.md`; attribute values arrive already rendered as the text the UI shows, with
//! their type.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Serialize;
use skein_model::{AttrValue, KeyValue, Span, TraceId};

use crate::analysis;

/// The whole view of one trace.
#[derive(Debug, Serialize)]
pub struct TraceView {
    /// Format version of this answer (bumped on incompatible changes).
    pub version: u32,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    /// Unix nanoseconds (decimal string) of the earliest span start; every time is an offset from it.
    pub base: String,
    /// The string table: names, attribute keys and values, messages.
    pub strings: Vec<String>,
    pub resources: Vec<ResourceView>,
    pub scopes: Vec<ScopeView>,
    pub spans: Vec<SpanRow>,
    /// `[spanIndex, startOffsetNs, endOffsetNs]`, latest first.
    #[serde(rename = "criticalPath")]
    pub critical_path: Vec<(usize, u64, u64)>,
}

/// Attributes as a flat list `[keyIndex, valueIndex, type, …]`; types: 0 empty, 1 string, 2 bool,
/// 3 int, 4 double, 5 bytes (base64), 6 array (JSON), 7 map (JSON).
pub type Attrs = Vec<u32>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ResourceView {
    pub attributes: Attrs,
    pub dropped: u32,
    #[serde(rename = "schemaUrl")]
    pub schema_url: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ScopeView {
    pub name: u32,
    pub version: u32,
    pub attributes: Attrs,
    pub dropped: u32,
    #[serde(rename = "schemaUrl")]
    pub schema_url: u32,
}

/// One span as an array:
/// `[spanId, parentSpanId, name, kind, startOffsetNs, durationNs, resource, scope, statusCode,
///   statusMessage, attributes, events, links, traceState, flags, [droppedAttributes,
///   droppedEvents, droppedLinks]]`.
/// `kind` and `statusCode` are OTLP's numbers; `name`, `statusMessage` and `traceState` index
/// the string table.
#[derive(Debug, Serialize)]
pub struct SpanRow(
    pub String,
    pub String,
    pub u32,
    pub u8,
    pub u64,
    pub u64,
    pub u32,
    pub u32,
    pub u8,
    pub u32,
    pub Attrs,
    pub Vec<EventRow>,
    pub Vec<LinkRow>,
    pub u32,
    pub u32,
    pub [u32; 3],
);

/// `[offsetFromSpanStartNs, name, attributes, droppedAttributes]`.
#[derive(Debug, Serialize)]
pub struct EventRow(pub i64, pub u32, pub Attrs, pub u32);

/// `[traceId, spanId, traceState, attributes, droppedAttributes, flags]`.
#[derive(Debug, Serialize)]
pub struct LinkRow(pub String, pub String, pub u32, pub Attrs, pub u32, pub u32);

#[derive(Default)]
struct Interner {
    strings: Vec<String>,
    index: HashMap<String, u32>,
}

impl Interner {
    fn get(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    fn attrs(&mut self, kvs: &[KeyValue]) -> Attrs {
        let mut out = Vec::with_capacity(kvs.len() * 3);
        for kv in kvs {
            let (ty, text) = render(&kv.value);
            out.push(self.get(&kv.key));
            out.push(self.get(&text));
            out.push(ty);
        }
        out
    }
}

/// An attribute value as the text the UI shows, and its type code.
fn render(value: &AttrValue) -> (u32, String) {
    match value {
        AttrValue::Empty => (0, String::new()),
        AttrValue::Str(s) => (1, s.to_string()),
        AttrValue::Bool(b) => (2, b.to_string()),
        AttrValue::Int(i) => (3, i.to_string()),
        AttrValue::Double(d) => (4, d.to_string()),
        AttrValue::Bytes(b) => (5, base64::engine::general_purpose::STANDARD.encode(b)),
        AttrValue::Array(_) => (6, crate::jaeger::attr_to_json(value).to_string()),
        AttrValue::KvList(_) => (7, crate::jaeger::attr_to_json(value).to_string()),
    }
}

/// Builds the view of a trace. Spans are ordered by start time; a span id sent more than once
/// (an exporter's retry) is shown once.
pub fn trace_view(trace_id: TraceId, mut spans: Vec<Span>) -> TraceView {
    spans.sort_by_key(|s| (s.start_time_unix_nano, s.span_id));
    let mut seen = std::collections::HashSet::with_capacity(spans.len());
    spans.retain(|s| seen.insert(s.span_id));
    let base = spans.iter().map(|s| s.start_time_unix_nano).min().unwrap_or(0);

    let mut strings = Interner::default();
    let mut resources = Vec::new();
    let mut resource_index: HashMap<*const skein_model::Resource, u32> = HashMap::new();
    let mut scopes = Vec::new();
    let mut scope_index: HashMap<*const skein_model::InstrumentationScope, u32> = HashMap::new();
    let (mut resource_content, mut scope_content) = (HashMap::new(), HashMap::new());
    let mut rows = Vec::with_capacity(spans.len());
    let mut position = HashMap::with_capacity(spans.len());
    for (i, s) in spans.iter().enumerate() {
        position.insert(s.span_id, i);
        // Resources and scopes are shared `Arc`s within a request; equal ones from different
        // requests are merged by content below.
        let r = *resource_index.entry(std::sync::Arc::as_ptr(&s.resource)).or_insert_with(|| {
            let view = ResourceView {
                attributes: strings.attrs(&s.resource.attributes),
                dropped: s.resource.dropped_attributes_count,
                schema_url: strings.get(&s.resource.schema_url),
            };
            intern_by_content(&mut resources, &mut resource_content, view)
        });
        let sc = *scope_index.entry(std::sync::Arc::as_ptr(&s.scope)).or_insert_with(|| {
            let view = ScopeView {
                name: strings.get(&s.scope.name),
                version: strings.get(&s.scope.version),
                attributes: strings.attrs(&s.scope.attributes),
                dropped: s.scope.dropped_attributes_count,
                schema_url: strings.get(&s.scope.schema_url),
            };
            intern_by_content(&mut scopes, &mut scope_content, view)
        });
        let events = s
            .events
            .iter()
            .map(|e| {
                let offset = e.time_unix_nano as i128 - s.start_time_unix_nano as i128;
                EventRow(
                    offset.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
                    strings.get(&e.name),
                    strings.attrs(&e.attributes),
                    e.dropped_attributes_count,
                )
            })
            .collect();
        let links = s
            .links
            .iter()
            .map(|l| {
                LinkRow(
                    l.trace_id.to_hex(),
                    l.span_id.to_hex(),
                    strings.get(&l.trace_state),
                    strings.attrs(&l.attributes),
                    l.dropped_attributes_count,
                    l.flags,
                )
            })
            .collect();
        rows.push(SpanRow(
            s.span_id.to_hex(),
            s.parent_span_id.map(|p| p.to_hex()).unwrap_or_default(),
            strings.get(&s.name),
            s.kind.code(),
            s.start_time_unix_nano - base,
            s.duration_nanos(),
            r,
            sc,
            s.status.code.code(),
            strings.get(&s.status.message),
            strings.attrs(&s.attributes),
            events,
            links,
            strings.get(&s.trace_state),
            s.flags,
            [s.dropped_attributes_count, s.dropped_events_count, s.dropped_links_count],
        ));
    }
    let critical_path = analysis::critical_path(&spans)
        .into_iter()
        .map(|seg| (position[&seg.span_id], seg.start - base, seg.end - base))
        .collect();
    TraceView {
        version: 1,
        trace_id: trace_id.to_hex(),
        base: base.to_string(),
        strings: strings.strings,
        resources,
        scopes,
        spans: rows,
        critical_path,
    }
}

fn intern_by_content<T: Clone + Eq + std::hash::Hash>(
    list: &mut Vec<T>,
    index: &mut HashMap<T, u32>,
    item: T,
) -> u32 {
    *index.entry(item).or_insert_with_key(|item| {
        list.push(item.clone());
        (list.len() - 1) as u32
    })
}
