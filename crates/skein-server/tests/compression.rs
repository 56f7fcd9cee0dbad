//! The compressions the OpenTelemetry Collector's exporters can send, over both transports;
//! decompression bombs refused without inviting a retry; and request bytes throttled by the
//! in-flight budget with a retry delay (`Retry-After`, `RetryInfo`).

mod common;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{TestServer, metric};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use skein_otlp::proto::collector::ExportTraceServiceRequest;
use skein_otlp::proto::common as pc;
use skein_otlp::proto::resource as pr;
use skein_otlp::proto::trace as pt;
use skein_server::Config;
use tokio::io::AsyncWriteExt;
use tonic_types::StatusExt;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A request of `n` spans of trace `trace`, each with a few realistic attributes.
fn request(trace: u8, n: usize) -> Vec<u8> {
    let start = now();
    let spans = (0..n)
        .map(|i| pt::Span {
            trace_id: vec![trace; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            parent_span_id: if i == 0 { Vec::new() } else { 1u64.to_be_bytes().to_vec() },
            name: format!("GET /api/items/{}", i % 7),
            kind: pt::span::SpanKind::Server as i32,
            start_time_unix_nano: start + i as u64 * 1000,
            end_time_unix_nano: start + i as u64 * 1000 + 5_000_000,
            attributes: vec![
                kv("http.request.method", "GET"),
                kv("url.path", &format!("/api/items/{}", i * 7919 % 1000)),
                kv("client.address", &format!("10.0.{}.{}", i % 256, i * 31 % 256)),
            ],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![pt::ResourceSpans {
            resource: Some(pr::Resource {
                attributes: vec![kv("service.name", "codings")],
                ..Default::default()
            }),
            scope_spans: vec![pt::ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn kv(key: &str, value: &str) -> pc::KeyValue {
    pc::KeyValue {
        key: key.into(),
        value: Some(pc::AnyValue { value: Some(pc::any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

/// `data` compressed as the HTTP `Content-Encoding` (or gRPC encoding) `name` says.
fn compress(name: &str, data: &[u8]) -> Vec<u8> {
    match name {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" | "zlib" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zstd" => zstd::stream::encode_all(data, 3).unwrap(),
        "snappy" => snap::raw::Encoder::new().compress_vec(data).unwrap(),
        "x-snappy-framed" | "grpc-snappy" => {
            let mut e = snap::write::FrameEncoder::new(Vec::new());
            e.write_all(data).unwrap();
            e.into_inner().unwrap()
        }
        "lz4" => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "identity" => data.to_vec(),
        other => panic!("no coding {other}"),
    }
}

async fn post_http(server: &TestServer, encoding: &str, body: Vec<u8>) -> (u16, Option<String>, String) {
    let response = reqwest::Client::new()
        .post(server.otlp_http_url())
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", encoding)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap();
    (status, retry_after, common::rpc_status_message(&body))
}

/// The answer to one gRPC call sent byte for byte: grpc-status, grpc-message, and the
/// `grpc-accept-encoding` header.
struct GrpcAnswer {
    status: i32,
    message: String,
    accept_encoding: Option<String>,
}

/// Sends `message` (already compressed when `encoding` is not identity) as a unary gRPC call.
async fn grpc_raw(server: &TestServer, encoding: &str, message: Vec<u8>) -> GrpcAnswer {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut framed = vec![u8::from(encoding != "identity")];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let request = http::Request::post(format!("http://{}{EXPORT}", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", encoding)
        .body(tonic::body::Body::new(http_body_util::Full::new(Bytes::from(framed))))
        .unwrap();
    let response = tower::ServiceExt::oneshot(channel, request).await.unwrap();
    let (parts, body) = response.into_parts();
    let accept_encoding = parts.headers.get("grpc-accept-encoding").map(|v| v.to_str().unwrap().to_owned());
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .or_else(|| trailers.get(name))
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    GrpcAnswer {
        status: header("grpc-status").parse().unwrap(),
        message: percent_decode(&header("grpc-message")),
        accept_encoding,
    }
}

fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn span_count(server: &TestServer, trace: u8) -> usize {
    let (_, body) = server.get_json(&format!("/api/traces/{}", format!("{trace:02x}").repeat(16))).await;
    body["data"][0]["spans"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn every_collector_coding_over_http() {
    let server = TestServer::start().await;
    let codings = ["gzip", "zstd", "snappy", "x-snappy-framed", "deflate", "zlib", "lz4", "identity"];
    for (i, coding) in codings.into_iter().enumerate() {
        let trace = 0x10 + i as u8;
        let (status, _, message) = post_http(&server, coding, compress(coding, &request(trace, 300))).await;
        assert_eq!(status, 200, "{coding}: {message}");
        assert_eq!(span_count(&server, trace).await, 300, "{coding}");
    }
    // The Collector's HTTP server reads `snappy` bodies in the framing format too (what older
    // Collectors sent), and so does Skein.
    let (status, _, message) =
        post_http(&server, "snappy", compress("x-snappy-framed", &request(0x20, 10))).await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(span_count(&server, 0x20).await, 10);
    server.stop().await;
}

#[tokio::test]
async fn every_collector_coding_over_grpc() {
    let server = TestServer::start().await;
    for (i, (encoding, coding)) in
        [("gzip", "gzip"), ("zstd", "zstd"), ("snappy", "grpc-snappy"), ("identity", "identity")]
            .into_iter()
            .enumerate()
    {
        let trace = 0x30 + i as u8;
        let answer = grpc_raw(&server, encoding, compress(coding, &request(trace, 300))).await;
        assert_eq!(answer.status, 0, "{encoding}: {}", answer.message);
        assert_eq!(span_count(&server, trace).await, 300, "{encoding}");
    }
    // An encoding Skein cannot read: UNIMPLEMENTED, naming what it can, as gRPC asks.
    let answer = grpc_raw(&server, "br", vec![1, 2, 3]).await;
    assert_eq!(answer.status, tonic::Code::Unimplemented as i32, "{}", answer.message);
    assert_eq!(answer.message, "unsupported grpc-encoding \"br\": send one of gzip,zstd,snappy,identity");
    assert_eq!(answer.accept_encoding.as_deref(), Some("gzip,zstd,snappy,identity"));
    // A corrupt compressed message: INVALID_ARGUMENT.
    let answer = grpc_raw(&server, "zstd", b"not zstd at all".to_vec()).await;
    assert_eq!(answer.status, tonic::Code::InvalidArgument as i32, "{}", answer.message);
    assert!(answer.message.starts_with("malformed zstd body"), "{}", answer.message);
    server.stop().await;
}

#[tokio::test]
async fn decompression_bombs_are_refused_once_and_not_retryable() {
    // The default limits: a 64 MiB request would be accepted, but not one that expands 1000×.
    let server = TestServer::start().await;
    let bomb = compress("zstd", &vec![0u8; 32 << 20]);
    assert!(bomb.len() < 32 << 10, "{}", bomb.len());
    let (status, retry_after, message) = post_http(&server, "zstd", bomb.clone()).await;
    assert_eq!(status, 413, "not retryable over HTTP: {message}");
    assert_eq!(retry_after, None);
    assert!(message.contains("expands to more than 100 times its size on zstd decompression"), "{message}");
    assert!(message.contains("--max-decompression-ratio"), "{message}");

    let answer = grpc_raw(&server, "zstd", bomb).await;
    assert_eq!(
        answer.status,
        tonic::Code::InvalidArgument as i32,
        "not retryable over gRPC: {}",
        answer.message
    );
    assert!(answer.message.contains("likely decompression bomb"), "{}", answer.message);

    let m = server.get_text("/metrics").await;
    for protocol in ["http", "grpc"] {
        let series =
            format!("skein_requests_refused_total{{protocol=\"{protocol}\",reason=\"decompression_ratio\"}}");
        assert_eq!(metric(&m, &series), 1.0, "{series}");
    }
    server.stop().await;
}

/// Opens an OTLP/HTTP request that announces a large body, sends `bytes` of it and stalls,
/// holding that much of the in-flight budget.
async fn stalled_upload(server: &TestServer, bytes: usize) -> tokio::net::TcpStream {
    let mut socket = tokio::net::TcpStream::connect(server.otlp_http).await.unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: skein\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
        bytes + 1000
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&vec![0u8; bytes]).await.unwrap();
    socket.flush().await.unwrap();
    socket
}

#[tokio::test]
async fn a_spent_budget_throttles_with_a_retry_delay() {
    let config =
        Config { max_request_bytes: 1 << 20, max_inflight_request_bytes: 3 << 20, ..Config::default() };
    let server = TestServer::start_with(config).await;
    // Three uploads of 1,000,000 bytes hold 2,931 of the 3,072 KiB.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_upload(&server, 1_000_000).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A request of ~200 KB does not fit: after waiting, 429 with Retry-After over HTTP…
    let probe = request(0x40, 1500);
    assert!(probe.len() > 150 * 1024 && probe.len() < 1 << 20, "{}", probe.len());
    let (status, retry_after, message) = post_http(&server, "identity", probe.clone()).await;
    assert_eq!(status, 429, "{message}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(message.contains("--max-inflight-request-bytes"), "{message}");

    // …and RESOURCE_EXHAUSTED with RetryInfo over gRPC.
    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let decoded = ExportTraceServiceRequest::decode(&probe[..]).unwrap();
    let err = client.export(decoded.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    let retry = err.get_details_retry_info().expect("RetryInfo in the status details");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));

    // When the stalled uploads go away, their budget is given back and the retry succeeds.
    drop(stalled);
    let mut stored = false;
    for _ in 0..50 {
        if client.export(decoded.clone()).await.is_ok() {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored, "the retried request is accepted once budget is free");
    assert_eq!(span_count(&server, 0x40).await, 1500);
    let m = server.get_text("/metrics").await;
    assert_eq!(metric(&m, "skein_requests_refused_total{protocol=\"http\",reason=\"throttled\"}"), 1.0);
    assert!(metric(&m, "skein_requests_refused_total{protocol=\"grpc\",reason=\"throttled\"}") >= 1.0);
    server.stop().await;
}
