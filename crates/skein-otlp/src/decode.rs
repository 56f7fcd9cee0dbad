//! Bytes → `ExportTraceServiceRequest` → validated model spans.

use std::sync::Arc;

use prost::Message;
use skein_model::{
    AttrValue, Event, InstrumentationScope, KeyValue, Link, Resource, Span, SpanId, SpanKind, Status,
    StatusCode, TraceId,
};

use crate::proto::collector::ExportTraceServiceRequest;
use crate::proto::common as pc;
use crate::proto::trace as pt;

/// Limits applied to every span of a request. A span that breaks one is rejected (and
/// counted in the OTLP partial-success answer); the other spans of the request are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Deepest allowed `AnyValue` nesting (a scalar is depth 1, `[1]` is depth 2).
    pub max_attribute_depth: usize,
    /// Longest allowed string or bytes value, and longest key, in bytes.
    pub max_attribute_value_bytes: usize,
    /// Most attributes allowed on one span, event, link, resource or scope.
    pub max_attributes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_attribute_depth: 8, max_attribute_value_bytes: 64 * 1024, max_attributes: 1024 }
    }
}

/// A request body that could not be decoded at all.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed OTLP protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("malformed OTLP JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes an OTLP/protobuf `ExportTraceServiceRequest`.
pub fn decode_protobuf(body: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(ExportTraceServiceRequest::decode(body)?)
}

/// Decodes an OTLP/protobuf `ExportTraceServiceRequest` straight into model spans: the same
/// result as [`decode_protobuf`] followed by [`to_model`], at a fraction of the allocations
/// for the requests whose spans are all valid (the others take exactly that general path).
pub fn decode_protobuf_to_model(body: &[u8], limits: &Limits) -> Result<ConvertedBatch, DecodeError> {
    decode_protobuf_sharing(body, limits, None)
}

fn decode_protobuf_sharing(
    body: &[u8],
    limits: &Limits,
    known: Option<&std::sync::Mutex<direct::Known>>,
) -> Result<ConvertedBatch, DecodeError> {
    match direct::decode(body, limits, known) {
        Ok(spans) => Ok(ConvertedBatch { spans, rejected: 0, errors: Vec::new() }),
        Err(direct::Fallback) => Ok(to_model(decode_protobuf(body)?, limits)),
    }
}

/// Decodes OTLP/protobuf requests as [`decode_protobuf_to_model`] does (with its limits),
/// sharing what requests repeat: an SDK sends its resource (often 15–20 attributes) and
/// instrumentation scope in every request, and decoded anew, each request's spans would
/// carry copies of their own, which a store then has to tell apart by content, request after
/// request. This decoder keeps every resource and scope it decodes (by the bytes they came
/// as; a thousand of each at most) and hands out the same `Arc` for the same bytes. The
/// spans are equal either way. Shared by the receivers of one server.
#[derive(Default)]
pub struct ProtobufDecoder {
    limits: Limits,
    known: std::sync::Mutex<direct::Known>,
}

impl std::fmt::Debug for ProtobufDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtobufDecoder").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl ProtobufDecoder {
    pub fn new(limits: Limits) -> Self {
        ProtobufDecoder { limits, known: Default::default() }
    }

    /// [`decode_protobuf_to_model`] with this decoder's limits, resources and scopes met
    /// before shared.
    pub fn decode(&self, body: &[u8]) -> Result<ConvertedBatch, DecodeError> {
        decode_protobuf_sharing(body, &self.limits, Some(&self.known))
    }

    /// How many resources it keeps now.
    #[cfg(test)]
    fn known_resources(&self) -> usize {
        self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).resources()
    }
}

/// Decodes an OTLP/JSON `ExportTraceServiceRequest` (hex ids, enums as integers, 64-bit
/// integers as strings or numbers, as the OTLP spec says).
pub fn decode_json(body: &[u8]) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(serde_json::from_slice(body)?)
}

/// The result of converting one request: the valid spans and why the others were rejected.
#[derive(Debug, Default)]
pub struct ConvertedBatch {
    pub spans: Vec<Span>,
    /// Number of spans rejected.
    pub rejected: u64,
    /// One message per rejected span (at most [`ConvertedBatch::MAX_MESSAGES`] kept).
    pub errors: Vec<String>,
}

impl ConvertedBatch {
    /// Messages kept for the partial-success answer; the rest are only counted.
    pub const MAX_MESSAGES: usize = 10;

    /// The OTLP partial-success `error_message`: the first problems, and how many more.
    pub fn error_message(&self) -> String {
        let mut msg = self.errors.join("; ");
        let hidden = self.rejected as usize - self.errors.len().min(self.rejected as usize);
        if hidden > 0 {
            msg.push_str(&format!("; and {hidden} more rejected spans"));
        }
        msg
    }

