//! frontend: the HTTP entry point (axum). `GET /checkout?user=…` passes an auth middleware, then
//! calls checkout over gRPC.

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::trace::{
    FutureExt as _, Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use serde::Deserialize;
use skein_otel::grpc::{GrpcClientLayer, GrpcService};
use skein_otel::http::server::TraceLayer;
use tonic::transport::Channel;

use crate::proto::PlaceOrderRequest;
use crate::proto::checkout_client::CheckoutClient;
use crate::{Break, DEMO_TOKEN};

#[derive(Clone)]
struct AppState {
    checkout: CheckoutClient<GrpcService<Channel>>,
}

#[derive(Clone)]
struct AuthState {
    tracer: SdkTracer,
    break_mode: Option<Break>,
}

pub(crate) fn app(provider: &SdkTracerProvider, checkout: SocketAddr, break_mode: Option<Break>) -> Router {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{checkout}"))
        .expect("a socket address is a valid URI")
        .connect_lazy();
    let channel = tower::ServiceBuilder::new()
        .layer(
            GrpcClientLayer::with_tracer_provider(provider)
                .with_server(checkout.ip().to_string(), checkout.port()),
        )
        .service(channel);
    let state = AppState { checkout: CheckoutClient::new(channel) };
    let auth = AuthState { tracer: provider.tracer("shop.frontend"), break_mode };
    Router::new()
        .route("/checkout", get(checkout_handler))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
        // Inside the trace layer: the middleware sees the request's span as current.
        .layer(middleware::from_fn_with_state(auth, authenticate))
        .layer(TraceLayer::new().with_tracer_provider(provider).with_filter(|r| r.uri().path() != "/healthz"))
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    let served = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(crate::wait_stop(stopped))
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "frontend stopped");
    }
}

/// Checks the bearer token (in a span of its own), then runs the rest of the request.
async fn authenticate(State(auth): State<AuthState>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut span = auth.tracer.span_builder("authenticate").with_kind(SpanKind::Internal).start(&auth.tracer);
    let ok = token == Some(DEMO_TOKEN);
    span.set_attribute(KeyValue::new("auth.result", if ok { "accepted" } else { "rejected" }));
    span.end();
    if !ok {
        tracing::warn!("request without a valid token refused");
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
    }
    if auth.break_mode == Some(Break::Middleware) {
        // The pitfall: the middleware hands the rest of the request a fresh, empty context (as a
        // Go middleware doing `r.WithContext(context.Background())`). Everything after this point
        // starts a new trace.
        return next.run(request).with_context(Context::new()).await;
    }
    next.run(request).await
}

#[derive(Deserialize)]
struct CheckoutParams {
    user: String,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    slow: bool,
}

async fn checkout_handler(State(state): State<AppState>, Query(params): Query<CheckoutParams>) -> Response {
    tracing::info!(user = %params.user, "checkout requested");
    let mut client = state.checkout.clone();
    let request = PlaceOrderRequest {
        user_id: params.user.clone(),
        payment_fails: params.fail,
        slow_query: params.slow,
    };
    match client.place_order(request).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            tracing::info!(order = %reply.order_id, total_cents = reply.total_cents, "order placed");
            let trace_id = Context::current().span().span_context().trace_id().to_string();
            Json(serde_json::json!({
                "order_id": reply.order_id,
                "total_cents": reply.total_cents,
                "items": reply.items,
                "trace_id": trace_id,
            }))
            .into_response()
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "checkout failed");
            (StatusCode::BAD_GATEWAY, format!("checkout failed: {}\n", status.message())).into_response()
        }
    }
}
