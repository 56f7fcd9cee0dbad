//! Decoding an OTLP/protobuf export request into model spans: the direct decoder the
//! receivers use, beside prost's generated types followed by the conversion (the general
//! path it falls back to). Figures, no assertions.
//!
//! Run: `cargo bench -p skein-otlp --bench decode`

use std::sync::LazyLock;

use divan::Bencher;
use prost::Message;
use skein_otlp::Limits;
use skein_otlp::proto::collector::ExportTraceServiceRequest;
use skein_otlp::proto::common::{AnyValue, InstrumentationScope, KeyValue, any_value::Value};
use skein_otlp::proto::resource::Resource;
use skein_otlp::proto::trace::{ResourceSpans, ScopeSpans, Span, span::SpanKind};

fn main() {
    divan::main();
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

/// What an SDK's batch processor sends: 500 spans of 50 traces, 11 attributes each (string
/// and integer values, some per request, some per span), one resource and scope.
static BODY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let start = 1_700_000_000_000_000_000u64;
    let spans = (0..500u32)
        .map(|i| {
            let (trace, n) = (i / 10, i % 10);
            Span {
                trace_id: [&(trace + 1).to_be_bytes()[..], &[7; 12]].concat(),
                span_id: [&(i + 1).to_be_bytes()[..], &[3; 4]].concat(),
                parent_span_id: if n == 0 {
                    Vec::new()
                } else {
                    [&(trace * 10 + 1).to_be_bytes()[..], &[3; 4]].concat()
                },
                name: ["GET /api/cart", "SELECT shop.orders", "redis GET", "shop.Inventory/Reserve"]
                    [n as usize % 4]
                    .into(),
                kind: [SpanKind::Server, SpanKind::Client][n as usize % 2] as i32,
                start_time_unix_nano: start + u64::from(i) * 1_000,
                end_time_unix_nano: start + u64::from(i) * 1_000 + 250_000,
                attributes: vec![
                    kv("http.request.method", Value::StringValue("GET".into())),
                    kv("http.response.status_code", Value::IntValue(200)),
                    kv("url.path", Value::StringValue(format!("/api/cart/{trace}"))),
                    kv("server.address", Value::StringValue("cart.shop.internal".into())),
                    kv("server.port", Value::IntValue(8080)),
                    kv("network.protocol.version", Value::StringValue("1.1".into())),
                    kv(
                        "user_agent.original",
                        Value::StringValue("Mozilla/5.0 (X11; Linux x86_64) shop/1.0".into()),
                    ),
                    kv("app.user.id", Value::StringValue(format!("user-{}", trace % 97))),
                    kv("app.order.id", Value::StringValue(format!("order-{trace:08}"))),
                    kv("app.cart.items", Value::IntValue(i64::from(n))),
                    kv("app.request.id", Value::StringValue(format!("{:032x}", u128::from(i) * 7919))),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue("cart".into())),
                    kv("telemetry.sdk.language", Value::StringValue("rust".into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope { name: "skein-otel".into(), ..Default::default() }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
});

/// The receivers' path: straight from the bytes to model spans.
#[divan::bench]
fn direct_500_spans(b: Bencher) {
    let limits = Limits::default();
    b.bench(|| skein_otlp::decode_protobuf_to_model(&BODY, &limits).unwrap());
}

/// prost's generated types, then the conversion.
#[divan::bench]
fn prost_then_to_model_500_spans(b: Bencher) {
    let limits = Limits::default();
    b.bench(|| skein_otlp::to_model(skein_otlp::decode_protobuf(&BODY).unwrap(), &limits));
}
