//! The README's ten-line example: an axum service instrumented with skein-otel.
//!
//! `cargo run -p skein-otel --features axum --example axum_hello`, with `skein serve` running,
//! then `curl 127.0.0.1:3000/hello/you` and find the trace under service `hello`.

use axum::{Router, routing::get};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let guard = skein_otel::init("hello").install()?; // OTLP/gRPC to 127.0.0.1:4317
    let app = Router::new()
        .route("/hello/{name}", get(|| async { "hi" }))
        .layer(skein_otel::http::server::TraceLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    guard.shutdown()?; // flush every pending span
    Ok(())
}
