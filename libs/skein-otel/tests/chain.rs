//! One request across real servers on loopback must make one connected trace:
//! reqwest (client middleware) → axum (server layer) → a spawned task, SQLite through sqlx,
//! and a tonic call; log lines inside carry the trace id.

#![cfg(all(feature = "axum", feature = "reqwest", feature = "sqlx", feature = "tonic", feature = "logs"))]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use skein_otel::FutureContextExt;
use skein_otel::grpc::{GrpcClientLayer, GrpcServerLayer};
use skein_otel::http::client::TracingMiddleware;
use skein_otel::http::server::TraceLayer;
use skein_otel::sqlx::TracedPool;
use skein_otel::testing::Recorder;
use support::LogBuffer;

/// A gRPC service to call: the OTLP TraceService shape, answering NOT_FOUND for empty requests.
struct Inventory;

#[tonic::async_trait]
impl TraceService for Inventory {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        assert!(skein_otel::current_trace_id().is_some(), "the gRPC handler runs inside the server span");
        if request.get_ref().resource_spans.is_empty() {
            return Err(tonic::Status::not_found("no such item"));
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_grpc(provider: &SdkTracerProvider) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = GrpcServerLayer::with_tracer_provider(provider);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(TraceServiceServer::new(Inventory))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    addr
}

#[derive(Clone)]
struct AppState {
    db: TracedPool<sqlx::Sqlite>,
    grpc: SocketAddr,
    client_provider: SdkTracerProvider,
    worker: SdkTracerProvider,
    logs: Arc<Mutex<Vec<u8>>>,
}

async fn checkout(State(state): State<AppState>) -> String {
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let buf = LogBuffer(state.logs.clone());
            move || buf.clone()
        })
        .with_ansi(false)
        .event_format(skein_otel::logs::TraceIdFormat::new(
            tracing_subscriber::fmt::format().with_ansi(false),
        ))
        .finish();
    tracing::subscriber::with_default(subscriber, || tracing::info!(order = 7, "checking out"));

    let total: i64 = sqlx::query_scalar("SELECT SUM(price) FROM items WHERE cart_id = ?")
        .bind(42)
        .fetch_one(&state.db)
        .await
        .unwrap();
    let _ = sqlx::query("SELECT * FROM nope").fetch_all(&state.db).await.unwrap_err();

    // Background work that must stay in the trace.
    let worker = state.worker.tracer("worker");
    skein_otel::spawn(async move {
        worker.in_span("send confirmation", |_| {});
    })
    .await
    .unwrap();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", state.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let channel = tower::ServiceBuilder::new()
        .layer(
            GrpcClientLayer::with_tracer_provider(&state.client_provider)
                .with_server("127.0.0.1", state.grpc.port()),
        )
        .service(channel);
    let mut client = TraceServiceClient::new(channel);
    client.export(ExportTraceServiceRequest { resource_spans: vec![Default::default()] }).await.unwrap();
    let err = client.export(ExportTraceServiceRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    format!("total {total}")
}

