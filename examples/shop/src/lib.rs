//! # shop: Skein's demo system
//!
//! Three services on loopback, each with its own `service.name` and tracer provider, instrumented
//! only with `skein-otel`, walking through every step of the tracing story:
//!
//! ```text
//!  traffic ──HTTP──► frontend (axum, auth middleware)
//!                       │ gRPC (tonic)
//!                       ▼
//!                    checkout ──SQL──► SQLite (sqlx)
//!                       │  ├─ manual CLIENT span around the uninstrumented "payment SDK"
//!                       │  └─ spawned task: send the confirmation
//!                       │ HTTP (reqwest)
//!                       ▼
//!                     cart ──► Redis (when a redis-server is there)
//! ```
//!
//! [`Shop::start`] runs them in this process (their calls cross real sockets, so context
//! travels in `traceparent` headers and gRPC metadata exactly as between machines), and
//! [`traffic`] sends them requests. [`Break`] makes one service lose the context the way the
//! classic pitfalls do, so the broken trace can be seen (and found by the trace doctor).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_sdk::trace::SdkTracerProvider;
use skein_otel::OtelGuard;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod cart;
mod checkout;
mod frontend;
mod payment_sdk;
pub mod traffic;

/// The gRPC code generated from `proto/shop.proto`.
pub mod proto {
    tonic::include_proto!("shop");
}

/// The bearer token the frontend's auth middleware accepts (the traffic generator sends it).
pub const DEMO_TOKEN: &str = "demo-token";

/// Which classic pitfall to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Break {
    /// checkout sends the confirmation from a `tokio::spawn`ed task without the context: the
    /// task's span starts a new trace.
    Spawn,
    /// frontend's auth middleware runs the rest of the request in a fresh, empty context: the
    /// gRPC call to checkout starts a new trace.
    Middleware,
    /// checkout calls cart with a client that records a CLIENT span but does not inject
    /// `traceparent`: cart starts a new trace.
    Client,
}

impl FromStr for Break {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spawn" => Ok(Break::Spawn),
            "middleware" => Ok(Break::Middleware),
            "client" => Ok(Break::Client),
            other => Err(format!("unknown break mode {other:?}; use spawn, middleware or client")),
        }
    }
}

