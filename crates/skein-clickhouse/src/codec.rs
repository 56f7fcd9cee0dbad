//! The binary encoding of spans for the ClickHouse store (specified in `docs/clickhouse.md`).
//!
//! - [`encode_payload`] / [`decode_payload`]: everything of a span but its trace id and its
//!   resource, for the `payload` column of the `spans` table (the trace id is a column of its
//!   own; the resource is stored once in `resources`, referenced by [`resource_id`]).
//! - [`encode_resource`] / [`decode_resource`]: a resource, for the `resources` table.
//! - [`encode_batch`] / [`decode_batch`]: a batch of whole spans with their resources stored
//!   once, for the records of the local buffer (a WAL).
//!
//! Decoding checks every length and never panics.

use std::sync::Arc;

use skein_model::{
    AttrValue, Event, InstrumentationScope, KeyValue, Link, Resource, Span, SpanId, SpanKind, Status,
    StatusCode, TraceId, attribute_key,
};

/// First byte of every payload, resource and batch encoding.
pub const FORMAT_VERSION: u8 = 1;
/// Deepest nesting of attribute values decoded (the receivers refuse deeper ones long before).
const MAX_DEPTH: usize = 64;

/// Bytes that are not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt clickhouse span encoding: {0}")]
pub struct DecodeError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// Appends primitives to a byte buffer.
#[derive(Default, Debug)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn attrs(&mut self, attrs: &[KeyValue]) {
        self.varint(attrs.len() as u64);
        for kv in attrs {
            self.bytes(kv.key.as_bytes());
            self.value(&kv.value);
        }
    }

    fn value(&mut self, v: &AttrValue) {
        match v {
            AttrValue::Empty => self.u8(0),
            AttrValue::Str(s) => {
                self.u8(1);
                self.bytes(s.as_bytes());
            }
            AttrValue::Bool(b) => {
                self.u8(2);
                self.u8(*b as u8);
            }
            AttrValue::Int(i) => {
                self.u8(3);
                self.varint(((*i << 1) ^ (*i >> 63)) as u64);
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

/// Reads primitives from a byte slice, checking every length.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return err(format!(
                "{n} bytes wanted at offset {}, {} left",
                self.pos,
                self.buf.len() - self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        err("varint longer than 10 bytes")
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 {
            return err(format!("length {n} runs past the end"));
        }
        Ok(n as usize)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.len()?;
        self.take(n)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).or_else(|_| err("string is not UTF-8"))
    }

    pub(crate) fn u64_le(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let v = self.varint()?;
        u32::try_from(v).or_else(|_| err(format!("{what} {v} is over u32")))
    }

    fn attrs(&mut self, depth: usize) -> Result<Vec<KeyValue>, DecodeError> {
        // Every attribute takes at least two bytes: a count past that is corrupt.
        let n = self.varint()?;
        if n > (self.buf.len() - self.pos) as u64 / 2 {
            return err(format!("attribute count {n} runs past the end"));
        }
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let key = attribute_key(self.str()?);
            out.push(KeyValue { key, value: self.value(depth)? });
        }
        Ok(out)
    }

    fn value(&mut self, depth: usize) -> Result<AttrValue, DecodeError> {
        if depth > MAX_DEPTH {
            return err("attribute values nested too deep");
        }
        Ok(match self.u8()? {
            0 => AttrValue::Empty,
            1 => AttrValue::Str(self.str()?.into()),
            2 => AttrValue::Bool(self.u8()? != 0),
            3 => {
                let z = self.varint()?;
                AttrValue::Int(((z >> 1) as i64) ^ -((z & 1) as i64))
            }
            4 => AttrValue::Double(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            5 => AttrValue::Bytes(self.bytes()?.to_vec()),
            6 => {
                let n = self.varint()?;
                if n > (self.buf.len() - self.pos) as u64 {
                    return err(format!("array length {n} runs past the end"));
                }
                (0..n).map(|_| self.value(depth + 1)).collect::<Result<_, _>>().map(AttrValue::Array)?
            }
            7 => AttrValue::KvList(self.attrs(depth + 1)?),
            t => return err(format!("unknown attribute value tag {t}")),
        })
    }

    fn span_id(&mut self) -> Result<SpanId, DecodeError> {
        SpanId::from_slice(self.take(8)?).or_else(|e| err(format!("span id: {e}")))
    }

    fn trace_id(&mut self) -> Result<TraceId, DecodeError> {
        TraceId::from_slice(self.take(16)?).or_else(|e| err(format!("trace id: {e}")))
    }
}

fn version(r: &mut Reader<'_>, what: &str) -> Result<(), DecodeError> {
    match r.u8()? {
        FORMAT_VERSION => Ok(()),
        v => err(format!("{what} has format version {v}; this build reads {FORMAT_VERSION}")),
    }
}

