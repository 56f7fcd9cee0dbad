//! A minimal OTLP receiver for the exporter tests: the real tonic `TraceService` and an
//! axum `POST /v1/traces`, recording what arrives.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

#[derive(Clone, Default)]
pub struct Received(pub Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

impl Received {
    /// (service.name, span name) of every span received.
    pub fn spans(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for req in self.0.lock().unwrap().iter() {
            for rs in &req.resource_spans {
                let service = resource_attr(rs, "service.name").unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push((service.clone(), s.name.clone()));
                    }
                }
            }
        }
        out
    }

    pub fn resource_attr(&self, key: &str) -> Option<String> {
        let reqs = self.0.lock().unwrap();
        reqs.iter().flat_map(|r| &r.resource_spans).find_map(|rs| resource_attr(rs, key))
    }
}

fn resource_attr(rs: &opentelemetry_proto::tonic::trace::v1::ResourceSpans, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    rs.resource.as_ref()?.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Starts an OTLP/gRPC and an OTLP/HTTP receiver on a runtime of their own (so the code under
/// test can use any runtime, or none). Returns (grpc addr, http addr, received).
pub fn start_collector() -> (SocketAddr, SocketAddr, Received) {
    let received = Received::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = received.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((grpc.local_addr().unwrap(), http.local_addr().unwrap())).unwrap();
            let svc = TraceServiceServer::new(Collector(r.clone()))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
            let grpc_server = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc));
            let app = axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let r = r.clone();
                    async move {
                        let bytes = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                            use std::io::Read;
                            let mut out = Vec::new();
                            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).unwrap();
                            out
                        } else {
                            body.to_vec()
                        };
                        r.0.lock().unwrap().push(ExportTraceServiceRequest::decode(&bytes[..]).unwrap());
                        ExportTraceServiceResponse { partial_success: None }.encode_to_vec()
                    }
                }),
            );
            let http_server = axum::serve(http, app);
            let _ = tokio::join!(grpc_server, http_server.into_future());
        });
    });
    let (g, h) = rx.recv().unwrap();
    (g, h, received)
}

/// Runs `f` on a thread and fails the test if it does not finish in time (a deadlock).
pub fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not finish within {secs}s"))
}

/// A log writer into shared memory, for asserting what was logged.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
