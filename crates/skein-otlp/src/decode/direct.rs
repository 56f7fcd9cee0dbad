//! OTLP/protobuf bytes straight to model spans, without the generated message types.
//!
//! Decoding with `prost` into `ExportTraceServiceRequest` and then converting allocates every
//! key, value and id twice over (a `String` per key and value, a `Vec` per id, vectors grown
//! by doubling) only for the conversion to copy or drop them; at hundreds of thousands of
//! spans per second that was a third of the receiver's CPU. This decoder reads the wire
//! format with `prost`'s own primitives (keys, varints, scalar fields, skipping unknown
//! fields) and builds model spans directly: keys and short values land inline in
//! [`Str`], attribute vectors get exactly their length, ids are copied from the body.
//!
//! It handles the requests that are valid, which is nearly all of them. Anything else (a
//! malformed body, a span the [`Limits`] or OTLP's rules reject, a singular message field
//! sent twice, which protobuf merges, and fields no trace should carry) makes it give up
//! with [`Fallback`], and the caller decodes the request the general way, which words
//! every rejection. So both ways always give the same result; a property test checks it.

use rustc_hash::FxHashMap;
use std::sync::Arc;

use prost::encoding::{self as pe, DecodeContext, WireType};
use skein_model::{
    AttrValue, Event, InstrumentationScope, KeyValue, Link, Resource, Span, SpanId, SpanKind, Status,
    StatusCode, Str, TraceId,
};

use super::Limits;

/// The request needs the general decoder (see the module documentation).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Fallback;

impl From<prost::DecodeError> for Fallback {
    fn from(_: prost::DecodeError) -> Self {
        Fallback
    }
}

type Res<T> = Result<T, Fallback>;

/// Deepest `AnyValue` nesting decoded here whatever the limits say. prost refuses a request
/// whose messages nest more than 100 deep, and this decoder must never accept what prost
/// refuses: an event attribute's value is the 7th message down, and each level of kvlist adds
/// three (`KeyValueList`, `KeyValue`, `AnyValue`), so depth 32 is at most 100 deep.
const MAX_NESTING: usize = 32;

/// Resources and instrumentation scopes decoded before, by the bytes they came as (a
/// resource's with its schema URL before them), for [`crate::ProtobufDecoder`].
#[derive(Default)]
pub(crate) struct Known {
    resources: ByBytes<Resource>,
    scopes: ByBytes<InstrumentationScope>,
    /// Bytes of the keys of both tables.
    bytes: usize,
}

/// Values by the bytes they were decoded from.
type ByBytes<T> = FxHashMap<Box<[u8]>, Arc<T>>;

/// Resources (and, apart, scopes) [`Known`] keeps at most, and the bytes they came as, all
/// together: a deployment sends a few dozen of about a KiB; a client that made a new one per
/// request would otherwise grow the tables without bound, so they are emptied when full.
const MAX_KNOWN: usize = 1024;
const MAX_KNOWN_BYTES: usize = 2 << 20;
/// A resource or scope bigger than this is not kept (decoded anew in every request).
const MAX_KNOWN_EACH: usize = 64 << 10;

impl Known {
    #[cfg(test)]
    pub(crate) fn resources(&self) -> usize {
        self.resources.len()
    }

    /// The value kept for `key` in `table`, else `make`'s, kept.
    fn get_or_make<T>(
        known: &std::sync::Mutex<Known>,
        table: fn(&mut Known) -> &mut ByBytes<T>,
        key: &[u8],
        make: impl FnOnce() -> Res<T>,
    ) -> Res<Arc<T>> {
        if key.len() > MAX_KNOWN_EACH {
            return make().map(Arc::new);
        }
        let lock = || known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(kept) = table(&mut lock()).get(key) {
            return Ok(Arc::clone(kept));
        }
        let made = Arc::new(make()?);
        let mut known = lock();
        if table(&mut known).len() >= MAX_KNOWN || known.bytes + key.len() > MAX_KNOWN_BYTES {
            (known.resources, known.scopes, known.bytes) = Default::default();
        }
        // Another request may have put it in meanwhile: its bytes count once.
        if table(&mut known).insert(key.into(), Arc::clone(&made)).is_none() {
            known.bytes += key.len();
        }
        Ok(made)
    }
}

