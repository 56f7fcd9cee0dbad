//! Encode/decode cost of WAL records (the row codec) and of block chunks (columnar, packed)
//! (figures, no assertions).
//!
//! Run: `cargo bench -p skein-engine --bench blocks`

use std::sync::LazyLock;

use divan::Bencher;
use skein_engine::codec::{decode_spans, encode_spans};
use skein_engine::columnar::{Packer, decode_chunk, decode_chunk_traces, encode_chunk, pack, unpack};
use skein_model::{AttrValue, Span, SpanKind};
use skein_store::testdata::SpanBuilder;

fn main() {
    divan::main();
}

/// 1,000 spans in 100 traces of 10, with 11 attributes each.
static SPANS: LazyLock<Vec<Span>> = LazyLock::new(|| {
    let mut spans = Vec::with_capacity(1000);
    for t in 0..100u8 {
        for i in 1..=10u8 {
            let mut b = SpanBuilder::new(t.wrapping_add(1), i)
                .service(["frontend", "checkout", "payment"][i as usize % 3])
                .name(format!("op-{i}"))
                .kind(if i % 2 == 0 { SpanKind::Client } else { SpanKind::Server });
            if i > 1 {
                b = b.parent(1);
            }
            for a in 0..11 {
                b = b.attr(
                    &format!("attr.{a}"),
                    if a % 3 == 0 {
                        AttrValue::Int(a * 1000 + t as i64)
                    } else {
                        AttrValue::Str(format!("value-{a}-{t}").into())
                    },
                );
            }
            spans.push(b.build());
        }
    }
    spans
});

/// WAL records: the row codec.
#[divan::bench]
fn wal_encode_1000_spans(b: Bencher) {
    b.bench(|| encode_spans(&SPANS));
}

#[divan::bench]
fn wal_decode_1000_spans(b: Bencher) {
    let bytes = encode_spans(&SPANS);
    b.bench(|| decode_spans(&bytes).unwrap());
}

/// Block chunks: the columnar encoding, then packed (each column zstd level 3, as the block
/// writer does).
#[divan::bench]
fn chunk_encode_1000_spans(b: Bencher) {
    b.bench(|| encode_chunk(&SPANS));
}

fn packed() -> Vec<u8> {
    pack(&encode_chunk(&SPANS), &mut Packer::new()).unwrap()
}

#[divan::bench]
fn chunk_pack_1000_spans(b: Bencher) {
    let bytes = encode_chunk(&SPANS);
    let mut packer = Packer::new();
    b.bench_local(|| pack(&bytes, &mut packer).unwrap());
}

#[divan::bench]
fn chunk_unpack_and_decode_1000_spans(b: Bencher) {
    let encoded = encode_chunk(&SPANS);
    let packed = packed();
    println!(
        "chunk of 1000 spans: {} bytes encoded, {} packed ({:.1} bytes/span)",
        encoded.len(),
        packed.len(),
        packed.len() as f64 / 1000.0
    );
    b.bench(|| decode_chunk(&unpack(&packed).unwrap()).unwrap());
}

/// A read by id: one trace (10 spans) of the chunk's 100 built, the others stepped over.
#[divan::bench]
fn chunk_unpack_and_decode_one_trace_of_100(b: Bencher) {
    let packed = packed();
    let wanted = SPANS[500].trace_id;
    b.bench(|| decode_chunk_traces(&unpack(&packed).unwrap(), &|id| *id == wanted, None).unwrap());
}
