//! The binary encoding of spans shared by the storage backends: the embedded engine's WAL
//! records and block chunks, and the ClickHouse store's buffer records and span payloads.
//! The batch form ([`encode_spans`]) is specified in `docs/format/spans.md`; [`Writer`] and
//! [`Reader`] are its primitives (varints, length-prefixed bytes, attribute values).
//! Decoding checks every length and never panics.

use std::sync::Arc;

use skein_model::{
    AttrValue, Event, InstrumentationScope, KeyValue, Link, Resource, Span, SpanId, SpanKind, Status,
    StatusCode, Str, TraceId,
};

/// Version byte at the start of every encoded batch.
pub const BATCH_VERSION: u8 = 1;

/// Bytes that are not a valid encoded batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt span batch: {0}")]
pub struct DecodeError(pub String);

pub fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    #[inline]
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    /// An unsigned LEB128 varint; one byte (most counts, indexes and small deltas) is written
    /// inline in the caller.
    #[inline]
    pub fn varint(&mut self, v: u64) {
        if v < 0x80 {
            self.buf.push(v as u8);
        } else {
            self.varint_long(v);
        }
    }

    #[inline(never)]
    fn varint_long(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    #[inline]
    pub fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    #[inline]
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub fn attrs(&mut self, attrs: &[KeyValue]) {
        self.varint(attrs.len() as u64);
        for kv in attrs {
            self.str(&kv.key);
            self.value(&kv.value);
        }
    }

    pub fn resource(&mut self, r: &Resource) {
        self.attrs(&r.attributes);
        self.varint(r.dropped_attributes_count as u64);
        self.str(&r.schema_url);
    }

    pub fn scope(&mut self, c: &InstrumentationScope) {
        self.str(&c.name);
        self.str(&c.version);
        self.attrs(&c.attributes);
        self.varint(c.dropped_attributes_count as u64);
        self.str(&c.schema_url);
    }

    /// A span's fields after its trace and span id, except its resource and scope: parent,
    /// trace state, flags, name, kind, times (start as its distance from `start_base`, which
    /// the reader must be given again; end as a delta), attributes, events, links, status.
    /// [`Reader::span_body`] reads them back.
    pub fn span_body(&mut self, s: &Span, start_base: u64) {
        match s.parent_span_id {
            Some(p) => {
                self.u8(1);
                self.buf.extend_from_slice(p.as_bytes());
            }
            None => self.u8(0),
        }
        self.span_body_after_parent(s, start_base);
    }

    /// [`Self::span_body`] without the parent, for encodings that keep the parent elsewhere
    /// ([`Reader::span_body_after_parent`] reads it back, given the parent).
    pub fn span_body_after_parent(&mut self, s: &Span, start_base: u64) {
        self.str(&s.trace_state);
        self.varint(s.flags as u64);
        self.str(&s.name);
        self.u8(s.kind.code());
        self.varint(s.start_time_unix_nano.wrapping_sub(start_base));
        self.varint(s.end_time_unix_nano.wrapping_sub(s.start_time_unix_nano));
        self.attrs(&s.attributes);
        self.varint(s.dropped_attributes_count as u64);
        self.varint(s.events.len() as u64);
        for e in &s.events {
            self.varint(e.time_unix_nano);
            self.str(&e.name);
            self.attrs(&e.attributes);
            self.varint(e.dropped_attributes_count as u64);
        }
        self.varint(s.dropped_events_count as u64);
        self.varint(s.links.len() as u64);
        for l in &s.links {
            self.buf.extend_from_slice(l.trace_id.as_bytes());
            self.buf.extend_from_slice(l.span_id.as_bytes());
            self.str(&l.trace_state);
            self.attrs(&l.attributes);
            self.varint(l.dropped_attributes_count as u64);
            self.varint(l.flags as u64);
        }
        self.varint(s.dropped_links_count as u64);
        self.u8(s.status.code.code());
        self.str(&s.status.message);
    }

    pub fn value(&mut self, v: &AttrValue) {
        match v {
            AttrValue::Empty => self.u8(0),
            AttrValue::Str(s) => {
                self.u8(1);
                self.str(s);
            }
            AttrValue::Bool(b) => {
                self.u8(2);
                self.u8(*b as u8);
            }
            AttrValue::Int(i) => {
                self.u8(3);
                self.varint(((i << 1) ^ (i >> 63)) as u64);
            }
            AttrValue::Double(d) => {
                self.u8(4);
                self.buf.extend_from_slice(&d.to_le_bytes());
            }
            AttrValue::Bytes(b) => {
                self.u8(5);
                self.bytes(b);
            }
            AttrValue::Array(items) => {
                self.u8(6);
                self.varint(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            AttrValue::KvList(kvs) => {
                self.u8(7);
                self.attrs(kvs);
            }
        }
    }
}

pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

/// Deepest value nesting the decoder follows (the receivers allow far less).
const MAX_DEPTH: usize = 64;

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Nothing left to read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return err(format!(
                "needs {n} bytes at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.take(1).map(|b| b[0]),
        }
    }

    /// An unsigned LEB128 varint. Most are one byte (counts, indexes, small deltas): that case
    /// is inlined into the caller, the longer ones take `varint_long`.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.buf.get(self.pos) {
            Some(&b) if b < 0x80 => {
                self.pos += 1;
                Ok(b as u64)
            }
            _ => self.varint_long(),
        }
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, DecodeError> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        let mut v = 0u64;
        for (i, &b) in rest.iter().take(10).enumerate() {
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b < 0x80 {
                self.pos += i + 1;
                return Ok(v);
            }
        }
        if rest.len() < 10 {
            return err(format!("varint at offset {} runs past the end", self.pos));
        }
        err("varint longer than 10 bytes")
    }

    pub fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return err(format!("length {n} at offset {} runs past the end", self.pos));
        }
        Ok(n as usize)
    }

    pub fn count(&mut self) -> Result<usize, DecodeError> {
        // Every element takes at least one byte, so a count can't exceed what is left.
        self.len()
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        self.slice().map(<[u8]>::to_vec)
    }

    /// Length-prefixed bytes, borrowed from the buffer.
    pub fn slice(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    /// A length-prefixed string, borrowed from the buffer.
    pub fn text(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.slice()?).map_err(|_| DecodeError("string is not UTF-8".into()))
    }

    pub fn str(&mut self) -> Result<Str, DecodeError> {
        self.text().map(Str::from)
    }

    /// A string that may be an attribute key: the long keys of the semantic conventions come
    /// back as shared static strings (see [`skein_model::attribute_key`]).
    pub fn key(&mut self) -> Result<Str, DecodeError> {
        self.text().map(skein_model::attribute_key)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    pub fn attrs(&mut self, depth: usize) -> Result<Vec<KeyValue>, DecodeError> {
        let n = self.count()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let key = self.key()?;
            out.push(KeyValue { key, value: self.value(depth)? });
        }
        Ok(out)
    }

    pub fn resource(&mut self) -> Result<Resource, DecodeError> {
        Ok(Resource {
            attributes: self.attrs(0)?,
            dropped_attributes_count: u32_of(self.varint()?, "dropped count")?,
            schema_url: self.str()?.into(),
        })
    }

    pub fn scope(&mut self) -> Result<InstrumentationScope, DecodeError> {
        Ok(InstrumentationScope {
            name: self.str()?.into(),
            version: self.str()?.into(),
            attributes: self.attrs(0)?,
            dropped_attributes_count: u32_of(self.varint()?, "dropped count")?,
            schema_url: self.str()?.into(),
        })
    }

    /// What [`Writer::span_body`] wrote, made into a span with the ids, resource and scope
    /// given.
    pub fn span_body(
        &mut self,
        trace_id: TraceId,
        span_id: SpanId,
        resource: Arc<Resource>,
        scope: Arc<InstrumentationScope>,
        start_base: u64,
    ) -> Result<Span, DecodeError> {
        let parent_span_id = match self.u8()? {
            0 => None,
            1 => Some(SpanId::from_bytes(self.array()?).map_err(|e| DecodeError(format!("parent id: {e}")))?),
            t => return err(format!("bad parent flag {t}")),
        };
        self.span_body_after_parent(trace_id, span_id, parent_span_id, resource, scope, start_base)
    }

    /// What [`Writer::span_body_after_parent`] wrote, made into a span with the ids, parent,
    /// resource and scope given.
    pub fn span_body_after_parent(
        &mut self,
        trace_id: TraceId,
        span_id: SpanId,
        parent_span_id: Option<SpanId>,
        resource: Arc<Resource>,
        scope: Arc<InstrumentationScope>,
        start_base: u64,
    ) -> Result<Span, DecodeError> {
        let trace_state = self.str()?;
        let flags = u32_of(self.varint()?, "flags")?;
        let name = self.str()?;
        let k = self.u8()?;
        let kind = SpanKind::from_code(k).ok_or_else(|| DecodeError(format!("bad span kind {k}")))?;
        let start = self.varint()?.wrapping_add(start_base);
        let end = start.wrapping_add(self.varint()?);
        let attributes = self.attrs(0)?;
        let dropped_attributes_count = u32_of(self.varint()?, "dropped count")?;
        let ne = self.count()?;
        let mut events = Vec::with_capacity(ne);
        for _ in 0..ne {
            events.push(Event {
                time_unix_nano: self.varint()?,
                name: self.str()?,
                attributes: self.attrs(0)?,
                dropped_attributes_count: u32_of(self.varint()?, "dropped count")?,
            });
        }
        let dropped_events_count = u32_of(self.varint()?, "dropped count")?;
        let nl = self.count()?;
        let mut links = Vec::with_capacity(nl);
        for _ in 0..nl {
            links.push(Link {
                trace_id: TraceId::from_bytes(self.array()?)
                    .map_err(|e| DecodeError(format!("link trace id: {e}")))?,
                span_id: SpanId::from_bytes(self.array()?)
                    .map_err(|e| DecodeError(format!("link span id: {e}")))?,
                trace_state: self.str()?.into(),
                attributes: self.attrs(0)?,
                dropped_attributes_count: u32_of(self.varint()?, "dropped count")?,
                flags: u32_of(self.varint()?, "flags")?,
            });
        }
        let dropped_links_count = u32_of(self.varint()?, "dropped count")?;
        let c = self.u8()?;
        let code = StatusCode::from_code(c).ok_or_else(|| DecodeError(format!("bad status code {c}")))?;
        let message = self.str()?;
        Ok(Span {
            trace_id,
            span_id,
            parent_span_id,
            trace_state: trace_state.into(),
            flags,
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            dropped_attributes_count,
            events,
            dropped_events_count,
            links,
            dropped_links_count,
            status: Status { code, message: message.into() },
            resource,
            scope,
        })
    }

    pub fn value(&mut self, depth: usize) -> Result<AttrValue, DecodeError> {
        if depth > MAX_DEPTH {
            return err("attribute value nested too deep");
        }
        Ok(match self.u8()? {
            0 => AttrValue::Empty,
            1 => AttrValue::Str(self.str()?),
            2 => AttrValue::Bool(self.u8()? != 0),
            3 => {
                let z = self.varint()?;
                AttrValue::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            4 => AttrValue::Double(f64::from_le_bytes(self.array()?)),
            5 => AttrValue::Bytes(self.bytes()?),
            6 => {
                let n = self.count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                AttrValue::Array(items)
            }
            7 => AttrValue::KvList(self.attrs(depth + 1)?),
            t => return err(format!("unknown value tag {t}")),
        })
    }
}

