//! The encodings of the ClickHouse store (specified in `docs/clickhouse.md`), written with the
//! primitives every backend shares ([`skein_store::codec`]):
//!
//! - [`encode_payload`] / [`decode_payload`]: everything of a span but its ids, start time and
//!   resource, for the `payload` column of the `spans` table (those are columns of their own;
//!   the resource is stored once in `resources`, referenced by [`resource_id`]).
//! - [`encode_resource`] / [`decode_resource`]: a resource, for the `resources` table.
//!
//! The local buffer's records are span batches in the embedded engine's WAL encoding
//! ([`skein_store::codec::encode_spans`]). Decoding checks every length and never panics.

use std::sync::Arc;

use skein_model::{Resource, Span, SpanId, TraceId};
use skein_store::codec::err;
pub use skein_store::codec::{DecodeError, Reader, Writer};

/// First byte of every resource encoding.
pub const FORMAT_VERSION: u8 = 1;

/// First byte of the payloads this build writes. Version 1 held the span id and the start
/// time in full; version 2 leaves the id out and writes the start as its distance from the
/// `start_ns` column (0), as both are columns of the row already; version 3 also leaves out
/// the parent span id, which is the `parent_span_id` column (schema version 6).
pub const PAYLOAD_VERSION: u8 = 3;

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

/// Writes a span but what the other columns of its row hold (trace id, span id, parent span
/// id, start time, resource): its scope, then the fields the embedded engine's records hold for
/// every span after the parent ([`Writer::span_body_after_parent`]).
pub fn encode_payload(span: &Span, out: &mut Vec<u8>) {
    let mut w = Writer { buf: std::mem::take(out) };
    w.u8(PAYLOAD_VERSION);
    w.scope(&span.scope);
    w.span_body_after_parent(span, span.start_time_unix_nano);
    *out = w.buf;
}

/// The columns of a `spans` row besides its payload. `parent_span_id` is `None` for a root
/// and for rows written before schema version 6 (their payloads hold the parent).
#[derive(Clone, Copy, Debug)]
pub struct RowIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_span_id: Option<SpanId>,
    pub start_ns: u64,
}

/// Reads what [`encode_payload`] wrote (or versions 1 and 2 of it), with the row's other
/// columns.
pub fn decode_payload(bytes: &[u8], row: RowIds, resource: Arc<Resource>) -> Result<Span, DecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    let (span_id, base) = match version {
        1 => (SpanId::from_bytes(r.array()?).or_else(|e| err(format!("span id: {e}")))?, 0),
        2 | PAYLOAD_VERSION => (row.span_id, row.start_ns),
        v => {
            return err(format!(
                "span payload has format version {v}; this build reads 1 to {PAYLOAD_VERSION}"
            ));
        }
    };
    let scope = Arc::new(r.scope()?);
    let span = if version == PAYLOAD_VERSION {
        r.span_body_after_parent(row.trace_id, span_id, row.parent_span_id, resource, scope, base)?
    } else {
        r.span_body(row.trace_id, span_id, resource, scope, base)?
    };
    if !r.is_empty() {
        return err("bytes after the end of a span payload");
    }
    Ok(span)
}

/// Writes a payload of version 1 (the span id and start time in full), for tests that read
/// rows written by older versions.
#[cfg(test)]
fn encode_payload_v1(span: &Span, out: &mut Vec<u8>) {
    let mut w = Writer { buf: std::mem::take(out) };
    w.u8(1);
    w.buf.extend_from_slice(span.span_id.as_bytes());
    w.scope(&span.scope);
    w.span_body(span, 0);
    *out = w.buf;
}

/// Writes a payload of version 2 (the parent in the payload), for tests that read rows written
/// by schema versions before 6.
#[cfg(test)]
fn encode_payload_v2(span: &Span, out: &mut Vec<u8>) {
    let mut w = Writer { buf: std::mem::take(out) };
    w.u8(2);
    w.scope(&span.scope);
    w.span_body(span, span.start_time_unix_nano);
    *out = w.buf;
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

    fn row(s: &Span) -> RowIds {
        RowIds {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent_span_id: s.parent_span_id,
            start_ns: s.start_time_unix_nano,
        }
    }

    #[test]
    fn payload_and_resource_round_trip_every_field() {
        for s in rich_batch() {
            let mut p = Vec::new();
            encode_payload(&s, &mut p);
            let res = decode_resource(&encode_resource(&s.resource)).unwrap();
            assert_eq!(decode_payload(&p, row(&s), Arc::new(res)).unwrap(), s);
        }
    }

    #[test]
    fn older_payloads_are_read_with_their_own_ids_and_start() {
        let mut with_parent = 0;
        for s in rich_batch() {
            let (mut v1, mut v2, mut v3) = (Vec::new(), Vec::new(), Vec::new());
            encode_payload_v1(&s, &mut v1);
            encode_payload_v2(&s, &mut v2);
            encode_payload(&s, &mut v3);
            assert!(v2.len() + 8 < v1.len(), "version 2 leaves out the span id and most of the start");
            // Version 3 leaves out the parent (its flag byte, and the id when there is one).
            if s.parent_span_id.is_some() {
                with_parent += 1;
                assert_eq!(v3.len() + 9, v2.len());
            } else {
                assert_eq!(v3.len() + 1, v2.len());
            }
            // Rows before schema version 6 hold no parent in their column (read as none),
            // and version 1 rows held the same ids in their columns: the payload's are used.
            let old = RowIds { parent_span_id: None, ..row(&s) };
            let other = RowIds { span_id: SpanId::from_bytes([9; 8]).unwrap(), start_ns: 7, ..old };
            assert_eq!(decode_payload(&v1, other, Arc::clone(&s.resource)).unwrap(), s);
            assert_eq!(decode_payload(&v2, old, Arc::clone(&s.resource)).unwrap(), s);
            assert_eq!(decode_payload(&v3, row(&s), Arc::clone(&s.resource)).unwrap(), s);
            let mut v4 = v3.clone();
            v4[0] = 4;
            assert!(decode_payload(&v4, row(&s), Arc::clone(&s.resource)).is_err());
        }
        assert!(with_parent > 0, "the batch has child spans");
    }

    #[test]
    fn every_truncation_is_refused_and_no_bit_flip_panics() {
        for s in rich_batch() {
            let mut p = Vec::new();
            encode_payload(&s, &mut p);
            let r = encode_resource(&s.resource);
            for n in 0..p.len() {
                assert!(
                    decode_payload(&p[..n], row(&s), Arc::clone(&s.resource)).is_err(),
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
                    let _ = decode_payload(&b, row(&s), Arc::clone(&s.resource));
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
