//! What a `tracing` span costs through `skein_otel::tracing::layer()`, beside a raw SDK span
//! with the same attributes and beside `tracing-opentelemetry`, in the same run.
//!
//! Run: `cargo bench -p skein-otel --all-features --bench tracing_layer`
//!
//! Every case makes one span with four fields (an integer, a string, a float, a bool), enters
//! it, exits it and closes it. Each provider hands spans to a batch processor feeding an
//! exporter that discards, so the figures are the cost on the application's thread.
//! `tracing-opentelemetry` is configured to record what skein-otel's layer records (no code
//! location, no thread ids, no busy/idle timings, no target), its cheapest setting.

use std::hint::black_box;
use std::sync::LazyLock;

use divan::Bencher;
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

fn main() {
    divan::main();
}

mod common;
use common::PROVIDER;

/// The raw cases' tracer, made once as an application makes it (not per span).
static TRACER: LazyLock<SdkTracer> = LazyLock::new(|| PROVIDER.tracer("bench"));

/// The span's field values, read at run time as an application's would be.
fn values() -> (u64, &'static str, f64, bool) {
    black_box((42, "alice@example.com", 19.99, true))
}

/// An SDK span with the four values as attributes, started.
fn sdk_span(
    tracer: &SdkTracer,
    (id, customer, amount, vip): (u64, &str, f64, bool),
) -> opentelemetry_sdk::trace::Span {
    tracer
        .span_builder("load_order")
        .with_attributes(vec![
            KeyValue::new("order.id", id as i64),
            KeyValue::new("customer", customer.to_owned()),
            KeyValue::new("amount", amount),
            KeyValue::new("vip", vip),
        ])
        .start(tracer)
}

/// One SDK span with the same four attributes, started and ended.
#[divan::bench]
fn raw_sdk_span() {
    sdk_span(&TRACER, values()).end();
}

/// The same SDK span made current and left again, as `tracer.in_span` does: what any span
/// that other code can see as `Context::current()` costs at the API's level.
#[divan::bench]
fn raw_sdk_span_made_current() {
    let cx = Context::current_with_span(sdk_span(&TRACER, values()));
    drop(cx.clone().attach());
    cx.span().end();
}

fn tracing_span() {
    let (id, customer, amount, vip) = values();
    let span = tracing::info_span!("load_order", order.id = id, customer, amount, vip);
    drop(span.enter());
    drop(span);
}

/// A `tracing` span (create, enter, exit, close) with only the registry: what `tracing`
/// itself costs, before any layer.
#[divan::bench]
fn tracing_registry_only(b: Bencher) {
    tracing::subscriber::with_default(tracing_subscriber::registry(), || b.bench_local(tracing_span));
}

/// The floor of any layer that gives `tracing` spans one current context with the SDK: the
/// registry's span (as `tracing_registry_only`) plus an SDK span with the same attributes,
/// made current while the `tracing` span is entered and ended when it closes, written out
/// by hand with nothing else (no field reading, no per-span storage).
#[divan::bench]
fn floor_registry_and_current_sdk_span(b: Bencher) {
    tracing::subscriber::with_default(tracing_subscriber::registry(), || {
        b.bench_local(|| {
            let (id, customer, amount, vip) = values();
            let span = tracing::info_span!("load_order", order.id = id, customer, amount, vip);
            let cx = Context::current_with_span(sdk_span(&TRACER, (id, customer, amount, vip)));
            {
                let _entered = span.enter();
                drop(cx.clone().attach());
            }
            drop(span);
            cx.span().end();
        })
    });
}

#[divan::bench]
fn skein_otel_layer(b: Bencher) {
    let subscriber =
        tracing_subscriber::registry().with(skein_otel::tracing::layer().with_tracer_provider(&PROVIDER));
    tracing::subscriber::with_default(subscriber, || b.bench_local(tracing_span));
}

#[divan::bench]
fn tracing_opentelemetry_layer(b: Bencher) {
    let layer = tracing_opentelemetry::layer()
        .with_tracer(PROVIDER.tracer("bench"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false);
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || b.bench_local(tracing_span));
}

/// `tracing-opentelemetry` as its documentation sets it up (defaults: location, threads,
/// busy/idle timings, target).
#[divan::bench]
fn tracing_opentelemetry_layer_defaults(b: Bencher) {
    let layer = tracing_opentelemetry::layer().with_tracer(PROVIDER.tracer("bench"));
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || b.bench_local(tracing_span));
}

/// A `debug_span!` under an INFO filter, with skein-otel's layer installed: nothing is made.
#[divan::bench]
fn skein_otel_layer_disabled_level(b: Bencher) {
    let subscriber = tracing_subscriber::registry()
        .with(skein_otel::tracing::layer().with_tracer_provider(&PROVIDER))
        .with(LevelFilter::INFO);
    tracing::subscriber::with_default(subscriber, || {
        b.bench_local(|| {
            let (id, customer, amount, vip) = values();
            let span = tracing::debug_span!("load_order", order.id = id, customer, amount, vip);
            drop(span.enter());
        })
    });
}

/// The loop alone, with the same values read: the floor the disabled case is compared with.
#[divan::bench]
fn nothing(b: Bencher) {
    b.bench_local(values);
}

/// An event inside a span (a span event with its fields), per event.
#[divan::bench]
fn skein_otel_layer_event(b: Bencher) {
    let subscriber =
        tracing_subscriber::registry().with(skein_otel::tracing::layer().with_tracer_provider(&PROVIDER));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("events");
        let _entered = span.enter();
        b.bench_local(|| {
            let (id, ..) = values();
            tracing::info!(order.id = id, "order loaded");
        });
    });
}