/// The distinct resources and scopes of a batch, each numbered once: looked up by `Arc`
/// pointer first (shared within a request), then by value (equal ones from different requests).
#[derive(Default)]
pub struct Origins<'a> {
    pub resources: Vec<&'a Arc<Resource>>,
    pub scopes: Vec<&'a Arc<InstrumentationScope>>,
    resource_ix: rustc_hash::FxHashMap<*const Resource, usize>,
    scope_ix: rustc_hash::FxHashMap<*const InstrumentationScope, usize>,
    /// The last span's resource and scope (by address) and their indexes: the spans of one
    /// request share both, so most spans are answered without a lookup.
    last: Option<(*const Resource, *const InstrumentationScope, (usize, usize))>,
}

impl<'a> Origins<'a> {
    /// The indexes of `s`'s resource and scope, adding them when new.
    pub fn of(&mut self, s: &'a Span) -> (usize, usize) {
        let (resource, scope) = (Arc::as_ptr(&s.resource), Arc::as_ptr(&s.scope));
        if let Some((r, c, found)) = self.last
            && (r, c) == (resource, scope)
        {
            return found;
        }
        let found = self.lookup(s);
        self.last = Some((resource, scope, found));
        found
    }

    fn lookup(&mut self, s: &'a Span) -> (usize, usize) {
        let Origins { resources, scopes, resource_ix, scope_ix, .. } = self;
        let r = *resource_ix.entry(Arc::as_ptr(&s.resource)).or_insert_with(|| {
            resources.iter().position(|r| ***r == *s.resource).unwrap_or_else(|| {
                resources.push(&s.resource);
                resources.len() - 1
            })
        });
        let c = *scope_ix.entry(Arc::as_ptr(&s.scope)).or_insert_with(|| {
            scopes.iter().position(|c| ***c == *s.scope).unwrap_or_else(|| {
                scopes.push(&s.scope);
                scopes.len() - 1
            })
        });
        (r, c)
    }
}

