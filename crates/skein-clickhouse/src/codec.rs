//! The encodings of the ClickHouse store (specified in `docs/clickhouse.md`), written with the
//! primitives every backend shares ([`skein_store::codec`]):
//!
//! - [`encode_payload`] / [`decode_payload`]: everything of a span but its trace id and its
//!   resource, for the `payload` column of the `spans` table (the trace id is a column of its
//!   own; the resource is stored once in `resources`, referenced by [`resource_id`]).
//! - [`encode_resource`] / [`decode_resource`]: a resource, for the `resources` table.
//!
//! The local buffer's records are span batches in the embedded engine's WAL encoding
//! ([`skein_store::codec::encode_spans`]). Decoding checks every length and never panics.

use std::sync::Arc;

use skein_model::{
    Event, InstrumentationScope, Link, Resource, Span, SpanId, SpanKind, Status, StatusCode, TraceId,
};
pub use skein_store::codec::{DecodeError, Reader, Writer};
use skein_store::codec::{err, u32_of};

/// First byte of every payload and resource encoding.
pub const FORMAT_VERSION: u8 = 1;

fn version(r: &mut Reader<'_>, what: &str) -> Result<(), DecodeError> {
    match r.u8()? {
        FORMAT_VERSION => Ok(()),
        v => err(format!("{what} has format version {v}; this build reads {FORMAT_VERSION}")),
    }
}

fn span_id(r: &mut Reader<'_>) -> Result<SpanId, DecodeError> {
    SpanId::from_bytes(r.array()?).or_else(|e| err(format!("span id: {e}")))
}

/// A trace id as 16 raw bytes.
pub fn trace_id(r: &mut Reader<'_>) -> Result<TraceId, DecodeError> {
    TraceId::from_bytes(r.array()?).or_else(|e| err(format!("trace id: {e}")))
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
    w.str(&span.trace_state);
    w.varint(span.flags as u64);
    w.str(&span.name);
    w.u8(span.kind.code());
    w.varint(span.start_time_unix_nano);
    w.varint(span.end_time_unix_nano);
    w.attrs(&span.attributes);
    w.varint(span.dropped_attributes_count as u64);
    w.varint(span.events.len() as u64);
    for e in &span.events {
        w.varint(e.time_unix_nano);
        w.str(&e.name);
        w.attrs(&e.attributes);
        w.varint(e.dropped_attributes_count as u64);
    }
    w.varint(span.dropped_events_count as u64);
    w.varint(span.links.len() as u64);
    for l in &span.links {
        w.buf.extend_from_slice(l.trace_id.as_bytes());
        w.buf.extend_from_slice(l.span_id.as_bytes());
        w.str(&l.trace_state);
        w.attrs(&l.attributes);
        w.varint(l.dropped_attributes_count as u64);
        w.varint(l.flags as u64);
    }
    w.varint(span.dropped_links_count as u64);
    w.u8(span.status.code.code());
    w.str(&span.status.message);
    let s = &span.scope;
    w.str(&s.name);
    w.str(&s.version);
    w.attrs(&s.attributes);
    w.varint(s.dropped_attributes_count as u64);
    w.str(&s.schema_url);
    *out = w.buf;
}

/// Reads what [`encode_payload`] wrote, with the trace id and resource given.
pub fn decode_payload(bytes: &[u8], trace_id: TraceId, resource: Arc<Resource>) -> Result<Span, DecodeError> {
    let mut r = Reader::new(bytes);
    version(&mut r, "span payload")?;
    let span_id = span_id(&mut r)?;
    let parent_span_id = match r.u8()? {
        0 => None,
        1 => Some(self::span_id(&mut r)?),
        t => return err(format!("bad parent marker {t}")),
    };
    let trace_state = r.text()?.to_owned();
    let flags = u32_of(r.varint()?, "flags")?;
    let name = r.str()?;
    let k = r.u8()?;
    let kind = SpanKind::from_code(k).ok_or_else(|| DecodeError(format!("bad span kind {k}")))?;
    let start_time_unix_nano = r.varint()?;
    let end_time_unix_nano = r.varint()?;
    let attributes = r.attrs(0)?;
    let dropped_attributes_count = u32_of(r.varint()?, "dropped count")?;
    let n = r.count()?;
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(Event {
            time_unix_nano: r.varint()?,
            name: r.str()?,
            attributes: r.attrs(0)?,
            dropped_attributes_count: u32_of(r.varint()?, "dropped count")?,
        });
    }
    let dropped_events_count = u32_of(r.varint()?, "dropped count")?;
    let n = r.count()?;
    let mut links = Vec::with_capacity(n);
    for _ in 0..n {
        links.push(Link {
            trace_id: self::trace_id(&mut r)?,
            span_id: self::span_id(&mut r)?,
            trace_state: r.text()?.to_owned(),
            attributes: r.attrs(0)?,
            dropped_attributes_count: u32_of(r.varint()?, "dropped count")?,
            flags: u32_of(r.varint()?, "flags")?,
        });
    }
    let dropped_links_count = u32_of(r.varint()?, "dropped count")?;
    let c = r.u8()?;
    let code = StatusCode::from_code(c).ok_or_else(|| DecodeError(format!("bad status code {c}")))?;
    let status = Status { code, message: r.text()?.to_owned() };
    let scope = Arc::new(InstrumentationScope {
        name: r.text()?.to_owned(),
        version: r.text()?.to_owned(),
        attributes: r.attrs(0)?,
        dropped_attributes_count: u32_of(r.varint()?, "dropped count")?,
        schema_url: r.text()?.to_owned(),
    });
    if !r.is_empty() {
        return err("bytes after the end of a span payload");
    }
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
    w.str(&resource.schema_url);
    w.buf
}

/// Reads what [`encode_resource`] wrote.
pub fn decode_resource(bytes: &[u8]) -> Result<Resource, DecodeError> {
    let mut r = Reader::new(bytes);
    version(&mut r, "resource")?;
    let resource = Resource {
        attributes: r.attrs(0)?,
        dropped_attributes_count: u32_of(r.varint()?, "dropped count")?,
        schema_url: r.text()?.to_owned(),
    };
    if !r.is_empty() {
        return err("bytes after the end of a resource");
    }
    Ok(resource)
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

#[cfg(test)]
mod tests {
    use super::*;
    use skein_store::testdata::rich_batch;

    #[test]
    fn payload_and_resource_round_trip_every_field() {
        for s in rich_batch() {
            let mut p = Vec::new();
            encode_payload(&s, &mut p);
            let res = decode_resource(&encode_resource(&s.resource)).unwrap();
            assert_eq!(decode_payload(&p, s.trace_id, Arc::new(res)).unwrap(), s);
        }
    }

    #[test]
    fn every_truncation_is_refused_and_no_bit_flip_panics() {
        for s in rich_batch() {
            let mut p = Vec::new();
            encode_payload(&s, &mut p);
            let r = encode_resource(&s.resource);
            for n in 0..p.len() {
                assert!(
                    decode_payload(&p[..n], s.trace_id, Arc::clone(&s.resource)).is_err(),
                    "payload cut at {n}"
                );
            }
            for n in 0..r.len() {
                assert!(decode_resource(&r[..n]).is_err(), "resource cut at {n}");
            }
            for i in 0..p.len() {
                for bit in 0..8 {
                    let mut b = p.clone();
                    b[i] ^= 1 << bit;
                    let _ = decode_payload(&b, s.trace_id, Arc::clone(&s.resource));
                }
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
