//! checkout: the gRPC service that places an order. It reads products from SQLite, asks cart
//! over HTTP what the user has, charges the card through the uninstrumented payment SDK (in a
//! manual span), stores the order, and sends the confirmation from a spawned task. Two of its
//! functions are `#[tracing::instrument]`ed: their `tracing` spans join the trace through
//! `skein_otel::tracing::layer()`, between the gRPC server span and the calls made inside them.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{
    FutureExt as _, Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use reqwest_middleware::ClientWithMiddleware;
use serde::Deserialize;
use skein_otel::grpc::GrpcServerLayer;
use skein_otel::http::client::TracingMiddleware;
use skein_otel::sqlx::TracedPool;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tonic::{Request, Response};
use tracing::instrument::WithSubscriber as _;
use tracing_subscriber::prelude::*;

use crate::Break;
use crate::payment_sdk;
use crate::proto::checkout_server::{Checkout, CheckoutServer};
use crate::proto::{PlaceOrderRequest, PlaceOrderResponse};

/// A query that is slow on purpose: it counts to two million before answering.
const SLOW_PRODUCTS: &str = "WITH RECURSIVE spin(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM spin WHERE n < 2000000) \
     SELECT id, name, price_cents FROM products WHERE (SELECT count(*) FROM spin) > 0 ORDER BY id";
const PRODUCTS: &str = "SELECT id, name, price_cents FROM products ORDER BY id";

static DATABASE: AtomicU64 = AtomicU64::new(0);

pub(crate) struct CheckoutService {
    background: crate::Background,
    db: TracedPool<Sqlite>,
    cart: Cart,
    cart_url: String,
    tracer: SdkTracer,
    break_mode: Option<Break>,
    /// `tracing` for this service's requests.
    dispatch: tracing::Dispatch,
}

/// The `tracing` subscriber checkout's requests run under: skein-otel's layer with checkout's
/// provider, and log lines with trace ids on stderr as `skein demo` writes them.
///
/// A service that runs alone sets this up once, globally: `tracing_subscriber::registry()
/// .with(skein_otel::tracing::layer())…init()`. The demo runs three services in one process,
/// each with its own provider (its own `service.name`), so checkout scopes its own.
fn dispatch(provider: &SdkTracerProvider) -> tracing::Dispatch {
    use tracing_subscriber::fmt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SKEIN_LOG").unwrap_or_else(|_| "info".into());
    let logs = fmt::layer()
        .event_format(skein_otel::logs::TraceIdFormat::new(fmt::format()))
        .with_writer(std::io::stderr)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(skein_otel::tracing::layer().with_tracer_provider(provider).with_events(false))
        .with(logs)
        .into()
}

enum Cart {
    /// The instrumented client: a CLIENT span, and `traceparent` injected.
    Traced(ClientWithMiddleware),
    /// The pitfall: a CLIENT span recorded by hand, but nothing injected into the request.
    NotInjecting(reqwest::Client),
}

#[derive(Deserialize)]
struct CartReply {
    items: Vec<CartItem>,
}

#[derive(Deserialize)]
struct CartItem {
    product_id: i64,
    quantity: i64,
}

impl CheckoutService {
    pub(crate) async fn new(
        provider: &SdkTracerProvider,
        cart_url: &str,
        break_mode: Option<Break>,
        background: crate::Background,
    ) -> Result<Self, sqlx::Error> {
        // An in-memory database shared by the pool's connections (a fresh one per shop).
        let name = format!(
            "file:shop-{}-{}?mode=memory&cache=shared",
            std::process::id(),
            DATABASE.fetch_add(1, Ordering::Relaxed)
        );
        let options = SqliteConnectOptions::from_str(&format!("sqlite:{name}"))?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        // Schema and products, untraced (start-up, not a request).
        sqlx::raw_sql(
            "CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
             CREATE TABLE orders (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, total_cents INTEGER NOT NULL, created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO products (id, name, price_cents) VALUES
               (1, 'Skein of merino yarn', 1299), (2, 'Bamboo needles', 899), (3, 'Stitch markers', 349),
               (4, 'Pattern book', 2450), (5, 'Wool wash', 799), (6, 'Yarn bowl', 3100);",
        )
        .execute(&pool)
        .await?;
        let db = TracedPool::new(pool).with_namespace("shop").with_tracer_provider(provider);
        let cart = match break_mode {
            Some(Break::Client) => Cart::NotInjecting(reqwest::Client::new()),
            _ => Cart::Traced(
                reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                    .with(TracingMiddleware::with_tracer_provider(provider))
                    .build(),
            ),
        };
        Ok(CheckoutService {
            background,
            db,
            cart,
            cart_url: cart_url.to_owned(),
            tracer: provider.tracer("shop.checkout"),
            break_mode,
            dispatch: dispatch(provider),
        })
    }

    #[tracing::instrument(skip(self), fields(enduser.id = user))]
    async fn fetch_cart(&self, user: &str) -> Result<CartReply, String> {
        let url = format!("{}/cart/{user}", self.cart_url);
        let response = match &self.cart {
            Cart::Traced(client) => client.get(&url).send().await.map_err(|e| e.to_string())?,
            Cart::NotInjecting(client) => {
                // Someone instrumented the call by hand and forgot the propagator.
                let mut span = self
                    .tracer
                    .span_builder("GET")
                    .with_kind(SpanKind::Client)
                    .with_attributes([
                        KeyValue::new("http.request.method", "GET"),
                        KeyValue::new("url.full", url.clone()),
                        KeyValue::new("server.address", "127.0.0.1"),
                        KeyValue::new("server.port", port_of(&self.cart_url)),
                    ])
                    .start(&self.tracer);
                let result = client.get(&url).send().await;
                match &result {
                    Ok(r) => span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        r.status().as_u16() as i64,
                    )),
                    Err(e) => span.set_status(Status::error(e.to_string())),
                }
                span.end();
                result.map_err(|e| e.to_string())?
            }
        };
        if !response.status().is_success() {
            return Err(format!("cart answered {}", response.status()));
        }
        response.json().await.map_err(|e| e.to_string())
    }
}