/// Encodes spans; resources and scopes shared by several spans are written once.
pub fn encode_spans(spans: &[Span]) -> Vec<u8> {
    let mut origins = Origins::default();
    let refs: Vec<(usize, usize)> = spans.iter().map(|s| origins.of(s)).collect();
    let Origins { resources, scopes, .. } = origins;
    // Sized from the spans' strings, so that the record is written without reallocating.
    let estimate: usize = spans
        .iter()
        .map(|s| {
            64 + s.name.len()
                + s.attributes
                    .iter()
                    .map(|kv| {
                        8 + kv.key.len()
                            + match &kv.value {
                                AttrValue::Str(v) => v.len(),
                                AttrValue::Bytes(v) => v.len(),
                                _ => 16,
                            }
                    })
                    .sum::<usize>()
        })
        .sum();
    let mut w = Writer { buf: Vec::with_capacity(estimate + 1024) };
    w.u8(BATCH_VERSION);
    w.varint(resources.len() as u64);
    for r in &resources {
        w.resource(r);
    }
    w.varint(scopes.len() as u64);
    for c in &scopes {
        w.scope(c);
    }
    w.varint(spans.len() as u64);
    for (s, (r, c)) in spans.iter().zip(refs) {
        w.varint(r as u64);
        w.varint(c as u64);
        w.buf.extend_from_slice(s.trace_id.as_bytes());
        w.buf.extend_from_slice(s.span_id.as_bytes());
        w.span_body(s, 0);
    }
    w.buf
}