/// Decodes a request whose spans are all valid; `Err(Fallback)` for anything else. With
/// `known`, resources and scopes whose bytes it has met before are its `Arc`s.
pub(crate) fn decode(
    body: &[u8],
    limits: &Limits,
    known: Option<&std::sync::Mutex<Known>>,
) -> Res<Vec<Span>> {
    let mut d = Decoder {
        limits,
        known,
        key: Vec::new(),
        max_depth: limits.max_attribute_depth.min(MAX_NESTING),
        attrs: Vec::new(),
        spans: Vec::with_capacity(count_spans(body)),
        span_bodies: Vec::new(),
        keys: FxHashMap::default(),
        memo: ByPlace::default(),
        values: ByPlace::default(),
        at: 0,
    };
    each_field(body, |tag, wire_type, buf| match tag {
        1 => d.resource_spans(delimited(wire_type, buf)?),
        _ => skip(tag, wire_type, buf),
    })?;
    Ok(d.spans)
}

/// The spans a request holds, counted by walking its first three levels (a span is a length
/// to skip), so that the decoded spans are moved into a vector of their number once instead of
/// being copied each time it grows. Anything malformed counts as nothing: decoding says why.
pub(crate) fn count_spans(body: &[u8]) -> usize {
    let mut n = 0;
    let _ = each_field(body, |tag, wire_type, buf| match tag {
        1 => each_field(delimited(wire_type, buf)?, |tag, wire_type, buf| match tag {
            2 => each_field(delimited(wire_type, buf)?, |tag, wire_type, buf| match tag {
                2 => {
                    delimited(wire_type, buf)?;
                    n += 1;
                    Ok(())
                }
                _ => skip(tag, wire_type, buf),
            }),
            _ => skip(tag, wire_type, buf),
        }),
        _ => skip(tag, wire_type, buf),
    });
    n
}

/// The longest string a [`Str`] holds without a heap allocation (24 bytes on 64-bit targets).
const INLINE_BYTES: usize = std::mem::size_of::<Str>();

/// Per place in a span, the bytes met there in the span before and the string made of them.
#[derive(Default)]
struct ByPlace<'a>(Vec<(&'a [u8], Str)>);

impl<'a> ByPlace<'a> {
    /// The string of `bytes` at place `at`: the one made before when the span before had the
    /// same bytes there, else `make`'s (kept for the next span).
    #[inline]
    fn get_or_make(&mut self, at: usize, bytes: &'a [u8], make: impl FnOnce() -> Res<Str>) -> Res<Str> {
        if let Some((before, s)) = self.0.get(at)
            && skein_model::same_bytes(before, bytes)
        {
            return Ok(s.clone());
        }
        let s = make()?;
        if self.0.len() <= at {
            self.0.resize(at + 1, (&[], Str::default()));
        }
        self.0[at] = (bytes, s.clone());
        Ok(s)
    }
}

struct Decoder<'a, 'l> {
    limits: &'l Limits,
    known: Option<&'l std::sync::Mutex<Known>>,
    /// The bytes a resource is looked up by in `known` (reused).
    key: Vec<u8>,
    max_depth: usize,
    /// Attributes being decoded, for every list under way (each list splits off its own tail).
    attrs: Vec<KeyValue>,
    spans: Vec<Span>,
    /// The encoded spans of the scope being decoded (reused between scopes).
    span_bodies: Vec<&'a [u8]>,
    /// Attribute keys met so far in this request, by their bytes: a request repeats a handful
    /// of keys in every span, so each is checked as UTF-8 and made into a `Str` once.
    keys: FxHashMap<&'a [u8], Str>,
    /// The keys of the span before, in the order they came: spans of one operation carry
    /// theirs in one order, so most keys are found by comparing with the key at the same
    /// place there, without hashing.
    memo: ByPlace<'a>,
    /// The same for string values: methods, routes, peers, statuses repeat the value at their
    /// place in the span before, and are then neither checked as UTF-8 again nor copied.
    values: ByPlace<'a>,
    /// How many keys of the span being decoded came before.
    at: usize,
}

