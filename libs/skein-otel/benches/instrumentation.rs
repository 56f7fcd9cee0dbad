//! Per-request and per-span cost of skein-otel's instrumentation, each beside the work it
//! instruments without tracing and beside one raw OpenTelemetry SDK span.
//!
//! Run: `cargo bench -p skein-otel --all-features --bench instrumentation`
//!
//! Every traced case uses the same provider: a batch span processor feeding an exporter that
//! discards, so the figures are the cost paid on the request path (span creation, attributes,
//! context, hand-off to the batch queue), not the network.

use std::convert::Infallible;
use std::sync::LazyLock;

use divan::Bencher;
use http::{Request, Response};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Tracer, TracerProvider as _};
use tower::{Layer, Service, ServiceExt};

fn main() {
    divan::main();
}

mod common;
use common::PROVIDER;

/// The W3C propagator a service gets from `skein_otel::init`, installed for every bench that
/// extracts through the global propagator (without it the global one is a no-op).
fn w3c() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        )
    });
}

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());

fn request() -> Request<()> {
    Request::get("http://api.local:8080/users/42?page=2")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("user-agent", "bench/1.0")
        .header("host", "api.local:8080")
        .body(())
        .unwrap()
}

async fn handler(_req: Request<()>) -> Result<Response<String>, Infallible> {
    Ok(Response::new(String::new()))
}

/// The attributes the server layer records for `request()`, as static values.
fn server_attributes() -> [KeyValue; 9] {
    [
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("url.path", "/users/42"),
        KeyValue::new("url.query", "page=2"),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("http.route", "/users/{id}"),
        KeyValue::new("server.address", "api.local"),
        KeyValue::new("server.port", 8080i64),
        KeyValue::new("network.protocol.version", "1.1"),
        KeyValue::new("user_agent.original", "bench/1.0"),
    ]
}

/// One SDK span with the attributes the server layer records, started and ended by hand.
#[divan::bench]
fn raw_sdk_span() {
    let tracer = PROVIDER.tracer("bench");
    let mut span = tracer
        .span_builder("GET /users/{id}")
        .with_kind(SpanKind::Server)
        .with_attributes(server_attributes())
        .start(&tracer);
    span.set_attribute(KeyValue::new("http.response.status_code", 200i64));
    span.end();
}

fn axum_app() -> axum::Router {
    axum::Router::new().route("/users/{id}", axum::routing::get(|| async { "user" }))
}

fn axum_request() -> Request<axum::body::Body> {
    request().map(|()| axum::body::Body::empty())
}

/// A plain axum handler with no tracing: the baseline the layer is added to.
#[divan::bench]
fn http_plain_axum_handler(b: Bencher) {
    let app = axum_app();
    b.bench_local(|| RT.block_on(app.clone().oneshot(axum_request())).unwrap());
}

/// The axum app behind a layer that does nothing: what `Router::layer` itself costs (axum boxes
/// each layered route), to tell it apart from `TraceLayer`'s own cost.
#[divan::bench]
fn http_axum_identity_layer(b: Bencher) {
    let app = axum_app().layer(tower::layer::util::Identity::new());
    b.bench_local(|| RT.block_on(app.clone().oneshot(axum_request())).unwrap());
}

/// The same axum app behind `TraceLayer` (extract traceparent, server span named from the
/// route, attributes, context current while the handler runs).
#[divan::bench]
fn http_server_layer_axum(b: Bencher) {
    w3c();
    let app = axum_app().layer(skein_otel::http::server::TraceLayer::new().with_tracer_provider(&*PROVIDER));
    b.bench_local(|| RT.block_on(app.clone().oneshot(axum_request())).unwrap());
}

/// A bare tower handler, and the same behind `TraceLayer`.
#[divan::bench]
fn http_plain_tower_handler(b: Bencher) {
    let svc = tower::service_fn(handler);
    b.bench_local(|| RT.block_on(svc.oneshot(request())).unwrap());
}

#[divan::bench]
fn http_server_layer_tower(b: Bencher) {
    w3c();
    let layer = skein_otel::http::server::TraceLayer::new().with_tracer_provider(&*PROVIDER);
    let svc = layer.layer(tower::service_fn(handler));
    b.bench_local(|| RT.block_on(svc.clone().oneshot(request())).unwrap());
}

async fn grpc_handler(_req: Request<()>) -> Result<Response<String>, Infallible> {
    let mut r = Response::new(String::new());
    r.headers_mut().insert("grpc-status", http::HeaderValue::from_static("0"));
    Ok(r)
}

fn grpc_request() -> Request<()> {
    Request::post("http://inventory:50051/shop.Inventory/Reserve").body(()).unwrap()
}

#[divan::bench]
fn grpc_plain_handler(b: Bencher) {
    let svc = tower::service_fn(grpc_handler);
    b.bench_local(|| RT.block_on(svc.oneshot(grpc_request())).unwrap());
}

/// A gRPC call through `GrpcClientLayer` (client span + metadata injection).
#[divan::bench]
fn grpc_client_layer(b: Bencher) {
    let layer = skein_otel::grpc::GrpcClientLayer::with_tracer_provider(&*PROVIDER);
    let svc = layer.layer(tower::service_fn(grpc_handler));
    b.bench_local(|| {
        let mut svc = svc.clone();
        RT.block_on(async move {
            let resp = svc.ready().await.unwrap().call(grpc_request()).await.unwrap();
            drop(resp); // ends the span
        })
    });
}