#[tokio::test]
async fn one_request_makes_one_connected_trace() {
    let _ = Recorder::new().install_global("unused"); // the W3C propagator
    let recorder = Recorder::new();
    let frontend = recorder.provider("frontend");
    let checkout_svc = recorder.provider("checkout");
    let inventory = recorder.provider("inventory");

    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    sqlx::query("CREATE TABLE items (cart_id INTEGER, price INTEGER)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO items VALUES (42, 5), (42, 7)").execute(&pool).await.unwrap();
    let db = TracedPool::new(pool).with_namespace("shop").with_tracer_provider(&checkout_svc);

    let state = AppState {
        db,
        grpc: start_grpc(&inventory).await,
        client_provider: checkout_svc.clone(),
        worker: checkout_svc.clone(),
        logs: Arc::new(Mutex::new(Vec::new())),
    };
    let app = Router::new()
        .route("/checkout", get(checkout))
        .with_state(state.clone())
        .layer(TraceLayer::new().with_tracer_provider(&checkout_svc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(TracingMiddleware::with_tracer_provider(&frontend))
        .build();
    let root_tracer = frontend.tracer("frontend");
    let root = root_tracer.start("GET /buy");
    let cx = opentelemetry::Context::current_with_span(root);
    let body = async {
        client
            .get(format!("http://user:pw@{addr}/checkout?sig=s"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
    .in_context(cx.clone())
    .await;
    cx.span().end();
    assert_eq!(body, "total 12");

    let check = recorder.check();
    check.assert_connected();
    check.assert_calls("frontend", "checkout");
    check.assert_calls("checkout", "inventory");
    check.assert_parent("GET /buy", "GET");
    check.assert_parent("GET", "GET /checkout");
    check.assert_parent("GET /checkout", "send confirmation");
    check.assert_parent("GET /checkout", "SELECT items");

    let client_span = check.span("GET");
    assert_eq!(client_span.data.span_kind, SpanKind::Client);
    // reqwest moves user info into an Authorization header; no credential reaches url.full.
    assert_eq!(client_span.attr("url.full"), Some(format!("http://{addr}/checkout?sig=REDACTED")));
    assert_eq!(client_span.attr("server.port"), Some(addr.port().to_string()));
    assert_eq!(client_span.attr("http.response.status_code").as_deref(), Some("200"));

    let select = check.span("SELECT items");
    assert_eq!(select.data.span_kind, SpanKind::Client);
    assert_eq!(select.attr("db.system.name").as_deref(), Some("sqlite"));
    assert_eq!(
        select.attr("db.query.text").as_deref(),
        Some("SELECT SUM(price) FROM items WHERE cart_id = ?")
    );
    assert_eq!(select.attr("db.operation.name").as_deref(), Some("SELECT"));
    assert_eq!(select.attr("db.collection.name").as_deref(), Some("items"));
    assert_eq!(select.attr("db.namespace").as_deref(), Some("shop"));
    let failed = check.span("SELECT nope");
    assert!(matches!(failed.data.status, Status::Error { .. }));
    assert!(failed.attr("error.type").is_some());

    let rpcs: Vec<_> = check
        .spans
        .iter()
        .filter(|s| s.name() == "opentelemetry.proto.collector.trace.v1.TraceService/Export")
        .collect();
    assert_eq!(rpcs.len(), 4, "two calls, each a client and a server span");
    let server_ok = rpcs
        .iter()
        .find(|s| {
            s.data.span_kind == SpanKind::Server
                && s.attr("rpc.response.status_code").as_deref() == Some("OK")
        })
        .unwrap();
    assert_eq!(server_ok.attr("rpc.system.name").as_deref(), Some("grpc"));
    assert_eq!(
        server_ok.attr("rpc.method").as_deref(),
        Some("opentelemetry.proto.collector.trace.v1.TraceService/Export")
    );
    assert_eq!(server_ok.service, "inventory");
    let client_nf = rpcs
        .iter()
        .find(|s| {
            s.data.span_kind == SpanKind::Client
                && s.attr("rpc.response.status_code").as_deref() == Some("NOT_FOUND")
        })
        .unwrap();
    assert!(matches!(client_nf.data.status, Status::Error { .. }), "any non-OK code fails a client span");
    assert_eq!(client_nf.attr("server.port"), Some(state.grpc.port().to_string()));
    let server_nf = rpcs
        .iter()
        .find(|s| {
            s.data.span_kind == SpanKind::Server
                && s.attr("rpc.response.status_code").as_deref() == Some("NOT_FOUND")
        })
        .unwrap();
    assert_eq!(server_nf.data.status, Status::Unset, "NOT_FOUND is not a server fault");
    assert_eq!(server_nf.parent(), Some(client_nf.span_id()));

    let logs = String::from_utf8(state.logs.lock().unwrap().clone()).unwrap();
    let server_span = check.span("GET /checkout");
    assert!(
        logs.contains(&format!("trace_id={} span_id={}", server_span.trace_id(), server_span.span_id())),
        "{logs}"
    );
}

#[tokio::test]
async fn plain_tokio_spawn_loses_the_context_and_the_check_says_so() {
    let recorder = Recorder::new();
    let svc = recorder.provider("svc").tracer("t");
    let root = svc.start("root");
    let cx = opentelemetry::Context::current_with_span(root);
    let worker = recorder.provider("svc").tracer("t");
    async {
        tokio::spawn(async move { worker.in_span("lost", |_| {}) }).await.unwrap();
    }
    .in_context(cx.clone())
    .await;
    cx.span().end();
    let err = recorder.check().connected().unwrap_err();
    assert!(err.contains("spans are split over 2 trace ids"), "{err}");
    assert!(err.contains("expected exactly one root span, found 2"), "{err}");
}
