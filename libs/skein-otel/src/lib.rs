//! # skein-otel: OpenTelemetry for Rust services, with the chain kept intact
//!
//! One call sets up the tracer provider, the OTLP exporter and the W3C propagators; small
//! layers instrument HTTP servers (axum, hyper, any tower service), HTTP clients (reqwest),
//! gRPC (tonic), SQL (sqlx) and Redis; helpers keep the context across `tokio::spawn` and put
//! trace ids in logs; and [`testing`] lets your integration tests assert that a request makes
//! one connected trace. It is built on the official `opentelemetry` crates and works with any
//! OTLP backend: Skein, Jaeger, Tempo or a Collector.
//!
//! ```no_run
//! # fn main() -> Result<(), skein_otel::InitError> {
//! let guard = skein_otel::init("checkout").service_version("1.4.0").install()?;
//! // … run the service …
//! guard.shutdown()?; // flushes every pending span
//! # Ok(()) }
//! ```
//!
//! ## Integrations (one Cargo feature each)
//!
//! | feature | what | entry point |
//! |---|---|---|
//! | `tower`, `axum` | HTTP server spans | [`http::server::TraceLayer`] |
//! | `reqwest` | HTTP client spans + header injection | `http::client::TracingMiddleware` |
//! | `tonic` | gRPC server and client spans | `grpc::GrpcServerLayer`, `grpc::GrpcClientLayer` |
//! | `sqlx` | a span per query | `sqlx::TracedPool` |
//! | `redis` | a span per command and pipeline | `redis::TracedConnection` |
//! | `logs` | `trace_id`/`span_id` on every log line | `logs::TraceIdFormat` |
//!
//! Always available: [`init`], [`spawn`], [`FutureContextExt`], [`current_trace_id`],
//! [`propagation::inject`] / [`propagation::extract`], [`testing`].
//!
//! ## Keeping the chain
//!
//! Context lives in a task-local: a future spawned with `tokio::spawn` starts with an **empty**
//! context and its spans become new roots (Go's `go doWork()` without `ctx`). Use
//! [`skein_otel::spawn`](spawn) or `.in_current_context()`. See `docs/keeping-the-chain.md`.

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

/// The tracer skein-otel's integrations use: the global provider's, with skein-otel's scope.
pub fn tracer() -> opentelemetry::global::BoxedTracer {
    let scope = opentelemetry::InstrumentationScope::builder(SCOPE_NAME)
        .with_version(SCOPE_VERSION)
        .with_schema_url(opentelemetry_semantic_conventions::SCHEMA_URL)
        .build();
    opentelemetry::global::tracer_with_scope(scope)
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