impl<'a> Decoder<'a, '_> {
    fn resource_spans(&mut self, buf: &'a [u8]) -> Res<()> {
        let mut scopes = Vec::new();
        let (resource, schema_url) = group(buf, &mut scopes)?;
        let resource =
            self.shared(|k| &mut k.resources, schema_url, resource, |d| d.resource(resource, schema_url))?;
        for scope_spans in scopes {
            self.scope_spans(scope_spans, &resource)?;
        }
        Ok(())
    }

    /// A resource or scope (`make` decodes it from `bytes`): without [`Known`], decoded; with
    /// it, the one kept in `table` for the same schema URL and bytes, else decoded and kept.
    fn shared<T>(
        &mut self,
        table: fn(&mut Known) -> &mut ByBytes<T>,
        schema_url: &str,
        bytes: &[u8],
        make: impl FnOnce(&mut Self) -> Res<T>,
    ) -> Res<Arc<T>> {
        let Some(known) = self.known else { return make(self).map(Arc::new) };
        // Kept by the schema URL (length first), then the bytes as they came; in the
        // decoder's reused buffer.
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        key.extend_from_slice(&(schema_url.len() as u32).to_le_bytes());
        key.extend_from_slice(schema_url.as_bytes());
        key.extend_from_slice(bytes);
        let shared = Known::get_or_make(known, table, &key, || make(self));
        self.key = key;
        shared
    }

    fn resource(&mut self, buf: &'a [u8], schema_url: &str) -> Res<Resource> {
        let start = self.attrs.len();
        let mut dropped_attributes_count = 0;
        each_field(buf, |tag, wire_type, buf| match tag {
            1 => self.push_attribute(wire_type, buf),
            2 => Ok(pe::uint32::merge(wire_type, &mut dropped_attributes_count, buf, ctx())?),
            // Entity references: prost validates them; no span carries them yet.
            3 => Err(Fallback),
            _ => skip(tag, wire_type, buf),
        })?;
        Ok(Resource {
            attributes: self.take_attributes(start)?,
            dropped_attributes_count,
            schema_url: schema_url.to_owned(),
        })
    }

    fn scope_spans(&mut self, buf: &'a [u8], resource: &Arc<Resource>) -> Res<()> {
        let mut bodies = std::mem::take(&mut self.span_bodies);
        bodies.clear();
        let (scope, schema_url) = group(buf, &mut bodies)?;
        let scope = self.shared(|k| &mut k.scopes, schema_url, scope, |d| d.scope(scope, schema_url))?;
        self.spans.reserve(bodies.len());
        for body in bodies.drain(..) {
            self.span(body, resource, &scope)?;
        }
        self.span_bodies = bodies;
        Ok(())
    }

    fn scope(&mut self, buf: &'a [u8], schema_url: &str) -> Res<InstrumentationScope> {
        let start = self.attrs.len();
        let (mut name, mut version, mut dropped_attributes_count) = ("", "", 0);
        each_field(buf, |tag, wire_type, buf| match tag {
            1 => set(&mut name, text(wire_type, buf)),
            2 => set(&mut version, text(wire_type, buf)),
            3 => self.push_attribute(wire_type, buf),
            4 => Ok(pe::uint32::merge(wire_type, &mut dropped_attributes_count, buf, ctx())?),
            _ => skip(tag, wire_type, buf),
        })?;
        Ok(InstrumentationScope {
            name: name.to_owned(),
            version: version.to_owned(),
            attributes: self.take_attributes(start)?,
            dropped_attributes_count,
            schema_url: schema_url.to_owned(),
        })
    }

    /// Decodes a span into `self.spans` (pushed where it is made: a span returned by value was
    /// copied, 250 bytes, on its way into the list).
    fn span(
        &mut self,
        buf: &'a [u8],
        resource: &Arc<Resource>,
        scope: &Arc<InstrumentationScope>,
    ) -> Res<()> {
        let start = self.attrs.len();
        self.at = 0;
        let (mut trace_id, mut span_id, mut parent): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
        let (mut trace_state, mut name) = ("", "");
        let (mut kind, mut start_time, mut end_time, mut flags) = (0i32, 0u64, 0u64, 0u32);
        let (mut dropped_attributes, mut dropped_events, mut dropped_links) = (0u32, 0u32, 0u32);
        let (mut events, mut links, mut status) = (Vec::new(), Vec::new(), None);
        each_field(buf, |tag, wire_type, buf| match tag {
            1 => set(&mut trace_id, delimited(wire_type, buf)),
            2 => set(&mut span_id, delimited(wire_type, buf)),
            3 => set(&mut trace_state, text(wire_type, buf)),
            4 => set(&mut parent, delimited(wire_type, buf)),
            5 => set(&mut name, text(wire_type, buf)),
            6 => Ok(pe::int32::merge(wire_type, &mut kind, buf, ctx())?),
            7 => Ok(pe::fixed64::merge(wire_type, &mut start_time, buf, ctx())?),
            8 => Ok(pe::fixed64::merge(wire_type, &mut end_time, buf, ctx())?),
            9 => self.push_attribute(wire_type, buf),
            10 => Ok(pe::uint32::merge(wire_type, &mut dropped_attributes, buf, ctx())?),
            11 => {
                events.push(self.event(delimited(wire_type, buf)?)?);
                Ok(())
            }
            12 => Ok(pe::uint32::merge(wire_type, &mut dropped_events, buf, ctx())?),
            13 => {
                links.push(self.link(delimited(wire_type, buf)?)?);
                Ok(())
            }
            14 => Ok(pe::uint32::merge(wire_type, &mut dropped_links, buf, ctx())?),
            15 => once(&mut status, status_of(delimited(wire_type, buf)?)?),
            16 => Ok(pe::fixed32::merge(wire_type, &mut flags, buf, ctx())?),
            _ => skip(tag, wire_type, buf),
        })?;
        let parent_span_id = match parent {
            [] | [0, 0, 0, 0, 0, 0, 0, 0] => None,
            id => Some(SpanId::from_slice(id).map_err(|_| Fallback)?),
        };
        if name.len() > self.limits.max_attribute_value_bytes {
            return Err(Fallback);
        }
        let trace_id = TraceId::from_slice(trace_id).map_err(|_| Fallback)?;
        let span_id = SpanId::from_slice(span_id).map_err(|_| Fallback)?;
        let kind = kind_of(kind)?;
        let attributes = self.take_attributes(start)?;
        self.spans.push(Span {
            trace_id,
            span_id,
            parent_span_id,
            trace_state: trace_state.to_owned(),
            flags,
            name: Str::from(name),
            kind,
            start_time_unix_nano: start_time,
            end_time_unix_nano: end_time,
            attributes,
            dropped_attributes_count: dropped_attributes,
            events,
            dropped_events_count: dropped_events,
            links,
            dropped_links_count: dropped_links,
            status: status.unwrap_or_default(),
            resource: Arc::clone(resource),
            scope: Arc::clone(scope),
        });
        Ok(())
    }

    fn event(&mut self, buf: &'a [u8]) -> Res<Event> {
        let start = self.attrs.len();
        let (mut time_unix_nano, mut name, mut dropped_attributes_count) = (0, "", 0);
        each_field(buf, |tag, wire_type, buf| match tag {
            1 => Ok(pe::fixed64::merge(wire_type, &mut time_unix_nano, buf, ctx())?),
            2 => set(&mut name, text(wire_type, buf)),
            3 => self.push_attribute(wire_type, buf),
            4 => Ok(pe::uint32::merge(wire_type, &mut dropped_attributes_count, buf, ctx())?),
            _ => skip(tag, wire_type, buf),
        })?;
        Ok(Event {
            time_unix_nano,
            name: Str::from(name),
            attributes: self.take_attributes(start)?,
            dropped_attributes_count,
        })
    }

    fn link(&mut self, buf: &'a [u8]) -> Res<Link> {
        let start = self.attrs.len();
        let (mut trace_id, mut span_id, mut trace_state): (&[u8], &[u8], &str) = (&[], &[], "");
        let (mut dropped_attributes_count, mut flags) = (0, 0);
        each_field(buf, |tag, wire_type, buf| match tag {
            1 => set(&mut trace_id, delimited(wire_type, buf)),
            2 => set(&mut span_id, delimited(wire_type, buf)),
            3 => set(&mut trace_state, text(wire_type, buf)),
            4 => self.push_attribute(wire_type, buf),
            5 => Ok(pe::uint32::merge(wire_type, &mut dropped_attributes_count, buf, ctx())?),
            6 => Ok(pe::fixed32::merge(wire_type, &mut flags, buf, ctx())?),
            _ => skip(tag, wire_type, buf),
        })?;
        Ok(Link {
            trace_id: TraceId::from_slice(trace_id).map_err(|_| Fallback)?,
            span_id: SpanId::from_slice(span_id).map_err(|_| Fallback)?,
            trace_state: trace_state.to_owned(),
            attributes: self.take_attributes(start)?,
            dropped_attributes_count,
            flags,
        })
    }

    fn push_attribute(&mut self, wire_type: WireType, buf: &mut &'a [u8]) -> Res<()> {
        let kv = self.key_value(delimited(wire_type, buf)?, 1)?;
        self.attrs.push(kv);
        Ok(())
    }

    /// The attributes pushed since `start`, in a new vector of exactly their number (one copy).
    fn take_attributes(&mut self, start: usize) -> Res<Vec<KeyValue>> {
        if self.attrs.len() - start > self.limits.max_attributes {
            return Err(Fallback);
        }
        Ok(self.attrs.split_off(start))
    }

    /// A `KeyValue` whose value sits at nesting `depth` (1 for an attribute's own value).
    fn key_value(&mut self, buf: &'a [u8], depth: usize) -> Res<KeyValue> {
        if let Some(kv) = self.plain_key_value(buf, depth)? {
            return Ok(kv);
        }
        let mut key: &[u8] = b"";
        let (mut value, mut has_value) = (AttrValue::Empty, false);
        each_field(buf, |tag, wire_type, buf| match tag {
            1 => set(&mut key, delimited(wire_type, buf)),
            // A second value merges into the first in protobuf: left to prost.
            2 if has_value => Err(Fallback),
            2 => {
                has_value = true;
                self.any_value(delimited(wire_type, buf)?, depth, &mut value)
            }
            // key_strindex (profiles only): decoded and ignored, as by prost.
            3 => Ok(pe::int32::merge(wire_type, &mut 0, buf, ctx())?),
            _ => skip(tag, wire_type, buf),
        })?;
        Ok(KeyValue { key: self.key(key, depth)?, value })
    }

    /// A `KeyValue` in the shape nearly every SDK writes, read without the field loop: the
    /// key (field 1), then the value (field 2) holding one string, integer, boolean or double,
    /// every length and tag in one byte. `None` for any other shape, which the loop reads (to
    /// the same result: a property test compares this decoder with prost's).
    #[inline]
    fn plain_key_value(&mut self, buf: &'a [u8], depth: usize) -> Res<Option<KeyValue>> {
        let [0x0A, key_len @ 0..0x80, rest @ ..] = buf else { return Ok(None) };
        let Some((key, rest)) = rest.split_at_checked(usize::from(*key_len)) else { return Ok(None) };
        let [0x12, value_len @ 0..0x80, value @ ..] = rest else { return Ok(None) };
        if usize::from(*value_len) != value.len() {
            return Ok(None);
        }
        let value = match value {
            [0x0A, len @ 0..0x80, text @ ..] if usize::from(*len) == text.len() => {
                AttrValue::Str(self.text_value(text)?)
            }
            [0x10, b @ 0..0x80] => AttrValue::Bool(*b != 0),
            [0x18, int @ ..] => {
                let mut rest = int;
                let i = varint(&mut rest)?;
                if !rest.is_empty() {
                    return Ok(None);
                }
                AttrValue::Int(i as i64)
            }
            [0x21, bits @ ..] => match <[u8; 8]>::try_from(bits) {
                Ok(bits) => AttrValue::Double(f64::from_le_bytes(bits)),
                Err(_) => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(KeyValue { key: self.key(key, depth)?, value }))
    }

    /// A string value (short: its length fits in one byte) of the attribute at the span's
    /// current place. Only values that live inline in a [`Str`] are kept for the next span:
    /// a longer one (a user agent, a URL query, an id) costs an allocation to clone, and one
    /// to keep, and is seldom the same in the next span.
    #[inline]
    fn text_value(&mut self, bytes: &'a [u8]) -> Res<Str> {
        let max_len = self.limits.max_attribute_value_bytes;
        let make = || {
            let text = utf8(bytes)?;
            Ok(Str::from(checked(text, max_len)?))
        };
        if bytes.len() > INLINE_BYTES {
            return make();
        }
        self.values.get_or_make(self.at, bytes, make)
    }

    /// An attribute's key, from the keys met so far in this request when it is one of them;
    /// refused (to the general decoder) when too long or when its value sits deeper than
    /// allowed.
    #[inline]
    fn key(&mut self, key: &'a [u8], depth: usize) -> Res<Str> {
        if key.len() > self.limits.max_attribute_value_bytes || depth > self.max_depth {
            return Err(Fallback);
        }
        let at = self.at;
        self.at += 1;
        let keys = &mut self.keys;
        self.memo.get_or_make(at, key, || {
            Ok(match keys.get(key) {
                Some(k) => k.clone(),
                None => {
                    let k = skein_model::attribute_key(utf8(key)?);
                    keys.insert(key, k.clone());
                    k
                }
            })
        })
    }

    /// Decodes an `AnyValue` into `out`, which is empty (and stays so for an unset value).
    fn any_value(&mut self, buf: &'a [u8], depth: usize, out: &mut AttrValue) -> Res<()> {
        if depth > self.max_depth {
            return Err(Fallback);
        }
        let max_len = self.limits.max_attribute_value_bytes;
        let mut seen = false;
        each_field(buf, |tag, wire_type, buf| {
            if tag <= 8 && std::mem::replace(&mut seen, true) {
                // A second field of the oneof replaces or merges into the first: rare enough
                // to leave to prost.
                return Err(Fallback);
            }
            *out = match tag {
                1 => AttrValue::Str(Str::from(checked(text(wire_type, buf)?, max_len)?)),
                2 => {
                    let mut b = false;
                    pe::bool::merge(wire_type, &mut b, buf, ctx())?;
                    AttrValue::Bool(b)
                }
                3 => {
                    let mut i = 0;
                    pe::int64::merge(wire_type, &mut i, buf, ctx())?;
                    AttrValue::Int(i)
                }
                4 => {
                    let mut d = 0.0;
                    pe::double::merge(wire_type, &mut d, buf, ctx())?;
                    AttrValue::Double(d)
                }
                5 => AttrValue::Array(self.list(delimited(wire_type, buf)?, |d, b| {
                    let mut element = AttrValue::Empty;
                    d.any_value(b, depth + 1, &mut element)?;
                    Ok(element)
                })?),
                6 => AttrValue::KvList(
                    self.list(delimited(wire_type, buf)?, |d, b| d.key_value(b, depth + 1))?,
                ),
                7 => AttrValue::Bytes(checked(delimited(wire_type, buf)?, max_len)?.to_vec()),
                // string_value_strindex: not valid in traces; the general path says so.
                8 => return Err(Fallback),
                _ => return skip(tag, wire_type, buf),
            };
            Ok(())
        })
    }

    /// The elements (field 1) of an `ArrayValue` or a `KeyValueList`, each read by `element`.
    fn list<T>(
        &mut self,
        buf: &'a [u8],
        mut element: impl FnMut(&mut Self, &'a [u8]) -> Res<T>,
    ) -> Res<Vec<T>> {
        let mut values = Vec::new();
        each_field(buf, |tag, wire_type, buf| match tag {
            1 => {
                values.push(element(self, delimited(wire_type, buf)?)?);
                Ok(())
            }
            _ => skip(tag, wire_type, buf),
        })?;
        if values.len() > self.limits.max_attributes {
            return Err(Fallback);
        }
        Ok(values)
    }
}

/// `ResourceSpans` and `ScopeSpans` have one shape: the resource or scope (1), the members
/// (2, pushed onto `members`) and a schema URL (3). The resource or scope comes back empty
/// when absent; it may follow the members on the wire, hence the bodies are kept.
fn group<'a>(buf: &'a [u8], members: &mut Vec<&'a [u8]>) -> Res<(&'a [u8], &'a str)> {
    let (mut head, mut schema_url) = (None, "");
    each_field(buf, |tag, wire_type, buf| match tag {
        1 => once(&mut head, delimited(wire_type, buf)?),
        2 => {
            members.push(delimited(wire_type, buf)?);
            Ok(())
        }
        3 => set(&mut schema_url, text(wire_type, buf)),
        _ => skip(tag, wire_type, buf),
    })?;
    Ok((head.unwrap_or_default(), schema_url))
}