    fn reject(&mut self, message: String) {
        self.rejected += 1;
        if self.errors.len() < Self::MAX_MESSAGES {
            self.errors.push(message);
        }
    }
}

/// Maps a decoded request into model spans, rejecting the spans that break OTLP's rules
/// (ids of the wrong length or all zeros) or the [`Limits`].
pub fn to_model(request: ExportTraceServiceRequest, limits: &Limits) -> ConvertedBatch {
    let mut out = ConvertedBatch::default();
    // One allocation for all the spans (a request holds hundreds; growing by doubling would
    // copy them and touch fresh memory several times).
    let total: usize =
        request.resource_spans.iter().flat_map(|rs| &rs.scope_spans).map(|ss| ss.spans.len()).sum();
    out.spans.reserve_exact(total);
    for (ri, rs) in request.resource_spans.into_iter().enumerate() {
        let span_count: usize = rs.scope_spans.iter().map(|ss| ss.spans.len()).sum();
        let resource = rs.resource.unwrap_or_default();
        let resource = match attributes(resource.attributes, limits) {
            Ok(attributes) => Arc::new(Resource {
                attributes,
                dropped_attributes_count: resource.dropped_attributes_count,
                schema_url: rs.schema_url,
            }),
            Err(e) => {
                for _ in 0..span_count {
                    out.reject(format!("resource_spans[{ri}]: resource {e}"));
                }
                continue;
            }
        };
        for (si, ss) in rs.scope_spans.into_iter().enumerate() {
            let scope = ss.scope.unwrap_or_default();
            let scope = match attributes(scope.attributes, limits) {
                Ok(attributes) => Arc::new(InstrumentationScope {
                    name: scope.name,
                    version: scope.version,
                    attributes,
                    dropped_attributes_count: scope.dropped_attributes_count,
                    schema_url: ss.schema_url,
                }),
                Err(e) => {
                    for _ in 0..ss.spans.len() {
                        out.reject(format!("resource_spans[{ri}].scope_spans[{si}]: scope {e}"));
                    }
                    continue;
                }
            };
            for (pi, span) in ss.spans.into_iter().enumerate() {
                match convert_span(span, &resource, &scope, limits) {
                    Ok(span) => out.spans.push(span),
                    Err(e) => out.reject(format!("resource_spans[{ri}].scope_spans[{si}].spans[{pi}]: {e}")),
                }
            }
        }
    }
    out
}

