//! # skein-otel: OpenTelemetry for Rust services, with the chain kept intact
//!
//! One call sets up the tracer provider, the OTLP exporter and the W3C propagators; small
//! layers instrument HTTP servers (axum, hyper, any tower service), HTTP clients (reqwest),
//! gRPC (tonic), SQL (sqlx) and Redis; helpers keep the context across `tokio::spawn` and put
//! trace ids in logs; and [`testing`] lets your integration tests assert that a request makes
//! one connected trace. It is built on the official `opentelemetry` crates and works with any
//! OTLP backend: Skein, Jaeger, Tempo or a Collector.
//!
//! ## Set up (the Go `otel.SetTracerProvider` + OTLP exporter + propagator, in one call)
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let guard = skein_otel::init("checkout").service_version("1.4.0").install()?;
//! // … run the service; create the layers below after this line …
//! guard.shutdown()?; // flushes every pending span; safe on any runtime
//! # Ok(()) }
//! ```
//!
//! By default spans go over OTLP/gRPC (gzip, retried) to `http://localhost:4317`; the standard
//! `OTEL_*` variables override whatever the code says (see [`init`]).
//!
//! ## HTTP server: axum, hyper, any tower service (feature `axum` or `tower`)
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::get};
//! let app: Router = Router::new()
//!     .route("/orders/{id}", get(|| async { "order" }))
//!     .layer(skein_otel::http::server::TraceLayer::new());
//! # }
//! ```
//!
//! ## HTTP client: reqwest (feature `reqwest`)
//!
//! ```
//! # #[cfg(feature = "reqwest")] {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(skein_otel::http::client::TracingMiddleware::new())
//!     .build();
//! // Other clients: skein_otel::propagation::inject(&opentelemetry::Context::current(), &mut headers)
//! # }
//! ```
//!
//! ## gRPC: tonic (feature `tonic`)
//!
//! ```
//! # #[cfg(feature = "tonic")] fn f() {
//! use skein_otel::grpc::{GrpcClientLayer, GrpcServerLayer};
//! let server = tonic::transport::Server::builder().layer(GrpcServerLayer::new());
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let channel = tower::ServiceBuilder::new()
//!     .layer(GrpcClientLayer::new().with_server("127.0.0.1", 50051))
//!     .service(channel); // give it to the generated client: FooClient::new(channel)
//! # }
//! ```
//!
//! ## SQL: sqlx (feature `sqlx`)
//!
//! ```
//! # #[cfg(feature = "sqlx")] async fn f() -> Result<(), sqlx::Error> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let pool = skein_otel::sqlx::TracedPool::new(pool).with_namespace("shop");
//! let one: i64 = sqlx::query_scalar("SELECT ?").bind(1i64).fetch_one(&pool).await?;
//! # Ok(()) }
//! ```
//!
//! ## Redis (feature `redis`)
//!
//! ```no_run
//! # #[cfg(feature = "redis")] async fn f() -> redis::RedisResult<()> {
//! use redis::AsyncCommands;
//! let conn = redis::Client::open("redis://127.0.0.1/")?.get_multiplexed_async_connection().await?;
//! let mut conn = skein_otel::redis::TracedConnection::new(conn).with_server("127.0.0.1", 6379);
//! let _: () = conn.set("cart:42", 3).await?;
//! # Ok(()) }
//! ```
//!
//! ## Manual spans (the Go `tracer.Start(ctx, …)` + `defer span.End()`)
//!
//! ```
//! use opentelemetry::KeyValue;
//! use opentelemetry::trace::{Tracer, Span as _};
//! let tracer = opentelemetry::global::tracer("payment");
//! tracer.in_span("charge card", |cx| {
//!     use opentelemetry::trace::TraceContextExt;
//!     cx.span().set_attribute(KeyValue::new("payment.amount_cents", 1999));
//!     // … call the uninstrumented SDK; the span ends when the closure returns …
//! });
//! ```
//!
//! ## Spawned tasks keep the trace (the Go `go doWork(ctx)`)
//!
//! ```
//! # async fn f() {
//! use skein_otel::FutureContextExt;
//! skein_otel::spawn(async { /* spans here join the caller's trace */ });
//! tokio::spawn(async { /* same */ }.in_current_context());
//! # }
//! ```
//!
//! ## Trace ids in logs (feature `logs`)
//!
//! ```no_run
//! tracing_subscriber::fmt()
//!     .event_format(skein_otel::logs::TraceIdFormat::new(tracing_subscriber::fmt::format()))
//!     .init();
//! let id: Option<String> = skein_otel::current_trace_id();
//! ```
//!
//! ## `tracing` spans in the same trace (feature `tracing`)
//!
//! ```no_run
//! # #[cfg(feature = "tracing")] fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::prelude::*;
//! let guard = skein_otel::init("checkout").install()?;
//! tracing_subscriber::registry().with(skein_otel::tracing::layer()).init();
//!
//! #[tracing::instrument]
//! fn reserve(item: u64) { /* a span, child of whatever span is current */ }
//! # guard.shutdown()?; Ok(()) }
//! ```
//!
//! `#[instrument]`, `info_span!` and `tracing::info!` become spans and span events, and there
//! is one current context: inside an entered `tracing` span `Context::current()` holds its
//! OpenTelemetry span, so the layers above and `tracer.start` make its children (see
//! [the `tracing` module](crate::tracing)).
//!
//! ## Test that the chain holds ([`testing`])
//!
//! [`testing::Recorder`] records spans in memory; [`testing::TraceCheck::assert_connected`]
//! fails when a request's spans are split over several traces, have several roots, or miss a
//! parent; [`testing::TraceCheck::assert_calls`] checks that service A called service B.
//!
//! ## Keeping the chain
//!
//! Context lives in a task-local: a future spawned with `tokio::spawn` starts with an **empty**
//! context and its spans become new roots. Use [`spawn`] or `.in_current_context()`. See
//! `docs/keeping-the-chain.md`.
#![forbid(unsafe_code)]