fn status_of(buf: &[u8]) -> Res<Status> {
    let (mut message, mut code) = ("", 0i32);
    each_field(buf, |tag, wire_type, buf| match tag {
        2 => set(&mut message, text(wire_type, buf)),
        3 => Ok(pe::int32::merge(wire_type, &mut code, buf, ctx())?),
        _ => skip(tag, wire_type, buf),
    })?;
    let code = match code {
        0 => StatusCode::Unset,
        1 => StatusCode::Ok,
        2 => StatusCode::Error,
        _ => return Err(Fallback),
    };
    Ok(Status { code, message: message.to_owned() })
}

fn kind_of(kind: i32) -> Res<SpanKind> {
    Ok(match kind {
        0 => SpanKind::Unspecified,
        1 => SpanKind::Internal,
        2 => SpanKind::Server,
        3 => SpanKind::Client,
        4 => SpanKind::Producer,
        5 => SpanKind::Consumer,
        _ => return Err(Fallback),
    })
}

/// Calls `field` for every field of a message: its tag, wire type, and the rest of the body,
/// which `field` must advance past the field's value.
fn each_field<'a>(
    mut buf: &'a [u8],
    mut field: impl FnMut(u32, WireType, &mut &'a [u8]) -> Res<()>,
) -> Res<()> {
    while !buf.is_empty() {
        let (tag, wire_type) = key(&mut buf)?;
        field(tag, wire_type, &mut buf)?;
    }
    Ok(())
}

