//! The official Rust OpenTelemetry SDK (`opentelemetry-otlp`) sends to a running Skein over
//! gRPC and HTTP/protobuf, with gzip and zstd; the traces come back through the Jaeger API intact.

mod common;

use common::TestServer;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider as _,
};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_otlp::{Compression, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value as Json;

/// Makes one trace: a SERVER root with every attribute type, an event, a link and an error,
/// and a CLIENT child. Returns the trace id.
fn emit_trace(provider: &SdkTracerProvider) -> String {
    let scope = InstrumentationScope::builder("interop-test").with_version("1.2.3").build();
    let tracer = provider.tracer_with_scope(scope);
    let linked = SpanContext::new(
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let root = tracer
        .span_builder("GET /checkout")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("http.response.status_code", 503i64),
            KeyValue::new("retry", true),
            KeyValue::new("ratio", 0.75),
            KeyValue::new("huge", 9_007_199_254_740_993i64),
            KeyValue::new(
                "tags",
                Value::Array(Array::String(vec![StringValue::from("a"), StringValue::from("b")])),
            ),
        ])
        .with_links(vec![Link::with_context(linked)])
        .start(&tracer);
    let trace_id = root.span_context().trace_id().to_string();
    let cx = Context::current_with_span(root);
    {
        let child =
            tracer.span_builder("SELECT orders").with_kind(SpanKind::Client).start_with_context(&tracer, &cx);
        drop(child);
    }
    let span = cx.span();
    span.add_event("cache miss", vec![KeyValue::new("cache.key", "cart:42")]);
    span.set_status(Status::error("upstream unavailable"));
    span.end();
    trace_id
}

fn provider_with(exporter: opentelemetry_otlp::SpanExporter, service: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .with_attribute(KeyValue::new("deployment.environment.name", "test"))
                .build(),
        )
        .build()
}

fn tag<'a>(tags: &'a Json, key: &str) -> &'a Json {
    tags.as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("tag {key} missing in {tags}"))
}

/// Checks every field the SDK sent, as Jaeger's JSON shows it.
fn check_trace(body: &Json, trace_id: &str, service: &str) {
    assert_eq!(body["errors"], Json::Null, "{body}");
    let trace = &body["data"][0];
    assert_eq!(trace["traceID"], trace_id);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{trace}");
    let root = spans.iter().find(|s| s["operationName"] == "GET /checkout").expect("root span");
    let child = spans.iter().find(|s| s["operationName"] == "SELECT orders").expect("child span");

    let process = &trace["processes"][root["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], service);
    assert_eq!(tag(&process["tags"], "deployment.environment.name")["value"], "test");
    assert_eq!(tag(&process["tags"], "telemetry.sdk.language")["value"], "rust");
    assert_eq!(tag(&process["tags"], "telemetry.sdk.name")["value"], "opentelemetry");

    let tags = &root["tags"];
    assert_eq!(tag(tags, "http.request.method")["value"], "GET");
    assert_eq!(tag(tags, "http.response.status_code")["type"], "int64");
    assert_eq!(tag(tags, "http.response.status_code")["value"], 503);
    assert_eq!(tag(tags, "retry")["type"], "bool");
    assert_eq!(tag(tags, "retry")["value"], true);
    assert_eq!(tag(tags, "ratio")["type"], "float64");
    assert_eq!(tag(tags, "ratio")["value"], 0.75);
    assert_eq!(tag(tags, "huge")["value"], "9007199254740993", "int64 beyond 2^53 as a string");
    assert_eq!(tag(tags, "tags")["value"], r#"["a","b"]"#);
    assert_eq!(tag(tags, "span.kind")["value"], "server");
    assert_eq!(tag(tags, "otel.scope.name")["value"], "interop-test");
    assert_eq!(tag(tags, "otel.scope.version")["value"], "1.2.3");
    assert_eq!(tag(tags, "otel.status_code")["value"], "ERROR");
    assert_eq!(tag(tags, "otel.status_description")["value"], "upstream unavailable");
    assert_eq!(tag(tags, "error")["value"], true);
    assert_eq!(root["flags"], 1, "sampled");
    assert_eq!(root["references"].as_array().unwrap().len(), 1);
    assert_eq!(root["references"][0]["refType"], "FOLLOWS_FROM");
    assert_eq!(root["references"][0]["traceID"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(root["references"][0]["spanID"], "b7ad6b7169203331");
    let log = &root["logs"][0];
    assert_eq!(tag(&log["fields"], "event")["value"], "cache miss");
    assert_eq!(tag(&log["fields"], "cache.key")["value"], "cart:42");
    let (start, duration, ts) = (
        root["startTime"].as_u64().unwrap(),
        root["duration"].as_u64().unwrap(),
        log["timestamp"].as_u64().unwrap(),
    );
    assert!(start > 1_600_000_000_000_000, "startTime in µs: {start}");
    assert!(ts >= start && ts <= start + duration, "event inside its span");
    assert_eq!(root["warnings"], Json::Null);

    assert_eq!(child["references"][0]["refType"], "CHILD_OF");
    assert_eq!(child["references"][0]["spanID"], root["spanID"]);
    assert_eq!(tag(&child["tags"], "span.kind")["value"], "client");
    assert_eq!(child["processID"], root["processID"]);
}

#[test]
fn rust_sdk_over_grpc_with_gzip() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start());
    let exporter = {
        let _guard = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", server.grpc))
            .with_compression(Compression::Gzip)
            .build()
            .unwrap()
    };
    let provider = provider_with(exporter, "rust-grpc");
    let trace_id = emit_trace(&provider);
    provider.shutdown().unwrap();
    let (status, body) = rt.block_on(server.get_json(&format!("/api/traces/{trace_id}")));
    assert_eq!(status, 200, "{body}");
    check_trace(&body, &trace_id, "rust-grpc");
    rt.block_on(server.stop());
}

#[test]
fn rust_sdk_over_http_protobuf() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(server.otlp_http_url())
        .with_compression(Compression::Gzip)
        .build()
        .unwrap();
    let provider = provider_with(exporter, "rust-http");
    let trace_id = emit_trace(&provider);
    provider.shutdown().unwrap();
    let (status, body) = rt.block_on(server.get_json(&format!("/api/traces/{trace_id}")));
    assert_eq!(status, 200, "{body}");
    check_trace(&body, &trace_id, "rust-http");
    // The search finds it too, by service and by tag.
    let (_, found) = rt.block_on(server.get_json("/api/traces?service=rust-http&tag=retry:true"));
    assert_eq!(found["data"][0]["traceID"], trace_id);
    rt.block_on(server.stop());
}

/// zstd, the other compression the SDK (and the OpenTelemetry Collector) can be set to, over
/// both transports.
#[test]
fn rust_sdk_with_zstd_over_grpc_and_http() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start());
    let grpc = {
        let _guard = rt.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{}", server.grpc))
            .with_compression(Compression::Zstd)
            .build()
            .unwrap()
    };
    let http = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(server.otlp_http_url())
        .with_compression(Compression::Zstd)
        .build()
        .unwrap();
    for (exporter, service) in [(grpc, "rust-grpc-zstd"), (http, "rust-http-zstd")] {
        let provider = provider_with(exporter, service);
        let trace_id = emit_trace(&provider);
        provider.shutdown().unwrap();
        let (status, body) = rt.block_on(server.get_json(&format!("/api/traces/{trace_id}")));
        assert_eq!(status, 200, "{body}");
        check_trace(&body, &trace_id, service);
    }
    rt.block_on(server.stop());
}
