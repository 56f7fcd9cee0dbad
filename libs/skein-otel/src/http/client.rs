//! HTTP client spans for reqwest: the Rust `otelhttp.NewClient`.
//!
//! ```
//! # #[cfg(feature = "reqwest")] {
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(skein_otel::http::client::TracingMiddleware::new())
//!     .build();
//! # }
//! ```
//!
//! Each request gets a CLIENT span named `{METHOD}`, a child of the current context (or of an
//! `opentelemetry::Context` put in the request's extensions), and carries it to the server in
//! `traceparent`/`tracestate`. Status is Error for 4xx and 5xx answers and transport errors.
//! For other HTTP clients, call [`crate::propagation::inject`] on the outgoing headers.

use std::fmt;

use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{FutureExt as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use reqwest_middleware::{Middleware, Next};

use crate::semconv::*;

/// The reqwest-middleware middleware that traces outgoing requests.
pub struct TracingMiddleware {
    tracer: BoxedTracer,
}

impl fmt::Debug for TracingMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingMiddleware").finish_non_exhaustive()
    }
}

impl Default for TracingMiddleware {
    fn default() -> Self {
        Self::new()
    }
}

impl TracingMiddleware {
    /// Traces with the global tracer provider (create it after [`crate::init`]).
    pub fn new() -> Self {
        TracingMiddleware { tracer: crate::tracer() }
    }

    /// Traces with this provider instead of the global one.
    pub fn with_tracer_provider<P>(provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        TracingMiddleware { tracer: crate::tracer_from(provider) }
    }
}

/// `url.full` without credentials: user info becomes `REDACTED:REDACTED`, sensitive query
/// values `REDACTED`.
pub(crate) fn redacted_url(url: &reqwest::Url) -> String {
    let credentials = !url.username().is_empty() || url.password().is_some();
    let query = url.query().map(redact_query);
    if !credentials && !matches!(query, Some(std::borrow::Cow::Owned(_))) {
        // Nothing to redact (the common case): the URL's text as it is.
        return url.as_str().to_owned();
    }
    let mut redacted = url.clone();
    if credentials {
        let _ = redacted.set_username("REDACTED");
        let _ = redacted.set_password(Some("REDACTED"));
    }
    if let Some(q) = query {
        redacted.set_query(Some(&q));
    }
    redacted.into()
}

fn error_type(e: &reqwest_middleware::Error) -> &'static str {
    match e {
        reqwest_middleware::Error::Reqwest(e) if e.is_timeout() => "timeout",
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() => "connect",
        reqwest_middleware::Error::Reqwest(e) if e.is_request() => "request",
        reqwest_middleware::Error::Reqwest(e) if e.is_body() || e.is_decode() => "body",
        _ => "_OTHER",
    }
}

#[async_trait::async_trait]
impl Middleware for TracingMiddleware {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let parent = extensions.get::<Context>().cloned().unwrap_or_else(Context::current);
        let method = crate::http::known_method(req.method());
        let url = req.url();
        let mut attributes = Vec::with_capacity(6);
        attributes.push(KeyValue::new(HTTP_REQUEST_METHOD, method.unwrap_or("_OTHER")));
        if method.is_none() {
            attributes.push(KeyValue::new(HTTP_REQUEST_METHOD_ORIGINAL, req.method().as_str().to_owned()));
        }
        attributes.push(KeyValue::new(URL_FULL, redacted_url(url)));
        if let Some(host) = url.host_str() {
            attributes.push(KeyValue::new(SERVER_ADDRESS, host.to_owned()));
        }
        if let Some(port) = url.port_or_known_default() {
            attributes.push(KeyValue::new(SERVER_PORT, port as i64));
        }
        let span = self
            .tracer
            .span_builder(method.unwrap_or("HTTP"))
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        crate::propagation::inject(&cx, req.headers_mut());
        let result = next.run(req, extensions).with_context(cx.clone()).await;
        let span = cx.span();
        match &result {
            Ok(response) => {
                let code = response.status().as_u16();
                span.set_attribute(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, code as i64));
                if code >= 400 {
                    span.set_attribute(KeyValue::new(ERROR_TYPE, code.to_string()));
                    span.set_status(Status::error(""));
                }
            }
            Err(e) => {
                span.set_attribute(KeyValue::new(ERROR_TYPE, error_type(e)));
                span.set_status(Status::error(e.to_string()));
            }
        }
        span.end();
        result
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_full_hides_credentials() {
        let url: reqwest::Url =
            "https://alice:s3cret@api.example.com:8443/v1/pay?sig=abc&x=1".parse().unwrap();
        assert_eq!(
            super::redacted_url(&url),
            "https://REDACTED:REDACTED@api.example.com:8443/v1/pay?sig=REDACTED&x=1"
        );
        let cases = [
            ("http://localhost/a", "http://localhost/a"),
            ("http://h/p?x=1&page=2#top", "http://h/p?x=1&page=2#top"),
            ("http://h/p?sig=abc&x=1", "http://h/p?sig=REDACTED&x=1"),
            ("http://bob@h/p", "http://REDACTED:REDACTED@h/p"),
        ];
        for (url, want) in cases {
            assert_eq!(super::redacted_url(&url.parse().unwrap()), want, "{url}");
        }
    }
}
