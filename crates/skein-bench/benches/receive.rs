//! What the server does with each OTLP request before it answers, on the realistic load
//! (`skein bench`'s default shape: about 8 services, 16-17 resource attributes, about 11
//! attributes per span, high-cardinality values): decoding the protobuf body into model
//! spans, and compressing it for the WAL. Figures, no assertions; per request of 500 spans,
//! as `skein bench` sends them.
//!
//! Run: `cargo bench -p skein-bench --bench receive`

use std::sync::LazyLock;

use divan::Bencher;
use skein_bench::TrafficShape;

fn main() {
    divan::main();
}

/// Twenty requests of about 500 realistic spans each (fresh ids and values in each).
static BODIES: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| (0..20).map(|_| TrafficShape::default().request_body(500)).collect());

/// As the server decodes: one decoder for every request, resources and scopes shared.
#[divan::bench]
fn decode_realistic_500_spans(bencher: Bencher) {
    let decoder = skein_otlp::ProtobufDecoder::new(skein_otlp::Limits::default());
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % BODIES.len();
        let batch = decoder.decode(&BODIES[i]).expect("a valid request");
        assert_eq!(batch.rejected, 0);
        batch
    });
}

/// Each request on its own (every resource and scope decoded anew).
#[divan::bench]
fn decode_realistic_500_spans_alone(bencher: Bencher) {
    let limits = skein_otlp::Limits::default();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % BODIES.len();
        let batch = skein_otlp::decode_protobuf_to_model(&BODIES[i], &limits).expect("a valid request");
        assert_eq!(batch.rejected, 0);
        batch
    });
}

/// The WAL record of a request: its body compressed by LZ4 (about a fifth of its bytes).
#[divan::bench]
fn lz4_record_500_spans(bencher: Bencher) {
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % BODIES.len();
        lz4_flex::block::compress(&BODIES[i])
    });
}

/// The same into room kept from request to request, as the engine compresses (no allocation,
/// nor the copy when `compress` shrinks its buffer to what it wrote).
#[divan::bench]
fn lz4_record_500_spans_into_kept_room(bencher: Bencher) {
    let mut room =
        vec![0; BODIES.iter().map(|b| lz4_flex::block::get_maximum_output_size(b.len())).max().unwrap_or(0)];
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % BODIES.len();
        lz4_flex::block::compress_into(&BODIES[i], &mut room).expect("room for the worst case")
    });
}
