//! `init` + `tracing::layer()` against a real OTLP receiver: `#[instrument]` spans, an
//! OpenTelemetry span made inside them and their events arrive as one trace with the right
//! parents, through the provider `init` installed (this binary's only global setup).

#![cfg(feature = "tracing")]

mod support;

use std::collections::HashMap;

use opentelemetry::trace::Tracer as _;
use opentelemetry_proto::tonic::trace::v1::Span;
use support::{start_collector, within};
use tracing_subscriber::prelude::*;

#[tracing::instrument]
fn checkout(order: u64) -> u64 {
    tracing::info!(order, "checking out");
    let total = price(order);
    opentelemetry::global::tracer("payments").in_span("charge card", |_| total)
}

#[tracing::instrument(fields(otel.kind = "client"))]
fn price(order: u64) -> u64 {
    order * 3
}

#[test]
fn instrumented_functions_reach_an_otlp_receiver_as_one_trace() {
    let (grpc, _, received) = start_collector();
    within(30, "export through the tracing layer", move || {
        let guard = skein_otel::init("tracing-svc").endpoint(format!("http://{grpc}")).install().unwrap();
        let subscriber = tracing_subscriber::registry().with(skein_otel::tracing::layer());
        tracing::subscriber::with_default(subscriber, || assert_eq!(checkout(7), 21));
        guard.shutdown().unwrap();
    });
    assert_eq!(received.resource_attr("service.name").as_deref(), Some("tracing-svc"));
    let requests = received.0.lock().unwrap();
    let spans: Vec<&Span> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), *s)).collect();
    assert_eq!(spans.len(), 3, "{:?}", by_name.keys());
    let (root, price, charge) = (by_name["checkout"], by_name["price"], by_name["charge card"]);
    assert!(root.parent_span_id.is_empty());
    assert_eq!(price.parent_span_id, root.span_id);
    assert_eq!(charge.parent_span_id, root.span_id);
    assert!(spans.iter().all(|s| s.trace_id == root.trace_id));
    // SpanKind::Client is 3 in OTLP.
    assert_eq!(price.kind, 3);
    assert_eq!(root.events.len(), 1);
    assert_eq!(root.events[0].name, "checking out");
}