/// A varint. Tags and lengths under 128 (nearly all of them) take one byte; the rest go to
/// prost's decoder.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Res<u64> {
    match buf.first() {
        Some(&b) if b < 0x80 => {
            *buf = &buf[1..];
            Ok(u64::from(b))
        }
        _ => Ok(pe::decode_varint(buf)?),
    }
}

/// A field's key: its tag and wire type, refused where prost's `decode_key` refuses it.
#[inline(always)]
fn key(buf: &mut &[u8]) -> Res<(u32, WireType)> {
    let key = varint(buf)?;
    if key > u64::from(u32::MAX) {
        return Err(Fallback);
    }
    let wire_type = WireType::try_from(key & 0x07)?;
    let tag = key as u32 >> 3;
    if tag == 0 {
        return Err(Fallback);
    }
    Ok((tag, wire_type))
}

/// A length-delimited field's bytes, borrowed from the body.
fn delimited<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Res<&'a [u8]> {
    pe::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = varint(buf)?;
    if len > buf.len() as u64 {
        return Err(Fallback);
    }
    let (value, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(value)
}

fn text<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Res<&'a str> {
    utf8(delimited(wire_type, buf)?)
}

/// `bytes` as text when they are UTF-8 (checked with SIMD where the CPU has it).
#[inline]
fn utf8(bytes: &[u8]) -> Res<&str> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| Fallback)
}

fn checked<T: AsRef<[u8]> + ?Sized>(value: &T, max_len: usize) -> Res<&T> {
    if value.as_ref().len() > max_len { Err(Fallback) } else { Ok(value) }
}

/// Skips an unknown field. Groups (deprecated, never in OTLP) go to prost, whose nesting
/// limit for them depends on how deep the field is.
fn skip(tag: u32, wire_type: WireType, buf: &mut &[u8]) -> Res<()> {
    if wire_type == WireType::StartGroup {
        return Err(Fallback);
    }
    Ok(pe::skip_field(wire_type, tag, buf, ctx())?)
}

fn ctx() -> DecodeContext {
    DecodeContext::default()
}

/// Sets a singular scalar, string or bytes field (the last occurrence wins, as in protobuf).
fn set<T>(slot: &mut T, value: Res<T>) -> Res<()> {
    *slot = value?;
    Ok(())
}

/// Sets a singular message field; a second occurrence (which protobuf merges into the
/// first) goes to the general decoder.
fn once<T>(slot: &mut Option<T>, value: T) -> Res<()> {
    match slot {
        Some(_) => Err(Fallback),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}
