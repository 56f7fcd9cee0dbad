//! The HTTP server layer on real axum and hyper servers over loopback, called with reqwest.

#![cfg(feature = "axum")]

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, TracerProvider as _};
use skein_otel::http::server::TraceLayer;
use skein_otel::testing::{Recorder, TraceCheck};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    addr
}

fn app(recorder: &Recorder) -> Router {
    let provider = recorder.provider("users");
    Router::new()
        .route(
            "/users/{id}",
            get(|Path(id): Path<String>, req: axum::extract::Request| async move {
                // The handler runs inside the server span, and the context is in the extensions.
                let current = opentelemetry::Context::current();
                let from_ext =
                    req.extensions().get::<opentelemetry::Context>().expect("context in extensions");
                assert_eq!(current.span().span_context(), from_ext.span().span_context());
                format!("user {id} trace {}", skein_otel::current_trace_id().unwrap())
            }),
        )
        .route("/boom", get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }))
        .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }))
        .route("/healthz", get(|| async { "ok" }))
        .layer(
            TraceLayer::new()
                .with_tracer_provider(&provider)
                .with_filter(|req| req.uri().path() != "/healthz"),
        )
}

fn attr(check: &TraceCheck, span: &str, key: &str) -> Option<String> {
    check.span(span).attr(key)
}

#[tokio::test]
async fn axum_server_span_joins_the_callers_trace_with_semconv_attributes() {
    let _ = Recorder::new().install_global("unused"); // W3C propagator as the global one
    let recorder = Recorder::new();
    let addr = serve(app(&recorder)).await;
    let client = reqwest::Client::new();
    let body = client
        .get(format!("http://{addr}/users/42?sig=secret&page=2"))
        .header("traceparent", TRACEPARENT)
        .header("user-agent", "skein-test/1.0")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        body, "user 42 trace 4bf92f3577b34da6a3ce929d0e0e4736",
        "handler sees the propagated trace id"
    );

    let check = recorder.check();
    let span = check.span("GET /users/{id}");
    assert_eq!(span.data.span_kind, SpanKind::Server);
    assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span.parent().unwrap().to_string(), "00f067aa0ba902b7");
    assert!(span.data.parent_span_is_remote);
    assert_eq!(span.data.status, Status::Unset);
    let a = |k| attr(&check, "GET /users/{id}", k);
    assert_eq!(a("http.request.method").as_deref(), Some("GET"));
    assert_eq!(a("http.route").as_deref(), Some("/users/{id}"));
    assert_eq!(a("url.path").as_deref(), Some("/users/42"));
    assert_eq!(a("url.query").as_deref(), Some("sig=REDACTED&page=2"));
    assert_eq!(a("url.scheme").as_deref(), Some("http"));
    assert_eq!(a("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(a("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(a("server.port"), Some(addr.port().to_string()));
    assert_eq!(a("client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(a("network.protocol.version").as_deref(), Some("1.1"));
    assert_eq!(a("user_agent.original").as_deref(), Some("skein-test/1.0"));
    assert_eq!(a("error.type"), None);
    assert_eq!(span.data.instrumentation_scope.name(), "skein-otel");
}

#[tokio::test]
async fn client_address_is_the_first_x_forwarded_for_entry() {
    let recorder = Recorder::new();
    let addr = serve(app(&recorder)).await;
    let client = reqwest::Client::new();
    for (path, forwarded) in [("/users/1", "203.0.113.9, 10.0.0.1"), ("/teapot", " 198.51.100.2 ")] {
        let url = format!("http://{addr}{path}");
        client.get(url).header("x-forwarded-for", forwarded).send().await.unwrap();
    }
    let check = recorder.check();
    assert_eq!(attr(&check, "GET /users/{id}", "client.address").as_deref(), Some("203.0.113.9"));
    assert_eq!(attr(&check, "GET /teapot", "client.address").as_deref(), Some("198.51.100.2"));
}

#[tokio::test]
async fn errors_filters_and_unknown_methods() {
    let _ = Recorder::new().install_global("unused");
    let recorder = Recorder::new();
    let addr = serve(app(&recorder)).await;
    let client = reqwest::Client::new();
    for path in ["/boom", "/teapot", "/healthz", "/nowhere"] {
        client.get(format!("http://{addr}{path}")).send().await.unwrap();
    }
    client
        .request(reqwest::Method::from_bytes(b"PURGE").unwrap(), format!("http://{addr}/users/1"))
        .send()
        .await
        .unwrap();

    let check = recorder.check();
    let boom = check.span("GET /boom");
    assert_eq!(boom.data.status, Status::error(""), "5xx is an error");
    assert_eq!(boom.attr("error.type").as_deref(), Some("500"));
    assert!(boom.parent().is_none(), "no traceparent: a new root");
    assert_eq!(boom.attr("url.path").as_deref(), Some("/boom"), "a route without parameters is its path");
    assert_eq!(boom.attr("http.route").as_deref(), Some("/boom"));
    let teapot = check.span("GET /teapot");
    assert_eq!(teapot.data.status, Status::Unset, "4xx is not a server error");
    assert_eq!(teapot.attr("http.response.status_code").as_deref(), Some("418"));
    assert!(check.spans.iter().all(|s| !s.name().contains("healthz")), "filtered out");
    let unmatched = check.span("GET");
    assert_eq!(unmatched.attr("http.route"), None, "no route for an unmatched path");
    assert_eq!(unmatched.attr("http.response.status_code").as_deref(), Some("404"));
    let purge = check.span("_OTHER /users/{id}");
    assert_eq!(purge.attr("http.request.method").as_deref(), Some("_OTHER"));
    assert_eq!(purge.attr("http.request.method_original").as_deref(), Some("PURGE"));
    assert_eq!(check.spans.len(), 4);
}

/// The filter sees the route axum matched (from the extensions), and the body it set aside
/// reaches the handler whether the request is traced or not.
#[tokio::test]
async fn filter_sees_the_matched_route_and_bodies_pass_through() {
    let recorder = Recorder::new();
    let provider = recorder.provider("users");
    let app = Router::new()
        .route("/echo", axum::routing::post(|body: String| async move { body }))
        .route("/internal/{x}", axum::routing::post(|body: String| async move { format!("internal {body}") }))
        .layer(TraceLayer::new().with_tracer_provider(&provider).with_filter(|req| {
            req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str()) != Some("/internal/{x}")
        }));
    let addr = serve(app).await;
    let client = reqwest::Client::new();
    let echo = client.post(format!("http://{addr}/echo")).body("hello").send().await.unwrap();
    assert_eq!(echo.text().await.unwrap(), "hello");
    let internal = client.post(format!("http://{addr}/internal/7")).body("ping").send().await.unwrap();
    assert_eq!(internal.text().await.unwrap(), "internal ping");

    let check = recorder.check();
    assert_eq!(check.spans.len(), 1, "only /echo is traced: {:?}", check.spans);
    assert_eq!(check.span("POST /echo").attr("http.response.status_code").as_deref(), Some("200"));
}

#[tokio::test]
async fn public_endpoint_starts_a_new_trace_linked_to_the_caller() {
    let _ = Recorder::new().install_global("unused");
    let recorder = Recorder::new();
    let provider = recorder.provider("edge");
    let app = Router::new().route("/", get(|| async { "hi" })).layer(
        TraceLayer::new()
            .with_tracer_provider(&provider)
            .public_endpoint()
            .with_span_name(|m, _| format!("edge {m}")),
    );
    let addr = serve(app).await;
    reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    let check = recorder.check();
    let span = check.span("edge GET");
    assert!(span.parent().is_none());
    assert_ne!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    let link = &span.data.links.links[0];
    assert_eq!(link.span_context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(link.span_context.span_id().to_string(), "00f067aa0ba902b7");
}

#[tokio::test]
async fn plain_hyper_service_is_traced_too() {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let _ = Recorder::new().install_global("unused");
    let recorder = Recorder::new();
    let provider = recorder.provider("hyper-svc");
    let svc = tower::ServiceBuilder::new()
        .layer(TraceLayer::new().with_tracer_provider(&provider))
        .service_fn(|_req: http::Request<Incoming>| async move {
            let trace = skein_otel::current_trace_id().unwrap_or_default();
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(trace))))
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
            .await
            .unwrap();
    });
    let body = reqwest::Client::new()
        .post(format!("http://{addr}/orders"))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "4bf92f3577b34da6a3ce929d0e0e4736");
    let check = recorder.check();
    let span = check.span("POST");
    assert_eq!(span.attr("url.path").as_deref(), Some("/orders"));
    assert_eq!(span.parent().unwrap().to_string(), "00f067aa0ba902b7");
}

