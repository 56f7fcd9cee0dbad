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

use rustc_hash::FxHashMap;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// The second of a time in nanoseconds, as a `DateTime` column holds it (the last second a
/// `DateTime` holds for times beyond it).
pub fn secs(nanos: u64) -> u32 {
    (nanos / 1_000_000_000).min(u64::from(u32::MAX)) as u32
}

/// Writes a `RowBinary` array: its length, then each of `items` by `each`.
pub fn array<I: ExactSizeIterator>(w: &mut Writer, items: I, mut each: impl FnMut(&mut Writer, I::Item)) {
    w.varint(items.len() as u64);
    for item in items {
        each(w, item);
    }
}

/// Writes one `traces` row (schema version 8): `trace_id, timestamp, seconds, trace_start,
/// span_ids, parents, parent_ids, starts, resource_ids, payloads` for `spans` (of one trace, in
/// the order they are to be stored, with their resource ids). A span's parent is its place in
/// the row (1-based) when it is in the row, else 0 with the parent's id in `parent_ids` (zeros
/// for a root): the 8 random bytes of a parent id in every row took about 6 bytes per span, a
/// place takes a fifth of a byte. [`decode_trace_row`] turns places back into ids, so what is
/// read is what was written, even when a span id repeats.
pub fn encode_trace_row(w: &mut Writer, trace_id: &TraceId, spans: &[(&Span, u64)], payload: &mut Vec<u8>) {
    let first = spans.iter().map(|(s, _)| s.start_time_unix_nano).min().unwrap_or(0);
    let last = spans.iter().map(|(s, _)| s.start_time_unix_nano).max().unwrap_or(0);
    // A span's place (1-based; the last span with the id when it repeats): a scan in small
    // rows (real traces have a few dozen spans per insert), a map in large ones.
    let map: Option<FxHashMap<SpanId, u16>> = (spans.len() > 32)
        .then(|| spans.iter().enumerate().map(|(i, (s, _))| (s.span_id, i as u16 + 1)).collect());
    let place = |id: &SpanId| match &map {
        Some(map) => map.get(id).copied(),
        None => spans.iter().rposition(|(s, _)| s.span_id == *id).map(|i| i as u16 + 1),
    };
    w.buf.extend_from_slice(trace_id.as_bytes());
    w.buf.extend_from_slice(&secs(first).to_le_bytes());
    w.buf.extend_from_slice(&(secs(last) - secs(first)).to_le_bytes());
    w.buf.extend_from_slice(&first.to_le_bytes());
    array(w, spans.iter(), |w, (s, _)| w.buf.extend_from_slice(s.span_id.as_bytes()));
    array(w, spans.iter(), |w, (s, _)| {
        let p = s.parent_span_id.and_then(|p| place(&p)).unwrap_or(0);
        w.buf.extend_from_slice(&p.to_le_bytes());
    });
    array(w, spans.iter(), |w, (s, _)| {
        let outside = s.parent_span_id.filter(|p| place(p).is_none());
        w.buf.extend_from_slice(&outside.map(|p| *p.as_bytes()).unwrap_or([0; 8]));
    });
    array(w, spans.iter(), |w, (s, _)| {
        w.buf.extend_from_slice(&(s.start_time_unix_nano - first).to_le_bytes())
    });
    array(w, spans.iter(), |w, (_, res)| w.buf.extend_from_slice(&res.to_le_bytes()));
    array(w, spans.iter(), |w, (s, _)| {
        payload.clear();
        encode_payload(s, payload);
        w.bytes(payload);
    });
}

/// A span of a row read back: its ids and start, its resource id and its payload.
pub type RowSpan<'a> = (RowIds, u64, &'a [u8]);

