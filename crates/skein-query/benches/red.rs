//! The RED metrics API answered from pre-aggregates over a day of 100M spans (figures, no
//! assertions): what `GET /api/metrics/*` costs with `lookback` = 24 h, `step` = 1 min and
//! `ratePer` = 10 min, Jaeger UI's Monitor tab over its longest window.
//!
//! The data: 100M spans over 24 hours in 64 series (8 services × 8 operations, SERVER spans)
//! with log-normal durations (each operation its own median, 1 to 200 ms, σ = 1) and 2 %
//! errors — about 1,100 spans per series per minute, so each minute's latency sketch has the
//! few hundred buckets real traffic fills. The engine keeps them per block: here 24 blocks of
//! an hour each, zstd-compressed as block files hold them. A request decodes every block's
//! cells, keeps those of its services and minutes, and computes the points; reading the
//! bytes from the page cache is not included.
//!
//! Run: `cargo bench -p skein-query --bench red`

use std::sync::LazyLock;

use skein_model::{SpanKind, Str};
use skein_query::metrics::{Measure, MetricsQuery, compute_from_red, red_window};
use skein_store::red::{RED_CELL_NANOS, RedSummary};

fn main() {
    let t = std::time::Instant::now();
    let bytes: usize = BLOCKS.iter().map(Vec::len).sum();
    eprintln!(
        "pre-aggregates of {SPANS} spans over a day: {:.1} MiB in {} blocks (built in {:.1} s)",
        bytes as f64 / (1 << 20) as f64,
        BLOCKS.len(),
        t.elapsed().as_secs_f64()
    );
    divan::main();
}

const SERVICES: usize = 8;
const OPERATIONS: usize = 8;
const SPANS: u64 = 100_000_000;
const DAY_MINUTES: u64 = 24 * 60;
/// 2026-01-01T00:00:00Z, in minutes.
const FIRST_MINUTE: u64 = 1_767_225_600 / 60;

fn service(i: usize) -> String {
    format!("service-{i}")
}

/// The 24 hourly blocks' pre-aggregates, encoded and compressed.
static BLOCKS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut uniform = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let per_cell = SPANS / DAY_MINUTES / (SERVICES * OPERATIONS) as u64;
    let names: Vec<Str> = (0..OPERATIONS).map(|o| format!("GET /api/op-{o}").into()).collect();
    (0..24)
        .map(|hour| {
            let mut red = RedSummary::default();
            for minute in FIRST_MINUTE + hour * 60..FIRST_MINUTE + (hour + 1) * 60 {
                for s in 0..SERVICES {
                    let service = service(s);
                    for (o, name) in names.iter().enumerate() {
                        let median = 1e6 * (1.0 + ((s * OPERATIONS + o) * 37 % 200) as f64);
                        for _ in 0..per_cell {
                            let z =
                                (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
                            let duration = (median * z.exp()) as u64;
                            let error = uniform() < 0.02;
                            red.add_parts(
                                &service,
                                name,
                                SpanKind::Server,
                                minute * RED_CELL_NANOS,
                                duration,
                                error,
                            );
                        }
                    }
                }
            }
            zstd::bulk::compress(&red.encode(), 3).expect("zstd compresses")
        })
        .collect()
});

/// Decodes every block and answers `measure` over the day for `services`.
fn answer(measure: Measure, services: Vec<String>, group_by_operation: bool) -> usize {
    let minute = RED_CELL_NANOS;
    let query = MetricsQuery {
        services,
        group_by_operation,
        span_kinds: vec![SpanKind::Server],
        end_nanos: (FIRST_MINUTE + DAY_MINUTES) * minute,
        lookback_nanos: DAY_MINUTES * minute - 10 * minute,
        step_nanos: minute,
        rate_per_nanos: 10 * minute,
    };
    let (aligned, minutes) = red_window(&query);
    let mut red = RedSummary::default();
    let latency = matches!(measure, Measure::Latencies(_));
    for block in BLOCKS.iter() {
        let raw = zstd::stream::decode_all(&block[..]).expect("decompresses");
        red.decode_where(&raw, &minutes, Some(&aligned.services), latency).expect("decodes");
    }
    compute_from_red(measure, &aligned, &red).metrics.len()
}

fn all_services() -> Vec<String> {
    (0..SERVICES).map(service).collect()
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn calls_one_service_by_operation() -> usize {
    answer(Measure::Calls, vec![service(3)], true)
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn p95_one_service_by_operation() -> usize {
    answer(Measure::Latencies(0.95), vec![service(3)], true)
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn p95_every_service() -> usize {
    answer(Measure::Latencies(0.95), all_services(), false)
}
