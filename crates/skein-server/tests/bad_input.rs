//! Bad input over both OTLP transports: each case gets a clear refusal, and what was stored
//! before stays readable and unchanged.

mod common;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{TestServer, metric};
use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use skein_otlp::proto::collector::ExportTraceServiceRequest;
use skein_otlp::proto::common as pc;
use skein_otlp::proto::resource as pr;
use skein_otlp::proto::trace as pt;
use skein_server::Config;
use tonic::codec::CompressionEncoding;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn span(trace: u8, id: u8) -> pt::Span {
    let start = now();
    pt::Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        name: format!("op-{id}"),
        kind: pt::span::SpanKind::Server as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 1_000_000,
        ..Default::default()
    }
}

fn request(spans: Vec<pt::Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![pt::ResourceSpans {
            resource: Some(pr::Resource {
                attributes: vec![pc::KeyValue {
                    key: "service.name".into(),
                    value: Some(pc::AnyValue {
                        value: Some(pc::any_value::Value::StringValue("svc".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![pt::ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    /// The `message` of the google.rpc.Status body (JSON or protobuf).
    fn message(&self) -> String {
        if self.content_type.starts_with("application/json") {
            let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
            v["message"].as_str().unwrap_or_default().to_owned()
        } else {
            common::rpc_status_message(&self.body)
        }
    }
}

async fn post(server: &TestServer, content_type: &str, encoding: Option<&str>, body: Vec<u8>) -> Answer {
    let mut req =
        reqwest::Client::new().post(server.otlp_http_url()).header("content-type", content_type).body(body);
    if let Some(enc) = encoding {
        req = req.header("content-encoding", enc);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let content_type =
        resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    Answer { status, content_type, body: resp.bytes().await.unwrap().to_vec() }
}

async fn post_proto(server: &TestServer, req: &ExportTraceServiceRequest) -> Answer {
    post(server, "application/x-protobuf", None, req.encode_to_vec()).await
}

/// Stores one known trace and returns its Jaeger JSON, to compare after the bad input.
async fn store_baseline(server: &TestServer) -> serde_json::Value {
    let ok = post_proto(server, &request(vec![span(0x11, 1), span(0x11, 2)])).await;
    assert_eq!(ok.status, 200);
    let (status, trace) = server.get_json("/api/traces/11111111111111111111111111111111").await;
    assert_eq!(status, 200);
    trace
}

#[tokio::test]
async fn http_bad_input_is_refused_with_a_message_and_harms_nothing() {
    let server = TestServer::start_with(Config { max_request_bytes: 64 * 1024, ..Config::default() }).await;
    let baseline = store_baseline(&server).await;

    let a = post(&server, "application/x-protobuf", None, vec![0x0a, 0xff, 0xff, 0xff]).await;
    assert_eq!(a.status, 400);
    assert!(a.message().starts_with("malformed OTLP protobuf: "), "{}", a.message());
    assert_eq!(a.content_type, "application/x-protobuf", "errors answer in the request's encoding");

    let a = post(&server, "application/json", None, b"{\"resourceSpans\": [{]}".to_vec()).await;
    assert_eq!(a.status, 400);
    assert!(a.message().starts_with("malformed OTLP JSON: "), "{}", a.message());

    let a = post(&server, "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(a.status, 415);
    assert_eq!(
        a.message(),
        "unsupported Content-Type \"text/plain\": send application/x-protobuf or application/json"
    );

    let a = post(&server, "application/x-protobuf", Some("br"), vec![1, 2, 3]).await;
    assert_eq!(a.status, 415);
    assert_eq!(
        a.message(),
        "unsupported Content-Encoding \"br\": send one of gzip, zstd, snappy, x-snappy-framed, deflate, zlib, lz4 or none"
    );

    let a = post(&server, "application/x-protobuf", Some("gzip"), b"not gzip at all".to_vec()).await;
    assert_eq!(a.status, 400);
    assert!(a.message().starts_with("malformed gzip body"), "{}", a.message());

    // Over the size limit, raw.
    let big: Vec<pt::Span> = (0..2000u32).map(|i| span(0x22, (i % 250 + 1) as u8)).collect();
    let big = request(big).encode_to_vec();
    assert!(big.len() > 64 * 1024);
    let a = post(&server, "application/x-protobuf", None, big.clone()).await;
    assert_eq!(a.status, 413);
    assert_eq!(
        a.message(),
        "request body is over the limit of 65536 bytes; send smaller batches or raise --max-request-bytes"
    );

    // A gzip bomb: small on the wire, huge once inflated.
    let bomb = gzip(&vec![0u8; 50 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let a = post(&server, "application/x-protobuf", Some("gzip"), bomb).await;
    assert_eq!(a.status, 413);
    assert_eq!(
        a.message(),
        "request body after gzip decompression is over the limit of 65536 bytes; send smaller batches or raise --max-request-bytes"
    );

    // Every span invalid: 400 naming the problem.
    let mut bad = span(0x33, 1);
    bad.trace_id = vec![1, 2, 3];
    let mut zero = span(0x33, 2);
    zero.span_id = vec![0; 8];
    let a = post_proto(&server, &request(vec![bad, zero])).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.message(),
        "no valid spans in request: resource_spans[0].scope_spans[0].spans[0]: invalid trace_id \"010203\": expected 16 bytes, found 3; resource_spans[0].scope_spans[0].spans[1]: invalid span_id \"0000000000000000\": all zero bytes"
    );

    // Some spans invalid: partial success, the rest stored.
    let mut deep = pc::AnyValue { value: Some(pc::any_value::Value::IntValue(1)) };
    for _ in 0..20 {
        deep = pc::AnyValue {
            value: Some(pc::any_value::Value::ArrayValue(pc::ArrayValue { values: vec![deep] })),
        };
    }
    let mut nested = span(0x44, 2);
    nested.attributes.push(pc::KeyValue { key: "deep".into(), value: Some(deep), ..Default::default() });
    let a = post(
        &server,
        "application/json",
        None,
        serde_json::to_vec(&request(vec![span(0x44, 1), nested])).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let answer: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1");
    assert_eq!(
        answer["partialSuccess"]["errorMessage"],
        "resource_spans[0].scope_spans[0].spans[1]: span 0202020202020202 of trace 44444444444444444444444444444444: attribute \"deep\": value nested deeper than the limit of 8 levels"
    );
    let (_, t) = server.get_json("/api/traces/44444444444444444444444444444444").await;
    assert_eq!(t["data"][0]["spans"].as_array().unwrap().len(), 1, "the valid span was stored");

    // A valid gzip body still works, and the baseline is untouched.
    let a = post(
        &server,
        "application/x-protobuf",
        Some("gzip"),
        gzip(&request(vec![span(0x55, 1)]).encode_to_vec()),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(ExportTraceServiceRequest::decode(&a.body[..]).is_ok() || a.body.is_empty());
    let (status, after) = server.get_json("/api/traces/11111111111111111111111111111111").await;
    assert_eq!(status, 200);
    assert_eq!(after, baseline, "stored data is untouched by bad input");

    let m = server.get_text("/metrics").await;
    assert_eq!(metric(&m, "skein_spans_received_total{protocol=\"http\"}"), 4.0);
    // The embedded store reports its serial work (the bench's scaling figures read it).
    assert!(metric(&m, "skein_storage_serial_seconds_total{part=\"head_lock\"}") > 0.0, "{m}");
    // Block writes, compactions and the WAL's writers run as concurrent tasks and threads:
    // background work, not serial.
    assert!(metric(&m, "skein_storage_background_seconds_total{part=\"wal_writers\"}") > 0.0, "{m}");
    assert!(!m.contains("skein_storage_serial_seconds_total{part=\"block_writer\"}"), "{m}");
    for part in ["block_writer", "compaction"] {
        let series = format!("skein_storage_background_seconds_total{{part=\"{part}\"}} ");
        assert!(m.lines().any(|l| l.starts_with(&series)), "{m}");
    }
    assert_eq!(metric(&m, "skein_spans_refused_total{protocol=\"http\",reason=\"invalid\"}"), 3.0);
    assert_eq!(metric(&m, "skein_http_requests_total{endpoint=\"/v1/traces\",status=\"413\"}"), 2.0);
    assert_eq!(metric(&m, "skein_http_requests_total{endpoint=\"/v1/traces\",status=\"415\"}"), 2.0);
    assert_eq!(metric(&m, "skein_requests_refused_total{protocol=\"http\",reason=\"too_large\"}"), 2.0);
    assert_eq!(metric(&m, "skein_requests_refused_total{protocol=\"http\",reason=\"malformed\"}"), 3.0);
    assert_eq!(
        metric(&m, "skein_requests_refused_total{protocol=\"http\",reason=\"unsupported_encoding\"}"),
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn grpc_bad_input_is_refused_with_a_status_and_harms_nothing() {
    let server = TestServer::start_with(Config { max_request_bytes: 64 * 1024, ..Config::default() }).await;
    let baseline = store_baseline(&server).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap()
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);

    let ok = client.export(request(vec![span(0x66, 1)])).await.unwrap().into_inner();
    assert_eq!(ok.partial_success, None);

    let mut bad = span(0x77, 1);
    bad.trace_id = vec![0; 16];
    let err = client.export(request(vec![bad.clone()])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "no valid spans in request: resource_spans[0].scope_spans[0].spans[0]: invalid trace_id \"00000000000000000000000000000000\": all zero bytes"
    );

    let partial = client.export(request(vec![bad, span(0x77, 2)])).await.unwrap().into_inner();
    let partial = partial.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("all zero bytes"), "{}", partial.error_message);

    // Compressed small, over the limit once decompressed: refused by size, and not retryable
    // (`INVALID_ARGUMENT`: exporters retry `RESOURCE_EXHAUSTED`, and would send it forever).
    let mut huge = span(0x88, 1);
    huge.name = "x".repeat(200 * 1024);
    let err = client.export(request(vec![huge])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "request body after gzip decompression is over the limit of 65536 bytes; send smaller batches or raise --max-request-bytes"
    );

    // The server still serves and the baseline is intact.
    let (status, after) = server.get_json("/api/traces/11111111111111111111111111111111").await;
    assert_eq!(status, 200);
    assert_eq!(after, baseline);
    let (status, t) = server.get_json("/api/traces/77777777777777777777777777777777").await;
    assert_eq!(status, 200);
    assert_eq!(t["data"][0]["spans"].as_array().unwrap().len(), 1);

    let m = server.get_text("/metrics").await;
    assert_eq!(metric(&m, "skein_spans_received_total{protocol=\"grpc\"}"), 2.0);
    assert_eq!(metric(&m, "skein_spans_refused_total{protocol=\"grpc\",reason=\"invalid\"}"), 2.0);
    assert_eq!(
        metric(&m, "skein_http_requests_total{endpoint=\"grpc TraceService/Export\",status=\"400\"}"),
        2.0
    );
    assert_eq!(metric(&m, "skein_requests_refused_total{protocol=\"grpc\",reason=\"too_large\"}"), 1.0);
    server.stop().await;
}

/// Sends `body` as the message of a gRPC call to `path`, byte for byte.
async fn grpc_raw(server: &TestServer, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Clone, Copy)]
    struct Raw;
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(buf, &item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let n = bytes::Buf::remaining(buf);
            Ok(Some(bytes::Buf::copy_to_bytes(buf, n).to_vec()))
        }
    }

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, Raw).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn grpc_malformed_messages_and_unknown_methods_are_refused() {
    const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
    let server = TestServer::start().await;
    let baseline = store_baseline(&server).await;

    let err = grpc_raw(&server, EXPORT, vec![0x0a, 0xff, 0xff, 0xff]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("malformed OTLP protobuf: "), "{}", err.message());

    let err = grpc_raw(&server, "/opentelemetry.proto.collector.trace.v1.TraceService/Nope", Vec::new())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    assert!(err.message().contains(EXPORT), "names the method that exists: {}", err.message());

    // The same bytes prost would encode are accepted as the generated client's would be.
    let ok = grpc_raw(&server, EXPORT, request(vec![span(0x99, 1)]).encode_to_vec()).await.unwrap();
    assert_eq!(ok, Vec::<u8>::new(), "full success is the empty response message");
    let (status, t) = server.get_json("/api/traces/99999999999999999999999999999999").await;
    assert_eq!(status, 200);
    assert_eq!(t["data"][0]["spans"].as_array().unwrap().len(), 1);
    let (_, after) = server.get_json("/api/traces/11111111111111111111111111111111").await;
    assert_eq!(after, baseline);
    server.stop().await;
}
