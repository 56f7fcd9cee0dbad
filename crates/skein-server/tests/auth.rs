//! Bearer tokens on every listener: OTLP over gRPC (the official Rust SDK with metadata) and
//! HTTP, the query API (Jaeger's error JSON), `/metrics`, and the UI's login page and cookie;
//! `/healthz` and `/readyz` stay open; tokens never show up in answers or metrics.

mod common;

use common::{TestServer, metric};
use opentelemetry::trace::{Tracer, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use skein_server::Config;

const INGEST: &str = "ingest-7f3a9c";
const QUERY: &str = "query-51be0d";

async fn protected() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ingest"), format!("# OTLP senders\n{INGEST}\n")).unwrap();
    std::fs::write(dir.path().join("query"), format!("{QUERY}\n")).unwrap();
    let server = TestServer::start_with(Config {
        ingest_token_file: Some(dir.path().join("ingest")),
        query_token_file: Some(dir.path().join("query")),
        ..Config::default()
    })
    .await;
    (server, dir)
}

/// A form body, as a browser posts it.
fn form(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

trait PostForm {
    fn form_body(self, fields: &[(&str, &str)]) -> Self;
}

impl PostForm for reqwest::RequestBuilder {
    fn form_body(self, fields: &[(&str, &str)]) -> Self {
        self.header("content-type", "application/x-www-form-urlencoded").body(form(fields))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

async fn post_otlp(server: &TestServer, token: Option<&str>) -> reqwest::Response {
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"authed"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000001000000"}]}]}]}"#;
    let mut request =
        client().post(server.otlp_http_url()).header("content-type", "application/json").body(body);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_needs_an_ingest_token_over_http_and_grpc() {
    let (server, _dir) = protected().await;
    for token in [None, Some("wrong"), Some(QUERY)] {
        let r = post_otlp(&server, token).await;
        assert_eq!(r.status(), 401, "{token:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let text = r.text().await.unwrap();
        assert!(text.contains("--ingest-token-file"), "{text}");
        assert!(!text.contains(INGEST) && !text.contains("wrong"), "no token in the answer: {text}");
    }
    assert_eq!(post_otlp(&server, Some(INGEST)).await.status(), 200);

    // gRPC without the metadata: UNAUTHENTICATED.
    let mut raw = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let empty = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::default();
    let err = raw.export(empty).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // The official Rust SDK with the token as metadata (gRPC) and as a header (HTTP).
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert("authorization", format!("Bearer {INGEST}").parse().unwrap());
    let grpc = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", server.grpc))
        .with_metadata(metadata)
        .build()
        .unwrap();
    let http = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(server.otlp_http_url())
        .with_headers([("authorization".to_owned(), format!("Bearer {INGEST}"))].into())
        .build()
        .unwrap();
    // The SDK's simple processor blocks on each export: off the runtime's threads.
    tokio::task::spawn_blocking(move || {
        for (exporter, service) in [(grpc, "sdk-grpc"), (http, "sdk-http")] {
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                .build();
            provider.tracer("auth-test").in_span("authed op", |_| {});
            provider.shutdown().unwrap();
        }
    })
    .await
    .unwrap();
    let r = client()
        .get(server.api("/api/services"))
        .header("authorization", format!("Bearer {QUERY}"))
        .send()
        .await
        .unwrap();
    let services: serde_json::Value = r.json().await.unwrap();
    assert_eq!(services["data"], serde_json::json!(["authed", "sdk-grpc", "sdk-http"]));

    let m = client()
        .get(server.api("/metrics"))
        .header("authorization", format!("Bearer {QUERY}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(metric(&m, "skein_requests_refused_total{protocol=\"http\",reason=\"unauthenticated\"}"), 3.0);
    assert_eq!(metric(&m, "skein_requests_refused_total{protocol=\"grpc\",reason=\"unauthenticated\"}"), 1.0);
    assert!(!m.contains(INGEST) && !m.contains(QUERY), "no token in the metrics");
    server.stop().await;
}

#[tokio::test]
async fn the_query_api_needs_a_query_token_and_health_stays_open() {
    let (server, _dir) = protected().await;
    let c = client();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(c.get(server.api(path)).send().await.unwrap().status(), 200, "{path}");
    }
    // Jaeger's v1 error JSON, and the v3 error form under /api/v3.
    let r = c.get(server.api("/api/services")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["data"], serde_json::Value::Null);
    assert_eq!(body["errors"][0]["code"], 401);
    let r = c.get(server.api("/api/v3/services")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["httpCode"], 401);
    for (path, token) in
        [("/metrics", None), ("/api/services", Some(INGEST)), ("/api/v1/doctor", Some("nope"))]
    {
        let mut request = c.get(server.api(path));
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{path} with {token:?}");
    }
    let ok =
        c.get(server.api("/api/services")).header("authorization", format!("bearer {QUERY}")).send().await;
    assert_eq!(ok.unwrap().status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn the_ui_logs_in_with_an_httponly_strict_cookie_and_logs_out() {
    let (server, _dir) = protected().await;
    let c = client();
    // A page sends the browser to the login page, and back afterwards.
    let r = c.get(server.api("/search?service=a")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login?next=%2Fsearch%3Fservice%3Da");
    let r = c.get(server.api("/login?next=/search%3Fservice%3Da")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"<input type="password" name="token""#), "{page}");
    assert!(page.contains(r#"value="/search?service=a""#), "{page}");
    // The static files the login page uses are open.
    assert_eq!(c.get(server.api("/static/style.css")).send().await.unwrap().status(), 200);

    let wrong = c
        .post(server.api("/login"))
        .form_body(&[("token", "nope"), ("next", "/search")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("That token is not valid here."));
    // An open redirect is not possible: `next` must be a path of this site.
    let r = c
        .post(server.api("/login"))
        .form_body(&[("token", QUERY), ("next", "//evil.example/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/");
    let r = c
        .post(server.api("/login"))
        .form_body(&[("token", QUERY), ("next", "/search?service=a")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/search?service=a");
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(!set_cookie.contains(QUERY), "the cookie does not carry the token in clear: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // With the cookie, the UI and its API calls work.
    for path in ["/search?service=a", "/api/services", "/api/v1/session", "/metrics"] {
        let r = c.get(server.api(path)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let session: serde_json::Value = c
        .get(server.api("/api/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["tokenRequired"], true);

    // Logging out clears the cookie.
    let r = c.post(server.api("/logout")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    server.stop().await;
}

#[tokio::test]
async fn without_token_files_everything_is_open() {
    let server = TestServer::start().await;
    assert_eq!(post_otlp(&server, None).await.status(), 200);
    let c = client();
    assert_eq!(c.get(server.api("/api/services")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(server.api("/search")).send().await.unwrap().status(), 200);
    let session: serde_json::Value =
        c.get(server.api("/api/v1/session")).send().await.unwrap().json().await.unwrap();
    assert_eq!(session["tokenRequired"], false);
    server.stop().await;
}