/// Writes a span but its trace id and resource.
pub fn encode_payload(span: &Span, out: &mut Vec<u8>) {
    let mut w = Writer { buf: std::mem::take(out) };
    w.u8(FORMAT_VERSION);
    w.buf.extend_from_slice(span.span_id.as_bytes());
    match span.parent_span_id {
        Some(p) => {
            w.u8(1);
            w.buf.extend_from_slice(p.as_bytes());
        }
        None => w.u8(0),
    }
    w.bytes(span.trace_state.as_bytes());
    w.varint(span.flags as u64);
    w.bytes(span.name.as_bytes());
    w.u8(span.kind.code());
    w.varint(span.start_time_unix_nano);
    w.varint(span.end_time_unix_nano);
    w.attrs(&span.attributes);
    w.varint(span.dropped_attributes_count as u64);
    w.varint(span.events.len() as u64);
    for e in &span.events {
        w.varint(e.time_unix_nano);
        w.bytes(e.name.as_bytes());
        w.attrs(&e.attributes);
        w.varint(e.dropped_attributes_count as u64);
    }
    w.varint(span.dropped_events_count as u64);
    w.varint(span.links.len() as u64);
    for l in &span.links {
        w.buf.extend_from_slice(l.trace_id.as_bytes());
        w.buf.extend_from_slice(l.span_id.as_bytes());
        w.bytes(l.trace_state.as_bytes());
        w.attrs(&l.attributes);
        w.varint(l.dropped_attributes_count as u64);
        w.varint(l.flags as u64);
    }
    w.varint(span.dropped_links_count as u64);
    w.u8(span.status.code.code());
    w.bytes(span.status.message.as_bytes());
    let s = &span.scope;
    w.bytes(s.name.as_bytes());
    w.bytes(s.version.as_bytes());
    w.attrs(&s.attributes);
    w.varint(s.dropped_attributes_count as u64);
    w.bytes(s.schema_url.as_bytes());
    *out = w.buf;
}

/// Reads what [`encode_payload`] wrote, with the trace id and resource given.
pub fn decode_payload(bytes: &[u8], trace_id: TraceId, resource: Arc<Resource>) -> Result<Span, DecodeError> {
    let mut r = Reader::new(bytes);
    let span = read_payload(&mut r, trace_id, resource)?;
    if !r.is_empty() {
        return err("bytes after the end of a span payload");
    }
    Ok(span)
}

fn read_payload(r: &mut Reader<'_>, trace_id: TraceId, resource: Arc<Resource>) -> Result<Span, DecodeError> {
    version(r, "span payload")?;
    let span_id = r.span_id()?;
    let parent_span_id = match r.u8()? {
        0 => None,
        1 => Some(r.span_id()?),
        t => return err(format!("bad parent marker {t}")),
    };
    let trace_state = r.str()?.to_owned();
    let flags = r.u32("flags")?;
    let name = r.str()?.into();
    let kind = SpanKind::from_code(r.u8()?).ok_or_else(|| DecodeError("bad span kind".into()))?;
    let start_time_unix_nano = r.varint()?;
    let end_time_unix_nano = r.varint()?;
    let attributes = r.attrs(0)?;
    let dropped_attributes_count = r.u32("dropped attributes")?;
    let n = r.varint()?;
    let mut events = Vec::new();
    for _ in 0..n {
        events.push(Event {
            time_unix_nano: r.varint()?,
            name: r.str()?.into(),
            attributes: r.attrs(0)?,
            dropped_attributes_count: r.u32("dropped event attributes")?,
        });
    }
    let dropped_events_count = r.u32("dropped events")?;
    let n = r.varint()?;
    let mut links = Vec::new();
    for _ in 0..n {
        links.push(Link {
            trace_id: r.trace_id()?,
            span_id: r.span_id()?,
            trace_state: r.str()?.to_owned(),
            attributes: r.attrs(0)?,
            dropped_attributes_count: r.u32("dropped link attributes")?,
            flags: r.u32("link flags")?,
        });
    }
    let dropped_links_count = r.u32("dropped links")?;
    let code = StatusCode::from_code(r.u8()?).ok_or_else(|| DecodeError("bad status code".into()))?;
    let status = Status { code, message: r.str()?.to_owned() };
    let scope = Arc::new(InstrumentationScope {
        name: r.str()?.to_owned(),
        version: r.str()?.to_owned(),
        attributes: r.attrs(0)?,
        dropped_attributes_count: r.u32("dropped scope attributes")?,
        schema_url: r.str()?.to_owned(),
    });
    Ok(Span {
        trace_id,
        span_id,
        parent_span_id,
        trace_state,
        flags,
        name,
        kind,
        start_time_unix_nano,
        end_time_unix_nano,
        attributes,
        dropped_attributes_count,
        events,
        dropped_events_count,
        links,
        dropped_links_count,
        status,
        resource,
        scope,
    })
}

/// Writes a resource.
pub fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(FORMAT_VERSION);
    w.attrs(&resource.attributes);
    w.varint(resource.dropped_attributes_count as u64);
    w.bytes(resource.schema_url.as_bytes());
    w.buf
}