fn sqlite() -> sqlx::SqlitePool {
    RT.block_on(async {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1, 'a')").execute(&pool).await.unwrap();
        pool
    })
}

#[divan::bench]
fn sqlx_plain_query(b: Bencher) {
    let pool = sqlite();
    b.bench_local(|| {
        RT.block_on(async {
            let _: (i64, String) =
                sqlx::query_as("SELECT id, v FROM t WHERE id = ?").bind(1).fetch_one(&pool).await.unwrap();
        })
    });
}

/// The same query through `TracedPool` (a CLIENT span with the db.* attributes).
#[divan::bench]
fn sqlx_traced_query(b: Bencher) {
    let pool =
        skein_otel::sqlx::TracedPool::new(sqlite()).with_namespace("bench").with_tracer_provider(&*PROVIDER);
    b.bench_local(|| {
        RT.block_on(async {
            let _: (i64, String) =
                sqlx::query_as("SELECT id, v FROM t WHERE id = ?").bind(1).fetch_one(&pool).await.unwrap();
        })
    });
}

/// What a hand-written server span costs when it does the same job as the layer: extract the
/// caller's context from the headers and copy the request's values into attributes.
#[divan::bench]
fn raw_sdk_span_from_request(b: Bencher) {
    let tracer = PROVIDER.tracer("bench");
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    b.bench_local(|| {
        use opentelemetry::propagation::TextMapPropagator;
        use opentelemetry::trace::TraceContextExt;
        let req = request();
        let parent = propagator.extract(&opentelemetry_http::HeaderExtractor(req.headers()));
        let span = tracer
            .span_builder(format!("{} {}", req.method(), "/users/{id}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", req.method().as_str().to_owned()),
                KeyValue::new("url.path", req.uri().path().to_owned()),
                KeyValue::new("url.query", req.uri().query().unwrap_or_default().to_owned()),
                KeyValue::new("url.scheme", "http"),
                KeyValue::new("http.route", "/users/{id}"),
                KeyValue::new("server.address", "api.local".to_owned()),
                KeyValue::new("server.port", 8080i64),
                KeyValue::new("network.protocol.version", "1.1"),
                KeyValue::new(
                    "user_agent.original",
                    req.headers()
                        .get("user-agent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                ),
            ])
            .start_with_context(&tracer, &parent);
        let cx = parent.with_span(span);
        cx.span().set_attribute(KeyValue::new("http.response.status_code", 200i64));
        cx.span().end();
    });
}

/// A loopback HTTP server for the client benches (axum, answering 200).
static SERVER: LazyLock<std::net::SocketAddr> = LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, axum::Router::new().route("/", axum::routing::get(|| async { "ok" })))
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
});

/// A reqwest call over loopback without tracing: the baseline of the client middleware.
#[divan::bench]
fn reqwest_plain_call(b: Bencher) {
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build();
    let url = format!("http://{}/", *SERVER);
    b.bench_local(|| RT.block_on(async { client.get(&url).send().await.unwrap().bytes().await.unwrap() }));
}

/// The same call through `TracingMiddleware` (client span, traceparent injected).
#[divan::bench]
fn reqwest_traced_call(b: Bencher) {
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(skein_otel::http::client::TracingMiddleware::with_tracer_provider(&*PROVIDER))
        .build();
    let url = format!("http://{}/", *SERVER);
    b.bench_local(|| RT.block_on(async { client.get(&url).send().await.unwrap().bytes().await.unwrap() }));
}

/// Parts of the server layer's cost, to see where it goes: reading `traceparent` with the
/// global propagator…
#[divan::bench]
fn part_extract_traceparent(b: Bencher) {
    let _ = skein_otel::testing::Recorder::new().install_global("bench");
    let req = request();
    b.bench_local(|| skein_otel::propagation::extract(req.headers()));
}

/// …and attaching a context for one poll.
#[divan::bench]
fn part_attach_context(b: Bencher) {
    let tracer = PROVIDER.tracer("bench");
    use opentelemetry::trace::TraceContextExt;
    let cx = opentelemetry::Context::current_with_span(tracer.start("x"));
    b.bench_local(|| drop(cx.clone().attach()));
}

/// The floor under any server layer built on the SDK's API: a tower handler wrapped by hand
/// in only what the issue requires beyond a raw span (the caller's context read from
/// `traceparent`, the span a child of it in a `Context`, that context in the request's
/// extensions and current while `call` and the handler's future run), with the raw span's
/// static attributes and no request parsing. Compare with `http_plain_tower_handler` and
/// `raw_sdk_span`.
#[divan::bench]
fn floor_tower_context_work(b: Bencher) {
    use opentelemetry::trace::TraceContextExt;
    w3c();
    let tracer = PROVIDER.tracer("bench");
    let mut svc = tower::service_fn(handler);
    b.bench_local(|| {
        RT.block_on(async {
            let mut req = request();
            let parent = skein_otel::propagation::extract(req.headers());
            let span = tracer
                .span_builder("GET /users/{id}")
                .with_kind(SpanKind::Server)
                .with_attributes(server_attributes())
                .start_with_context(&tracer, &parent);
            let cx = parent.with_span(span);
            req.extensions_mut().insert(cx.clone());
            let fut = {
                let _guard = cx.clone().attach();
                svc.call(req)
            };
            let resp = {
                let _guard = cx.clone().attach();
                fut.await
            };
            cx.span().set_attribute(KeyValue::new("http.response.status_code", 200i64));
            cx.span().end();
            resp
        })
        .unwrap()
    });
}
