//! cart: an HTTP service (axum) that answers what a user has in the cart, from Redis when a
//! redis-server is there, else from a fixed list (and says so in its log).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry_sdk::trace::SdkTracerProvider;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use skein_otel::http::server::TraceLayer;
use skein_otel::redis::TracedConnection;

use crate::ShopError;

type Cache = TracedConnection<ConnectionManager>;

pub(crate) async fn connect_redis(url: &str, provider: &SdkTracerProvider) -> Result<Cache, ShopError> {
    let err = |source| ShopError::Redis { url: url.to_owned(), source };
    let client = redis::Client::open(url).map_err(err)?;
    let info = client.get_connection_info().addr().clone();
    let manager = ConnectionManager::new(client).await.map_err(err)?;
    let mut conn = TracedConnection::new(manager).with_tracer_provider(provider);
    if let redis::ConnectionAddr::Tcp(host, port) = info {
        conn = conn.with_server(host, port);
    }
    Ok(conn)
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    provider: SdkTracerProvider,
    cache: Option<Cache>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    if cache.is_none() {
        tracing::warn!("cart runs without its Redis cache (no redis-server): carts come from a fixed list");
    }
    let app = Router::new()
        .route("/cart/{user}", get(cart))
        .with_state(cache)
        .layer(TraceLayer::new().with_tracer_provider(&provider));
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(crate::wait_stop(stopped))
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "cart stopped");
    }
}

/// The cart every user starts with: product id → quantity.
const STARTER_CART: [(i64, i64); 3] = [(1, 2), (2, 1), (5, 1)];

async fn cart(State(cache): State<Option<Cache>>, Path(user): Path<String>) -> Response {
    let items: Vec<(i64, i64)> = match cache {
        Some(mut conn) => {
            let key = format!("cart:{user}");
            let stored: Result<Vec<(i64, i64)>, _> = conn.hgetall(&key).await;
            match stored {
                Ok(items) if !items.is_empty() => items,
                Ok(_) => {
                    // A new user: fill the cart in one round trip.
                    let mut pipe = redis::pipe();
                    pipe.hset_multiple(&key, &STARTER_CART).ignore().expire(&key, 3600).ignore();
                    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                        tracing::warn!(error = %e, "cannot store the cart");
                    }
                    STARTER_CART.to_vec()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cart cache failed");
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("cart cache: {e}\n")).into_response();
                }
            }
        }
        None => STARTER_CART.to_vec(),
    };
    tracing::info!(user = %user, items = items.len(), "cart read");
    let items: Vec<_> =
        items.into_iter().map(|(p, q)| serde_json::json!({"product_id": p, "quantity": q})).collect();
    Json(serde_json::json!({ "items": items })).into_response()
}