/// How to run the shop.
#[derive(Clone, Debug)]
pub struct ShopConfig {
    /// OTLP/gRPC endpoint every service exports to (e.g. `http://127.0.0.1:4317`).
    pub otlp_endpoint: String,
    /// Redis for the cart (`redis://127.0.0.1:6379/`); `None`: the cart runs without its cache.
    pub redis_url: Option<String>,
    /// Lose the context on purpose.
    pub break_mode: Option<Break>,
    /// Sent as `authorization: Bearer <token>` with every export (a Skein with
    /// `--ingest-token-file`).
    pub otlp_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error("setting up OpenTelemetry for {service}: {message}")]
    Telemetry { service: &'static str, message: String },
    #[error("cannot listen on loopback for {service}: {source}")]
    Bind {
        service: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the shop database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot reach Redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// The running shop.
#[derive(Debug)]
pub struct Shop {
    /// Base URL of the frontend (`http://127.0.0.1:PORT`).
    pub frontend_url: String,
    pub checkout_addr: SocketAddr,
    pub cart_url: String,
    /// Whether the cart has its Redis cache.
    pub cart_cache: bool,
    background: Background,
    guards: Vec<(&'static str, OtelGuard)>,
    providers: Vec<SdkTracerProvider>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// One service's telemetry: its own provider (so its own `service.name`), not the global one.
fn telemetry(
    service: &'static str,
    endpoint: &str,
    token: Option<&str>,
) -> Result<(OtelGuard, SdkTracerProvider), ShopError> {
    let mut init = skein_otel::init(service).service_version(env!("CARGO_PKG_VERSION")).endpoint(endpoint);
    if let Some(token) = token {
        init = init.header("authorization", format!("Bearer {token}"));
    }
    let guard = init
        .set_global(false)
        .install()
        .map_err(|e| ShopError::Telemetry { service, message: e.to_string() })?;
    // With OTEL_SDK_DISABLED=true there is no provider: a provider without exporter records nothing.
    let provider = guard.provider().cloned().unwrap_or_else(|| SdkTracerProvider::builder().build());
    Ok((guard, provider))
}

async fn listen(service: &'static str) -> Result<tokio::net::TcpListener, ShopError> {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|source| ShopError::Bind { service, source })
}

impl Shop {
    /// Starts cart, checkout and frontend on loopback ports the OS picks.
    pub async fn start(config: ShopConfig) -> Result<Shop, ShopError> {
        // W3C trace context + baggage between the services (each service's provider is its own,
        // the propagator is process-wide).
        opentelemetry::global::set_text_map_propagator(
            opentelemetry::propagation::TextMapCompositePropagator::new(vec![
                Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
                Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
            ]),
        );
        let (stop, stopped) = watch::channel(false);
        let mut guards = Vec::new();
        let mut providers = Vec::new();
        let mut tasks = Vec::new();

        let (guard, provider) = telemetry("cart", &config.otlp_endpoint, config.otlp_token.as_deref())?;
        let listener = listen("cart").await?;
        let cart_addr =
            listener.local_addr().map_err(|source| ShopError::Bind { service: "cart", source })?;
        let cache = match &config.redis_url {
            Some(url) => Some(cart::connect_redis(url, &provider).await?),
            None => None,
        };
        let cart_cache = cache.is_some();
        tasks.push(tokio::spawn(cart::serve(listener, provider.clone(), cache, stopped.clone())));
        guards.push(("cart", guard));
        providers.push(provider);
        let cart_url = format!("http://{cart_addr}");

        let (guard, provider) = telemetry("checkout", &config.otlp_endpoint, config.otlp_token.as_deref())?;
        let listener = listen("checkout").await?;
        let checkout_addr =
            listener.local_addr().map_err(|source| ShopError::Bind { service: "checkout", source })?;
        let background = Background::default();
        let service =
            checkout::CheckoutService::new(&provider, &cart_url, config.break_mode, background.clone())
                .await?;
        tasks.push(tokio::spawn(checkout::serve(listener, provider.clone(), service, stopped.clone())));
        guards.push(("checkout", guard));
        providers.push(provider);

        let (guard, provider) = telemetry("frontend", &config.otlp_endpoint, config.otlp_token.as_deref())?;
        let listener = listen("frontend").await?;
        let frontend_addr =
            listener.local_addr().map_err(|source| ShopError::Bind { service: "frontend", source })?;
        let app = frontend::app(&provider, checkout_addr, config.break_mode);
        tasks.push(tokio::spawn(frontend::serve(listener, app, stopped)));
        guards.push(("frontend", guard));
        providers.push(provider);

        tracing::info!(
            frontend = %frontend_addr, checkout = %checkout_addr, cart = %cart_addr, cart_cache,
            break_mode = ?config.break_mode, "shop started"
        );
        Ok(Shop {
            frontend_url: format!("http://{frontend_addr}"),
            checkout_addr,
            cart_url,
            cart_cache,
            background,
            guards,
            providers,
            stop,
            tasks,
        })
    }

    /// Waits (up to `timeout`) until no background task (confirmations) is running; true when
    /// none is.
    pub async fn settle(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.background.idle()).await.is_ok()
    }

    /// Exports every span recorded so far (waits for the exporters).
    pub async fn flush(&self) {
        let providers = self.providers.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for p in providers {
                if let Err(e) = p.force_flush() {
                    tracing::warn!(error = %e, "flushing spans failed");
                }
            }
        })
        .await;
    }

    /// Stops the services, then flushes and shuts down their exporters.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let guards = self.guards;
        let _ = tokio::task::spawn_blocking(move || {
            for (service, guard) in guards {
                if let Err(e) = guard.shutdown() {
                    tracing::warn!(service, error = %e, "exporting the last spans failed");
                }
            }
        })
        .await;
    }
}

/// Work the services run after answering (the confirmation), counted so that a caller can wait
/// for it before flushing spans.
#[derive(Clone, Debug, Default)]
pub(crate) struct Background(Arc<(AtomicUsize, tokio::sync::Notify)>);

impl Background {
    /// `work`, counted while it runs (the count goes up now, not when the task first runs).
    pub(crate) fn track<F: Future<Output = ()>>(&self, work: F) -> impl Future<Output = ()> + use<F> {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        async move {
            work.await;
            if this.0.0.fetch_sub(1, Ordering::SeqCst) == 1 {
                this.0.1.notify_waiters();
            }
        }
    }

    async fn idle(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.0.0.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Waits until `stopped` turns true (or its sender is gone).
async fn wait_stop(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}