#[tokio::test]
async fn custom_propagator_is_used_instead_of_the_global_one() {
    // The global propagator is W3C (installed by the other tests or here); this layer reads
    // only `baggage`, so the caller's traceparent is ignored and a new trace starts.
    let _ = Recorder::new().install_global("unused");
    let recorder = Recorder::new();
    let provider = recorder.provider("custom");
    let app = Router::new().route("/", get(|| async { "hi" })).layer(
        TraceLayer::new()
            .with_tracer_provider(&provider)
            .with_propagator(opentelemetry_sdk::propagation::BaggagePropagator::new()),
    );
    let addr = serve(app).await;
    reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap();
    let check = recorder.check();
    let span = check.span("GET /");
    assert!(span.parent().is_none());
    assert_ne!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[test]
fn inject_writes_traceparent_for_any_client() {
    let _ = Recorder::new().install_global("unused");
    let recorder = Recorder::new();
    let tracer = recorder.provider("client").tracer("t");
    use opentelemetry::trace::Tracer as _;
    tracer.in_span("call", |cx| {
        let mut headers = http::HeaderMap::new();
        skein_otel::propagation::inject(&cx, &mut headers);
        let tp = headers.get("traceparent").expect("traceparent injected").to_str().unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(tp, format!("00-{}-{}-01", sc.trace_id(), sc.span_id()));
        let back = skein_otel::propagation::extract(&headers);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
    });
}

#[tokio::test]
async fn spawn_blocking_keeps_the_context() {
    let recorder = Recorder::new();
    let tracer = recorder.provider("svc").tracer("t");
    use opentelemetry::trace::Tracer as _;
    use skein_otel::FutureContextExt;
    let root = tracer.start("root");
    let cx = opentelemetry::Context::current_with_span(root);
    let inner = recorder.provider("svc").tracer("t");
    async move {
        skein_otel::spawn_blocking(move || inner.in_span("blocking work", |_| {})).await.unwrap();
    }
    .in_context(cx.clone())
    .await;
    cx.span().end();
    let check = recorder.check();
    check.assert_connected();
    check.assert_parent("root", "blocking work");
}