/// Reads one row of `trace_id, trace_start, span_ids, parents, parent_ids, starts,
/// resource_ids, payloads` (as reads select them from `traces`; rows of `spans` are selected
/// in the same shape, grouped by trace, with no places and the starts in full), appending its
/// spans to `out`. Arrays of different lengths and places outside the row are refused.
pub fn decode_trace_row<'a>(r: &mut Reader<'a>, out: &mut Vec<RowSpan<'a>>) -> Result<(), DecodeError> {
    let trace_id = trace_id(r)?;
    let base = u64::from_le_bytes(r.array()?);
    let len = |r: &mut Reader<'a>, n: Option<usize>| -> Result<usize, DecodeError> {
        let m = usize::try_from(r.varint()?).or_else(|_| err("array length"))?;
        match n {
            Some(n) if n != m => err(format!("a trace row's arrays differ in length ({n} and {m})")),
            _ => Ok(m),
        }
    };
    let n = len(r, None)?;
    let mut ids = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        ids.push(SpanId::from_bytes(r.array()?).or_else(|e| err(format!("span id: {e}")))?);
    }
    len(r, Some(n))?;
    let mut places = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        places.push(u16::from_le_bytes(r.array()?));
    }
    len(r, Some(n))?;
    let mut parents = Vec::with_capacity(n.min(4096));
    for &place in &places {
        let outside: [u8; 8] = r.array()?;
        parents.push(match usize::from(place) {
            // Zeros: a root, or a span written before schema version 6 (its payload holds it).
            0 => SpanId::from_bytes(outside).ok(),
            p if p <= n => Some(ids[p - 1]),
            p => return err(format!("a parent's place {p} is outside its row of {n} spans")),
        });
    }
    len(r, Some(n))?;
    let mut starts = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let start = u64::from_le_bytes(r.array()?);
        starts.push(base.checked_add(start).map_or_else(|| err("a span's start overflows"), Ok)?);
    }
    len(r, Some(n))?;
    let mut resources = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        resources.push(u64::from_le_bytes(r.array()?));
    }
    len(r, Some(n))?;
    for i in 0..n {
        let row = RowIds { trace_id, span_id: ids[i], parent_span_id: parents[i], start_ns: starts[i] };
        out.push((row, resources[i], r.slice()?));
    }
    Ok(())
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
    fnv1a(encoded)
}

/// FNV-1a, 64 bits: the same in every process and build.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
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

    /// Reads a row as `encode_trace_row` wrote it: the columns a read selects (`trace_id,
    /// trace_start` and the arrays) are those it wrote without `timestamp, seconds`.
    fn as_read(written: &[u8]) -> Vec<u8> {
        let mut b = written[..16].to_vec();
        b.extend_from_slice(&written[24..]);
        b
    }

    #[test]
    fn trace_rows_round_trip_with_parents_by_place() {
        let batch = rich_batch();
        let trace = batch[0].trace_id;
        let mut spans: Vec<Span> = batch.into_iter().map(|s| Span { trace_id: trace, ..s }).collect();
        // A parent outside the row, and a repeated span id.
        let outside = SpanId::from_bytes([7; 8]).unwrap();
        spans[0].parent_span_id = Some(outside);
        let mut again = spans[1].clone();
        again.parent_span_id = None;
        spans.push(again);
        let with_res: Vec<(&Span, u64)> = spans.iter().map(|s| (s, 42)).collect();
        let (mut w, mut payload) = (Writer::default(), Vec::new());
        encode_trace_row(&mut w, &trace, &with_res, &mut payload);
        let bytes = as_read(&w.buf);
        let mut out = Vec::new();
        let mut r = Reader::new(&bytes);
        decode_trace_row(&mut r, &mut out).unwrap();
        assert!(r.is_empty());
        assert_eq!(out.len(), spans.len());
        for ((ids, res, payload), s) in out.into_iter().zip(&spans) {
            assert_eq!(res, 42);
            assert_eq!(ids, row(s));
            assert_eq!(decode_payload(payload, ids, Arc::clone(&s.resource)).unwrap(), *s);
        }
        assert!(spans.iter().any(|s| s.parent_span_id.is_some_and(|p| p != outside)), "parents in the row");
    }

    #[test]
    fn damaged_trace_rows_are_refused() {
        let spans = rich_batch();
        let trace = spans[0].trace_id;
        let with_res: Vec<(&Span, u64)> =
            spans.iter().filter(|s| s.trace_id == trace).map(|s| (s, 1)).collect();
        let (mut w, mut payload) = (Writer::default(), Vec::new());
        encode_trace_row(&mut w, &trace, &with_res, &mut payload);
        let bytes = as_read(&w.buf);
        for n in 0..bytes.len() {
            assert!(decode_trace_row(&mut Reader::new(&bytes[..n]), &mut Vec::new()).is_err(), "cut at {n}");
        }
        // A place beyond the row's spans.
        let n = with_res.len();
        let places_at = 16 + 8 + 1 + 8 * n + 1;
        let mut bad = bytes.clone();
        bad[places_at..places_at + 2].copy_from_slice(&(n as u16 + 1).to_le_bytes());
        let e = decode_trace_row(&mut Reader::new(&bad), &mut Vec::new()).unwrap_err();
        assert!(e.0.contains("outside its row"), "{e}");
    }

    #[test]
    fn resource_ids_are_stable_across_processes() {
        // Fixed values: a change would split every stored resource in two.
        assert_eq!(resource_id(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(resource_id(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