pub fn u32_of(v: u64, what: &str) -> Result<u32, DecodeError> {
    u32::try_from(v).map_err(|_| DecodeError(format!("{what} {v} out of range")))
}

/// Decodes what [`encode_spans`] wrote.
pub fn decode_spans(buf: &[u8]) -> Result<Vec<Span>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if version != BATCH_VERSION {
        return err(format!("unsupported batch version {version}"));
    }
    let n = r.count()?;
    let mut resources = Vec::with_capacity(n);
    for _ in 0..n {
        resources.push(Arc::new(r.resource()?));
    }
    let n = r.count()?;
    let mut scopes = Vec::with_capacity(n);
    for _ in 0..n {
        scopes.push(Arc::new(r.scope()?));
    }
    let n = r.count()?;
    let mut spans = Vec::with_capacity(n);
    for _ in 0..n {
        let resource =
            resources.get(r.varint()? as usize).ok_or(DecodeError("resource index out of range".into()))?;
        let scope = scopes.get(r.varint()? as usize).ok_or(DecodeError("scope index out of range".into()))?;
        let trace_id = TraceId::from_bytes(r.array()?).map_err(|e| DecodeError(format!("trace id: {e}")))?;
        let span_id = SpanId::from_bytes(r.array()?).map_err(|e| DecodeError(format!("span id: {e}")))?;
        spans.push(r.span_body(trace_id, span_id, Arc::clone(resource), Arc::clone(scope), 0)?);
    }
    if r.pos != buf.len() {
        return err(format!("{} trailing bytes", buf.len() - r.pos));
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::rich_batch as rich;
    use proptest::prelude::*;

    #[test]
    fn round_trips_every_field_and_shares_resources() {
        let spans = rich();
        let bytes = encode_spans(&spans);
        let back = decode_spans(&bytes).unwrap();
        assert_eq!(back, spans);
        assert!(Arc::ptr_eq(&back[0].resource, &back[1].resource), "one resource decoded once");
    }

    #[test]
    fn truncated_or_garbled_input_is_an_error_not_a_panic() {
        let bytes = encode_spans(&rich());
        for cut in 0..bytes.len() {
            assert!(decode_spans(&bytes[..cut]).is_err(), "prefix of {cut} bytes must not decode");
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(
            decode_spans(&bad).unwrap_err().to_string(),
            "corrupt span batch: unsupported batch version 9"
        );
    }

    /// The spans of one request share a resource and scope (answered from the last span's),
    /// others are looked up: every span gets the index of its own.
    #[test]
    fn origins_number_each_resource_and_scope_once() {
        let base = rich().remove(0);
        let other_resource = Arc::new(Resource { schema_url: "other".into(), ..(*base.resource).clone() });
        let other_scope = Arc::new(InstrumentationScope { name: "other".into(), ..(*base.scope).clone() });
        let with = |r: &Arc<Resource>, c: &Arc<InstrumentationScope>| Span {
            resource: Arc::clone(r),
            scope: Arc::clone(c),
            ..base.clone()
        };
        let (a, b) = (&base.resource, &other_resource);
        let (s1, s2) = (&base.scope, &other_scope);
        let spans = [with(a, s1), with(a, s1), with(b, s1), with(a, s2), with(a, s1), with(b, s2)];
        let mut origins = Origins::default();
        let got: Vec<(usize, usize)> = spans.iter().map(|s| origins.of(s)).collect();
        assert_eq!(got, [(0, 0), (0, 0), (1, 0), (0, 1), (0, 0), (1, 1)]);
        let back = decode_spans(&encode_spans(&spans)).unwrap();
        assert_eq!(back, spans);
    }

    /// `values` written as varints one after the other, then read back until nothing is left.
    fn varints_back(values: &[u64]) -> Vec<u64> {
        let mut w = Writer::default();
        for v in values {
            w.varint(*v);
        }
        let mut r = Reader::new(&w.buf);
        let mut back = Vec::new();
        while !r.is_empty() {
            back.push(r.varint().unwrap());
        }
        back
    }

    /// The one-byte fast path and the longer path read what the writer wrote, one after the
    /// other; a varint cut short or longer than 10 bytes is an error.
    #[test]
    fn varints_of_every_length_round_trip_and_bad_ones_are_errors() {
        let values: Vec<u64> =
            (0..64).flat_map(|b| [(1u64 << b) - 1, 1u64 << b, (1u64 << b) + 1]).chain([u64::MAX]).collect();
        assert_eq!(varints_back(&values), values);
        assert!(Reader::new(&[]).varint().is_err(), "nothing left");
        for cut in [&[0x80u8][..], &[0xff, 0xff], &[0x80; 9]] {
            assert!(Reader::new(cut).varint().is_err(), "{cut:?} is cut short");
        }
        assert_eq!(Reader::new(&[0x80; 11]).varint().unwrap_err().0, "varint longer than 10 bytes");
        let mut r = Reader::new(&[0x05, 0x85, 0x01]);
        assert_eq!((r.varint().unwrap(), r.varint().unwrap(), r.pos), (5, 133, 3));
    }

    proptest! {
        #[test]
        fn varints_round_trip(values in proptest::collection::vec(any::<u64>(), 0..64)) {
            prop_assert_eq!(varints_back(&values), values);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_spans(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(pos in 0usize..400, val in any::<u8>()) {
            let mut bytes = encode_spans(&rich());
            let p = pos % bytes.len();
            bytes[p] = val;
            let _ = decode_spans(&bytes);
        }
    }
}
