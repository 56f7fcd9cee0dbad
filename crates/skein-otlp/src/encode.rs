//! Model spans → OTLP `TracesData` (for the OTLP-JSON query API).

use std::sync::Arc;

use skein_model::{AttrValue, KeyValue, Span, SpanKind, StatusCode};

use crate::proto::common as pc;
use crate::proto::resource as pr;
use crate::proto::trace as pt;

/// Groups spans by resource and scope, keeping their order, and maps every field back to OTLP.
pub fn to_traces_data(spans: &[Span]) -> pt::TracesData {
    let mut resource_spans: Vec<(Arc<skein_model::Resource>, pt::ResourceSpans)> = Vec::new();
    for span in spans {
        let idx = match resource_spans
            .iter()
            .position(|(r, _)| Arc::ptr_eq(r, &span.resource) || **r == *span.resource)
        {
            Some(i) => i,
            None => {
                resource_spans.push((
                    Arc::clone(&span.resource),
                    pt::ResourceSpans {
                        resource: Some(pr::Resource {
                            attributes: attributes(&span.resource.attributes),
                            dropped_attributes_count: span.resource.dropped_attributes_count,
                            entity_refs: Vec::new(),
                        }),
                        scope_spans: Vec::new(),
                        schema_url: span.resource.schema_url.clone(),
                    },
                ));
                resource_spans.len() - 1
            }
        };
        let rs = &mut resource_spans[idx].1;
        let scope = &span.scope;
        let proto_scope = pc::InstrumentationScope {
            name: scope.name.clone(),
            version: scope.version.clone(),
            attributes: attributes(&scope.attributes),
            dropped_attributes_count: scope.dropped_attributes_count,
        };
        let ss = match rs
            .scope_spans
            .iter_mut()
            .position(|ss| ss.scope.as_ref() == Some(&proto_scope) && ss.schema_url == scope.schema_url)
        {
            Some(i) => &mut rs.scope_spans[i],
            None => {
                rs.scope_spans.push(pt::ScopeSpans {
                    scope: Some(proto_scope),
                    spans: Vec::new(),
                    schema_url: scope.schema_url.clone(),
                });
                rs.scope_spans.last_mut().expect("just pushed")
            }
        };
        ss.spans.push(span_to_proto(span));
    }
    pt::TracesData { resource_spans: resource_spans.into_iter().map(|(_, rs)| rs).collect() }
}

/// Serializes `TracesData` as OTLP/JSON (hex ids, 64-bit integers as strings).
pub fn traces_data_to_json(data: &pt::TracesData) -> serde_json::Value {
    serde_json::to_value(data).expect("OTLP types always serialize")
}

fn span_to_proto(span: &Span) -> pt::Span {
    pt::Span {
        trace_id: span.trace_id.as_bytes().to_vec(),
        span_id: span.span_id.as_bytes().to_vec(),
        trace_state: span.trace_state.clone(),
        parent_span_id: span.parent_span_id.map(|p| p.as_bytes().to_vec()).unwrap_or_default(),
        flags: span.flags,
        name: span.name.to_string(),
        kind: match span.kind {
            SpanKind::Unspecified => pt::span::SpanKind::Unspecified,
            SpanKind::Internal => pt::span::SpanKind::Internal,
            SpanKind::Server => pt::span::SpanKind::Server,
            SpanKind::Client => pt::span::SpanKind::Client,
            SpanKind::Producer => pt::span::SpanKind::Producer,
            SpanKind::Consumer => pt::span::SpanKind::Consumer,
        } as i32,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: attributes(&span.attributes),
        dropped_attributes_count: span.dropped_attributes_count,
        events: span
            .events
            .iter()
            .map(|e| pt::span::Event {
                time_unix_nano: e.time_unix_nano,
                name: e.name.to_string(),
                attributes: attributes(&e.attributes),
                dropped_attributes_count: e.dropped_attributes_count,
            })
            .collect(),
        dropped_events_count: span.dropped_events_count,
        links: span
            .links
            .iter()
            .map(|l| pt::span::Link {
                trace_id: l.trace_id.as_bytes().to_vec(),
                span_id: l.span_id.as_bytes().to_vec(),
                trace_state: l.trace_state.clone(),
                attributes: attributes(&l.attributes),
                dropped_attributes_count: l.dropped_attributes_count,
                flags: l.flags,
            })
            .collect(),
        dropped_links_count: span.dropped_links_count,
        status: Some(pt::Status {
            message: span.status.message.clone(),
            code: match span.status.code {
                StatusCode::Unset => pt::status::StatusCode::Unset,
                StatusCode::Ok => pt::status::StatusCode::Ok,
                StatusCode::Error => pt::status::StatusCode::Error,
            } as i32,
        }),
    }
}

fn attributes(kvs: &[KeyValue]) -> Vec<pc::KeyValue> {
    kvs.iter()
        .map(|kv| pc::KeyValue {
            key: kv.key.to_string(),
            value: Some(any_value(&kv.value)),
            ..Default::default()
        })
        .collect()
}

fn any_value(v: &AttrValue) -> pc::AnyValue {
    use pc::any_value::Value;
    let value = match v {
        AttrValue::Empty => None,
        AttrValue::Str(s) => Some(Value::StringValue(s.to_string())),
        AttrValue::Bool(b) => Some(Value::BoolValue(*b)),
        AttrValue::Int(i) => Some(Value::IntValue(*i)),
        AttrValue::Double(d) => Some(Value::DoubleValue(*d)),
        AttrValue::Bytes(b) => Some(Value::BytesValue(b.clone())),
        AttrValue::Array(items) => {
            Some(Value::ArrayValue(pc::ArrayValue { values: items.iter().map(any_value).collect() }))
        }
        AttrValue::KvList(kvs) => Some(Value::KvlistValue(pc::KeyValueList { values: attributes(kvs) })),
    };
    pc::AnyValue { value }
}