mod init;
pub mod propagation;
mod semconv;
mod task;
pub mod testing;

#[cfg(any(feature = "tower", feature = "reqwest"))]
pub mod http;

#[cfg(feature = "tonic")]
pub mod grpc;

#[cfg(feature = "logs")]
pub mod logs;

#[cfg(feature = "tracing")]
pub mod tracing;

#[cfg(feature = "sqlx")]
pub mod sqlx;

#[cfg(feature = "redis")]
pub mod redis;

pub use init::{Init, InitError, OtelGuard, Protocol, ShutdownError, init};
pub use task::{FutureContextExt, spawn, spawn_blocking};

/// The name under which skein-otel's own instrumentation creates spans (the OTel scope).
pub const SCOPE_NAME: &str = "skein-otel";
/// This crate's version, recorded as the scope version.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

fn scope() -> opentelemetry::InstrumentationScope {
    opentelemetry::InstrumentationScope::builder(SCOPE_NAME)
        .with_version(SCOPE_VERSION)
        .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
        .build()
}

/// The tracer skein-otel's integrations use: the global provider's, with skein-otel's scope.
pub fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer_with_scope(scope())
}

/// The tracer of `provider` with skein-otel's scope (what every `with_tracer_provider` uses).
#[cfg_attr(
    not(any(feature = "tower", feature = "reqwest", feature = "sqlx", feature = "redis")),
    allow(dead_code)
)]
pub(crate) fn tracer_from<P>(provider: &P) -> opentelemetry::global::BoxedTracer
where
    P: opentelemetry::trace::TracerProvider,
    P::Tracer: Send + Sync + 'static,
    <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
{
    opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer_with_scope(scope())))
}

/// The trace id of the current context as 32 hex digits, or `None` outside any span.
///
/// ```
/// assert_eq!(skein_otel::current_trace_id(), None);
/// ```
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = opentelemetry::Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The span id of the current context as 16 hex digits, or `None` outside any span.
pub fn current_span_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = opentelemetry::Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.span_id().to_string())
}
