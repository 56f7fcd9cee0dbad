//! The HTTP server on `--http-addr`: query API, health, metrics and the web UI.

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use skein_store::SpanStore;

use crate::metrics::Metrics;

pub(crate) fn router(
    store: Arc<dyn SpanStore>,
    metrics: Metrics,
    activity: skein_query::doctor::report::IngestActivity,
    auth: crate::auth::Auth,
) -> Router {
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state((store.clone(), metrics.clone()));
    let login = Router::new()
        .route("/login", get(crate::login::login_form).post(crate::login::login))
        .route("/logout", axum::routing::post(crate::login::logout))
        .route("/api/v1/session", get(crate::login::session))
        .with_state(auth.clone());
    skein_query::router_with_activity(store, activity)
        .merge(ops)
        .merge(login)
        .merge(crate::ui::router())
        .layer(middleware::from_fn_with_state(auth, crate::login::require_query_token))
        .layer(middleware::from_fn_with_state(metrics, count_requests))
}

/// Counts every request by its route pattern (not its raw path, so ids don't explode labels).
pub(crate) async fn count_requests(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    metrics.request(&endpoint, response.status().as_u16());
    response
}

async fn readyz(State((store, _)): State<(Arc<dyn SpanStore>, Metrics)>) -> Response {
    match store.services().await {
        Ok(_) => "ready\n".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage not ready: {e}\n")).into_response(),
    }
}

async fn render_metrics(State((_, metrics)): State<(Arc<dyn SpanStore>, Metrics)>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.render())
        .into_response()
}