/// Reads what [`encode_resource`] wrote.
pub fn decode_resource(bytes: &[u8]) -> Result<Resource, DecodeError> {
    let mut r = Reader::new(bytes);
    let res = read_resource(&mut r)?;
    if !r.is_empty() {
        return err("bytes after the end of a resource");
    }
    Ok(res)
}

fn read_resource(r: &mut Reader<'_>) -> Result<Resource, DecodeError> {
    version(r, "resource")?;
    Ok(Resource {
        attributes: r.attrs(0)?,
        dropped_attributes_count: r.u32("dropped resource attributes")?,
        schema_url: r.str()?.to_owned(),
    })
}

/// The id of a resource's encoding: the same on every node and in every process (FNV-1a, 64
/// bits), so nodes that see the same service share one row of `resources`.
pub fn resource_id(encoded: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in encoded {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes a batch of whole spans, each distinct resource once.
pub fn encode_batch(spans: &[Span]) -> Vec<u8> {
    let mut resources: Vec<&Arc<Resource>> = Vec::new();
    let mut index = Vec::with_capacity(spans.len());
    for s in spans {
        let i = match resources.iter().position(|r| Arc::ptr_eq(r, &s.resource) || ***r == *s.resource) {
            Some(i) => i,
            None => {
                resources.push(&s.resource);
                resources.len() - 1
            }
        };
        index.push(i);
    }
    let mut w = Writer::default();
    w.u8(FORMAT_VERSION);
    w.varint(resources.len() as u64);
    for r in &resources {
        w.bytes(&encode_resource(r));
    }
    w.varint(spans.len() as u64);
    let mut payload = Vec::new();
    for (s, i) in spans.iter().zip(index) {
        w.buf.extend_from_slice(s.trace_id.as_bytes());
        w.varint(i as u64);
        payload.clear();
        encode_payload(s, &mut payload);
        w.bytes(&payload);
    }
    w.buf
}

/// Reads what [`encode_batch`] wrote.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Span>, DecodeError> {
    let mut r = Reader::new(bytes);
    version(&mut r, "buffered batch")?;
    let n = r.varint()?;
    if n > bytes.len() as u64 {
        return err("resource count runs past the end");
    }
    let mut resources = Vec::new();
    for _ in 0..n {
        resources.push(Arc::new(decode_resource(r.bytes()?)?));
    }
    let n = r.varint()?;
    if n > bytes.len() as u64 {
        return err("span count runs past the end");
    }
    let mut spans = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let trace_id = r.trace_id()?;
        let i = r.varint()? as usize;
        let resource =
            resources.get(i).ok_or_else(|| DecodeError(format!("resource index {i} out of range")))?;
        spans.push(decode_payload(r.bytes()?, trace_id, Arc::clone(resource))?);
    }
    if !r.is_empty() {
        return err("bytes after the end of a batch");
    }
    Ok(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skein_store::testdata::SpanBuilder as B;

    fn rich() -> Vec<Span> {
        vec![
            B::new(1, 1)
                .service("frontend")
                .resource_attr("host.name", AttrValue::Str("web-1".into()))
                .scope("skein-otel", "0.1.0")
                .name("GET /checkout")
                .kind(SpanKind::Server)
                .attr("n", AttrValue::Int(-5))
                .attr("f", AttrValue::Double(-0.25))
                .attr("b", AttrValue::Bool(true))
                .attr("tags", AttrValue::Array(vec![AttrValue::Str("a".into()), AttrValue::Empty]))
                .attr("blob", AttrValue::Bytes(vec![0, 1, 2]))
                .attr("map", AttrValue::KvList(vec![KeyValue::new("n", AttrValue::Int(i64::MIN))]))
                .error("boom")
                .event("exception", 5, vec![KeyValue::string("exception.type", "Panic")])
                .link(9, 9)
                .build(),
            B::new(1, 2).service("checkout").name("Checkout").kind(SpanKind::Client).parent(1).build(),
            B::new(2, 1)
                .service("frontend")
                .resource_attr("host.name", AttrValue::Str("web-1".into()))
                .build(),
        ]
    }

    #[test]
    fn batches_round_trip_every_field() {
        let spans = rich();
        let bytes = encode_batch(&spans);
        assert_eq!(decode_batch(&bytes).unwrap(), spans);
    }

    #[test]
    fn payload_and_resource_round_trip() {
        for s in rich() {
            let mut p = Vec::new();
            encode_payload(&s, &mut p);
            let res = decode_resource(&encode_resource(&s.resource)).unwrap();
            assert_eq!(decode_payload(&p, s.trace_id, Arc::new(res)).unwrap(), s);
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_or_a_value_never_a_panic() {
        let bytes = encode_batch(&rich());
        for n in 0..bytes.len() {
            assert!(decode_batch(&bytes[..n]).is_err(), "a batch cut at {n} bytes is refused");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let _ = decode_batch(&b);
            }
        }
    }

    #[test]
    fn resource_ids_are_stable_across_processes() {
        // Fixed values: a change would split every stored resource in two.
        assert_eq!(resource_id(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(resource_id(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