fn convert_span(
    span: pt::Span,
    resource: &Arc<Resource>,
    scope: &Arc<InstrumentationScope>,
    limits: &Limits,
) -> Result<Span, String> {
    let trace_id = TraceId::from_slice(&span.trace_id)
        .map_err(|e| format!("invalid trace_id {:?}: {e}", hex(&span.trace_id)))?;
    let span_id = SpanId::from_slice(&span.span_id)
        .map_err(|e| format!("invalid span_id {:?}: {e}", hex(&span.span_id)))?;
    let parent_span_id = if span.parent_span_id.is_empty() || span.parent_span_id == [0; 8] {
        None
    } else {
        Some(
            SpanId::from_slice(&span.parent_span_id)
                .map_err(|e| format!("invalid parent_span_id {:?}: {e}", hex(&span.parent_span_id)))?,
        )
    };
    let ctx = |what: &str, e: String| format!("span {span_id} of trace {trace_id}: {what}{e}");
    let kind = match pt::span::SpanKind::try_from(span.kind) {
        Ok(pt::span::SpanKind::Unspecified) => SpanKind::Unspecified,
        Ok(pt::span::SpanKind::Internal) => SpanKind::Internal,
        Ok(pt::span::SpanKind::Server) => SpanKind::Server,
        Ok(pt::span::SpanKind::Client) => SpanKind::Client,
        Ok(pt::span::SpanKind::Producer) => SpanKind::Producer,
        Ok(pt::span::SpanKind::Consumer) => SpanKind::Consumer,
        Err(_) => return Err(ctx("", format!("unknown span kind {}", span.kind))),
    };
    let status = match span.status {
        None => Status::default(),
        Some(s) => Status {
            code: match pt::status::StatusCode::try_from(s.code) {
                Ok(pt::status::StatusCode::Unset) => StatusCode::Unset,
                Ok(pt::status::StatusCode::Ok) => StatusCode::Ok,
                Ok(pt::status::StatusCode::Error) => StatusCode::Error,
                Err(_) => return Err(ctx("", format!("unknown status code {}", s.code))),
            },
            message: s.message,
        },
    };
    check_len("name", span.name.len(), limits).map_err(|e| ctx("", e))?;
    let span_attributes = attributes(span.attributes, limits).map_err(|e| ctx("", e))?;
    let mut events = Vec::with_capacity(span.events.len());
    for (i, ev) in span.events.into_iter().enumerate() {
        events.push(Event {
            time_unix_nano: ev.time_unix_nano,
            attributes: attributes(ev.attributes, limits).map_err(|e| ctx(&format!("events[{i}] "), e))?,
            name: ev.name.into(),
            dropped_attributes_count: ev.dropped_attributes_count,
        });
    }
    let mut links = Vec::with_capacity(span.links.len());
    for (i, link) in span.links.into_iter().enumerate() {
        let trace_id = TraceId::from_slice(&link.trace_id).map_err(|e| {
            ctx(&format!("links[{i}] "), format!("invalid trace_id {:?}: {e}", hex(&link.trace_id)))
        })?;
        let span_id = SpanId::from_slice(&link.span_id).map_err(|e| {
            ctx(&format!("links[{i}] "), format!("invalid span_id {:?}: {e}", hex(&link.span_id)))
        })?;
        links.push(Link {
            trace_id,
            span_id,
            trace_state: link.trace_state,
            attributes: attributes(link.attributes, limits).map_err(|e| ctx(&format!("links[{i}] "), e))?,
            dropped_attributes_count: link.dropped_attributes_count,
            flags: link.flags,
        });
    }
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        trace_state: span.trace_state,
        flags: span.flags,
        name: span.name.into(),
        kind,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: span_attributes,
        dropped_attributes_count: span.dropped_attributes_count,
        events,
        dropped_events_count: span.dropped_events_count,
        links,
        dropped_links_count: span.dropped_links_count,
        status,
        resource: Arc::clone(resource),
        scope: Arc::clone(scope),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_len(what: &str, len: usize, limits: &Limits) -> Result<(), String> {
    if len > limits.max_attribute_value_bytes {
        return Err(format!(
            "{what} is {len} bytes, over the limit of {} bytes",
            limits.max_attribute_value_bytes
        ));
    }
    Ok(())
}

fn attributes(kvs: Vec<pc::KeyValue>, limits: &Limits) -> Result<Vec<KeyValue>, String> {
    if kvs.len() > limits.max_attributes {
        return Err(format!("has {} attributes, over the limit of {}", kvs.len(), limits.max_attributes));
    }
    // A new vector of exactly the right size (prost's grew by doubling): the head keeps it.
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        check_len("attribute key", kv.key.len(), limits)?;
        let value = any_value(kv.value, 1, limits).map_err(|e| format!("attribute {:?}: {e}", kv.key))?;
        out.push(KeyValue { key: kv.key.into(), value });
    }
    Ok(out)
}

fn any_value(v: Option<pc::AnyValue>, depth: usize, limits: &Limits) -> Result<AttrValue, String> {
    use pc::any_value::Value;
    if depth > limits.max_attribute_depth {
        return Err(format!("value nested deeper than the limit of {} levels", limits.max_attribute_depth));
    }
    Ok(match v.and_then(|v| v.value) {
        None => AttrValue::Empty,
        Some(Value::StringValue(s)) => {
            check_len("value", s.len(), limits)?;
            AttrValue::Str(s.into())
        }
        Some(Value::StringValueStrindex(_)) => {
            return Err("string_value_strindex is only valid in OTLP profiles, not in traces".into());
        }
        Some(Value::BoolValue(b)) => AttrValue::Bool(b),
        Some(Value::IntValue(i)) => AttrValue::Int(i),
        Some(Value::DoubleValue(d)) => AttrValue::Double(d),
        Some(Value::BytesValue(b)) => {
            check_len("value", b.len(), limits)?;
            AttrValue::Bytes(b)
        }
        Some(Value::ArrayValue(a)) => {
            if a.values.len() > limits.max_attributes {
                return Err(format!(
                    "array has {} elements, over the limit of {}",
                    a.values.len(),
                    limits.max_attributes
                ));
            }
            AttrValue::Array(
                a.values
                    .into_iter()
                    .map(|v| any_value(Some(v), depth + 1, limits))
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(Value::KvlistValue(kvl)) => {
            if kvl.values.len() > limits.max_attributes {
                return Err(format!(
                    "kvlist has {} entries, over the limit of {}",
                    kvl.values.len(),
                    limits.max_attributes
                ));
            }
            AttrValue::KvList(
                kvl.values
                    .into_iter()
                    .map(|kv| {
                        check_len("attribute key", kv.key.len(), limits)?;
                        Ok(KeyValue { value: any_value(kv.value, depth + 1, limits)?, key: kv.key.into() })
                    })
                    .collect::<Result<_, String>>()?,
            )
        }
    })
}

mod direct;

#[cfg(test)]
mod direct_tests;
#[cfg(test)]
mod tests;
