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

use skein_model::{Resource, Span, SpanId, TraceId};
use skein_store::codec::err;
pub use skein_store::codec::{DecodeError, Reader, Writer};

/// First byte of every payload and resource encoding.
pub const FORMAT_VERSION: u8 = 1;

fn version(r: &mut Reader<'_>, what: &str) -> Result<(), DecodeError> {
    match r.u8()? {
        FORMAT_VERSION => Ok(()),
        v => err(format!("{what} has format version {v}; this build reads {FORMAT_VERSION}")),
    }
}

/// A trace id as 16 raw bytes.
pub fn trace_id(r: &mut Reader<'_>) -> Result<TraceId, DecodeError> {
    TraceId::from_bytes(r.array()?).or_else(|e| err(format!("trace id: {e}")))
}

/// Writes a span but its trace id and resource: its span id, its scope, then the fields the
/// embedded engine's records hold for every span ([`Writer::span_body`]).
pub fn encode_payload(span: &Span, out: &mut Vec<u8>) {
    let mut w = Writer { buf: std::mem::take(out) };
    w.u8(FORMAT_VERSION);
    w.buf.extend_from_slice(span.span_id.as_bytes());
    w.scope(&span.scope);
    w.span_body(span);
    *out = w.buf;
}

/// Reads what [`encode_payload`] wrote, with the trace id and resource given.
pub fn decode_payload(bytes: &[u8], trace_id: TraceId, resource: Arc<Resource>) -> Result<Span, DecodeError> {
    let mut r = Reader::new(bytes);
    version(&mut r, "span payload")?;
    let span_id = SpanId::from_bytes(r.array()?).or_else(|e| err(format!("span id: {e}")))?;
    let scope = Arc::new(r.scope()?);
    let span = r.span_body(trace_id, span_id, resource, scope)?;
    if !r.is_empty() {
        return err("bytes after the end of a span payload");
    }
    Ok(span)
}

/// Writes a resource.
pub fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(FORMAT_VERSION);
    w.resource(resource);
    w.buf
}

/// Reads what [`encode_resource`] wrote.
pub fn decode_resource(bytes: &[u8]) -> Result<Resource, DecodeError> {
    let mut r = Reader::new(bytes);
    version(&mut r, "resource")?;
    let resource = r.resource()?;
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