fn port_of(url: &str) -> i64 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(80)
}

#[tonic::async_trait]
impl Checkout for CheckoutService {
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, tonic::Status> {
        self.place(request.into_inner()).with_subscriber(self.dispatch.clone()).await
    }
}

impl CheckoutService {
    async fn place(&self, request: PlaceOrderRequest) -> Result<Response<PlaceOrderResponse>, tonic::Status> {
        tracing::info!(user = %request.user_id, "placing order");

        let products: Vec<(i64, String, i64)> =
            sqlx::query_as(if request.slow_query { SLOW_PRODUCTS } else { PRODUCTS })
                .fetch_all(&self.db)
                .await
                .map_err(|e| tonic::Status::internal(format!("reading products: {e}")))?;

        let cart = self.fetch_cart(&request.user_id).await.map_err(|e| {
            tracing::warn!(error = %e, "cart unavailable");
            tonic::Status::unavailable(format!("cart: {e}"))
        })?;
        let total = price(&cart, &products);

        charge(&self.tracer, &request.user_id, total, request.payment_fails).await?;

        let order_id = format!("ord-{:016x}", rand::random::<u64>());
        sqlx::query("INSERT INTO orders (id, user_id, total_cents) VALUES (?, ?, ?)")
            .bind(&order_id)
            .bind(&request.user_id)
            .bind(total)
            .execute(&self.db)
            .await
            .map_err(|e| tonic::Status::internal(format!("storing the order: {e}")))?;
        tracing::info!(order = %order_id, total_cents = total, "order stored");

        let confirmation = self.background.track(send_confirmation(
            self.tracer.clone(),
            order_id.clone(),
            request.user_id.clone(),
        ));
        if self.break_mode == Some(Break::Spawn) {
            // The pitfall (Go's `go sendMail()` without ctx): a plain spawn starts with an empty
            // context, so the task's span is the root of a new trace.
            tokio::spawn(confirmation);
        } else {
            skein_otel::spawn(confirmation);
        }
        // Let the task start before the order is answered: first polled after the answer (late,
        // on a loaded machine), its span would start outside the request's, and nothing would
        // tell which request it came from — not even `skein doctor`.
        tokio::task::yield_now().await;

        Ok(Response::new(PlaceOrderResponse { order_id, total_cents: total, items: cart.items.len() as u32 }))
    }
}

/// The order's total in cents: each cart item at its product's price.
#[tracing::instrument(skip_all, fields(shop.items = cart.items.len(), shop.total_cents))]
fn price(cart: &CartReply, products: &[(i64, String, i64)]) -> i64 {
    let total = cart
        .items
        .iter()
        .filter_map(|item| products.iter().find(|p| p.0 == item.product_id).map(|p| p.2 * item.quantity))
        .sum();
    tracing::Span::current().record("shop.total_cents", total);
    total
}

/// Charges the card through the payment SDK, which has no instrumentation of its own: a manual
/// CLIENT span with the attributes worth searching for, always ended, errors recorded.
async fn charge(tracer: &SdkTracer, user: &str, amount_cents: i64, fails: bool) -> Result<(), tonic::Status> {
    let span = tracer
        .span_builder("charge card")
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("payment.provider", "acme-pay"),
            KeyValue::new("payment.amount_cents", amount_cents),
            KeyValue::new("payment.currency", "EUR"),
            KeyValue::new("peer.service", "acme-pay"),
            KeyValue::new("server.address", payment_sdk::HOST),
        ])
        .start(tracer);
    let cx = Context::current_with_span(span);
    let result = payment_sdk::charge(user, amount_cents, fails).with_context(cx.clone()).await;
    let span = cx.span();
    let outcome = match result {
        Ok(receipt) => {
            span.set_attribute(KeyValue::new("payment.receipt", receipt));
            Ok(())
        }
        Err(e) => {
            span.add_event(
                "exception",
                vec![
                    KeyValue::new("exception.type", "PaymentError"),
                    KeyValue::new("exception.message", e.to_string()),
                ],
            );
            span.set_status(Status::error(e.to_string()));
            tracing::warn!(error = %e, "payment failed");
            Err(tonic::Status::unavailable(format!("payment: {e}")))
        }
    };
    span.end();
    outcome
}

/// The confirmation e-mail, sent in the background after the answer.
async fn send_confirmation(tracer: SdkTracer, order_id: String, user: String) {
    let mut span = tracer
        .span_builder("send confirmation")
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("shop.order_id", order_id.clone()),
            KeyValue::new("enduser.id", user),
        ])
        .start(&tracer);
    tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    span.add_event("e-mail queued", vec![KeyValue::new("messaging.destination.name", "emails")]);
    span.end();
    let cx = Context::current();
    tracing::info!(order = %order_id, in_trace = cx.has_active_span(), "confirmation sent");
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    provider: SdkTracerProvider,
    service: CheckoutService,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    let served = tonic::transport::Server::builder()
        .layer(GrpcServerLayer::with_tracer_provider(&provider))
        .add_service(CheckoutServer::new(service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            crate::wait_stop(stopped),
        )
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "checkout stopped");
    }
}
