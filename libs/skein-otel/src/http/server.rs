//! HTTP server spans for axum, hyper and any tower service: the Rust `otelhttp.NewHandler`.
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::get};
//! use skein_otel::http::server::TraceLayer;
//!
//! let app: Router = Router::new()
//!     .route("/users/{id}", get(|| async { "hi" }))
//!     .layer(TraceLayer::new().with_filter(|req| req.uri().path() != "/healthz"));
//! # }
//! ```
//!
//! Each request gets a SERVER span named `{METHOD} {route}` (the route from axum's
//! `MatchedPath`; without a route, just `{METHOD}`; methods outside the HTTP spec are `_OTHER`),
//! a child of the context the caller sent in `traceparent`/`tracestate`. The handler runs with
//! the span's context current, and the context is in the request's extensions
//! (`req.extensions().get::<opentelemetry::Context>()`). Attributes follow the stable HTTP
//! semantic conventions; 5xx answers and handler errors set status Error, 4xx does not.
//!
//! The layer keeps its own cost low: it reads the headers it needs in one pass, with the W3C
//! propagator that [`crate::init`] installs it parses `traceparent` without allocating, it
//! makes each route's span names once, and shares repeated `Host`, `User-Agent` and client
//! address values between requests.
//! `cargo bench -p skein-otel --all-features --bench instrumentation` prints what it costs
//! beside a raw SDK span.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use opentelemetry::global::BoxedTracer;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Link, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use tower::{Layer, Service};

use super::intern;
use crate::semconv::*;

type Filter = Arc<dyn Fn(&Request<()>) -> bool + Send + Sync>;
type SpanNamer = Arc<dyn Fn(&http::Method, Option<&str>) -> String + Send + Sync>;
type Propagator = Arc<dyn TextMapPropagator + Send + Sync>;

#[derive(Clone)]
struct Config {
    /// Shared, so that a layer changed by a builder method keeps the provider it was given.
    tracer: Arc<BoxedTracer>,
    filter: Option<Filter>,
    span_name: Option<SpanNamer>,
    public_endpoint: bool,
    propagator: Option<Propagator>,
}

/// The tower `Layer` that traces HTTP requests. Create it after [`crate::init`] (it binds the
/// global tracer provider at creation), or give it a provider with
/// [`TraceLayer::with_tracer_provider`].
#[derive(Clone)]
pub struct TraceLayer {
    config: Arc<Config>,
}

impl fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceLayer")
            .field("public_endpoint", &self.config.public_endpoint)
            .finish_non_exhaustive()
    }
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceLayer {
    /// Traces with the global tracer provider and the global propagator.
    pub fn new() -> Self {
        TraceLayer {
            config: Arc::new(Config {
                tracer: Arc::new(crate::tracer()),
                filter: None,
                span_name: None,
                public_endpoint: false,
                propagator: None,
            }),
        }
    }

    fn map(self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        f(&mut config);
        TraceLayer { config: Arc::new(config) }
    }

    /// Uses this provider instead of the global one.
    pub fn with_tracer_provider<P>(self, provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        let tracer = Arc::new(crate::tracer_from(provider));
        self.map(|c| c.tracer = tracer)
    }

    /// Only requests for which `filter` returns true are traced (e.g. skip `/healthz`).
    /// The filter sees the request's head and extensions (axum's `MatchedPath` among them
    /// when the layer is on a `Router`); its body is set aside while the filter runs.
    pub fn with_filter(self, filter: impl Fn(&Request<()>) -> bool + Send + Sync + 'static) -> Self {
        self.map(|c| c.filter = Some(Arc::new(filter)))
    }

    /// Names spans with `f(method, route)` instead of `{METHOD} {route}`.
    pub fn with_span_name(
        self,
        f: impl Fn(&http::Method, Option<&str>) -> String + Send + Sync + 'static,
    ) -> Self {
        self.map(|c| c.span_name = Some(Arc::new(f)))
    }

    /// For endpoints that face the internet: every request starts a new trace, **linked** to
    /// the context the caller sent instead of joining it (so outsiders cannot choose your
    /// trace ids or sampling, nor inject baggage).
    pub fn public_endpoint(self) -> Self {
        self.map(|c| c.public_endpoint = true)
    }

    /// Extracts the caller's context with this propagator instead of the global one.
    pub fn with_propagator(self, propagator: impl TextMapPropagator + Send + Sync + 'static) -> Self {
        self.map(|c| c.propagator = Some(Arc::new(propagator)))
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner, config: Arc::clone(&self.config) }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: fmt::Debug> fmt::Debug for TraceService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceService").field("inner", &self.inner).finish_non_exhaustive()
    }
}

fn route<B>(req: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(p) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(p.as_str());
    }
    let _ = req;
    None
}

/// Made at compile time: a lookup by name would parse and validate it on every request.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The headers the layer reads. A request with up to [`SCAN_HEADERS`] header values (nearly
/// every request) is read in one pass comparing names, which costs less than a hashed lookup
/// per name; a larger one is looked up name by name. Either way each name's first value is
/// the one kept.
#[derive(Default)]
struct Head<'a> {
    w3c: crate::propagation::FoundW3cHeaders<'a>,
    host: Option<&'a http::HeaderValue>,
    user_agent: Option<&'a http::HeaderValue>,
    forwarded_for: Option<&'a http::HeaderValue>,
}

/// Up to this many header values are read in one pass (past it, six lookups cost less).
const SCAN_HEADERS: usize = 24;

impl<'a> Head<'a> {
    fn read(headers: &'a http::HeaderMap) -> Self {
        use crate::propagation::{BAGGAGE, FoundW3cHeaders, TRACEPARENT, TRACESTATE};
        use http::header::{HOST, USER_AGENT};
        if headers.len() > SCAN_HEADERS {
            return Head {
                w3c: FoundW3cHeaders::look_up(headers),
                host: headers.get(HOST),
                user_agent: headers.get(USER_AGENT),
                forwarded_for: headers.get(X_FORWARDED_FOR),
            };
        }
        let mut head = Head::default();
        for (name, value) in headers {
            let slot = if name == HOST {
                &mut head.host
            } else if name == USER_AGENT {
                &mut head.user_agent
            } else if name == TRACEPARENT {
                &mut head.w3c.traceparent
            } else if name == TRACESTATE {
                &mut head.w3c.tracestate
            } else if name == X_FORWARDED_FOR {
                &mut head.forwarded_for
            } else {
                head.w3c.baggage |= name == BAGGAGE;
                continue;
            };
            slot.get_or_insert(value);
        }
        head
    }
}

fn client_address<B>(req: &Request<B>, head: &Head<'_>) -> Option<opentelemetry::Value> {
    if let Some(xff) = head.forwarded_for.and_then(|v| v.to_str().ok())
        && let Some(first) = xff.split(',').next().map(str::trim).filter(|s| !s.is_empty())
    {
        return Some(intern::client(first));
    }
    #[cfg(feature = "axum")]
    if let Some(ci) = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>() {
        return Some(intern::client_ip(ci.0.ip()));
    }
    let _ = req;
    None
}

/// `host[:port]` from the `Host` header or the URI authority (parsed in place, byte by byte:
/// this runs on every request, on a few bytes).
fn server_address<'a, B>(req: &'a Request<B>, head: &Head<'a>) -> Option<(&'a str, Option<u16>)> {
    let raw = match head.host.and_then(|h| h.to_str().ok()) {
        Some(h) => h,
        None => req.uri().authority()?.as_str(),
    };
    let raw = raw.bytes().rposition(|b| b == b'@').map_or(raw, |at| &raw[at + 1..]);
    if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        let (host, tail) = rest.split_once(']')?;
        return Some((host, tail.strip_prefix(':').and_then(|p| p.parse().ok())));
    }
    match raw.bytes().rposition(|b| b == b':') {
        Some(colon) => Some((&raw[..colon], raw[colon + 1..].parse().ok())),
        None => Some((raw, None)),
    }
}

/// `url.scheme`: the URI's scheme, `http` when the request line has none (origin form).
fn scheme(uri: &http::Uri) -> opentelemetry::Value {
    match uri.scheme_str() {
        None | Some("http") => "http".into(),
        Some("https") => "https".into(),
        Some(other) => other.to_owned().into(),
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for TraceService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let config = &*self.config;
        let (mut req, traced) = config.traces(req);
        if !traced {
            return ResponseFuture { inner: self.inner.call(req), cx: None };
        }
        let head = Head::read(req.headers());
        let remote =
            crate::propagation::extract_found(req.headers(), &head.w3c, config.propagator.as_deref());
        let method = crate::http::method_index(req.method());
        let route = Route::of(&req);
        let name = config.span_name(req.method(), method, &route);
        let attributes = request_attributes(&req, &head, method, &route);
        let cx = config.start(name, attributes, remote);
        req.extensions_mut().insert(cx.clone());
        let inner = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        ResponseFuture { inner, cx: Some(cx) }
    }
}

/// The route a request matched: axum's `MatchedPath`, and its interned form (span names and
/// `http.route` made once per route template) when there is room for it.
struct Route<'a> {
    matched: Option<&'a str>,
    interned: Option<&'static intern::Route>,
}

impl<'a> Route<'a> {
    fn of<B>(req: &'a Request<B>) -> Self {
        let matched = route(req);
        Route { matched, interned: matched.and_then(intern::route) }
    }
}

impl Config {
    /// Whether to trace `req`, asked of the filter with the body set aside (moved, not
    /// copied); the request comes back whole either way.
    fn traces<B>(&self, req: Request<B>) -> (Request<B>, bool) {
        let Some(filter) = &self.filter else { return (req, true) };
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let traced = filter(&head);
        (Request::from_parts(head.into_parts().0, body), traced)
    }

    /// `{METHOD} {route}`, `{METHOD}` without a route, or what the configured namer says.
    fn span_name(&self, method: &http::Method, method_index: usize, route: &Route<'_>) -> Cow<'static, str> {
        let name = crate::http::METHOD_NAMES[method_index];
        match (&self.span_name, route.interned, route.matched) {
            (Some(f), _, _) => f(method, route.matched).into(),
            (None, Some(r), _) => r.name(method_index).into(),
            (None, None, Some(r)) => format!("{name} {r}").into(),
            (None, None, None) => name.into(),
        }
    }

    /// Starts the SERVER span as a child of the caller's context, or, on a public endpoint,
    /// as a new root linked to it; returns the context that holds it.
    fn start(&self, name: Cow<'static, str>, attributes: Vec<KeyValue>, remote: Context) -> Context {
        let mut builder =
            self.tracer.span_builder(name).with_kind(SpanKind::Server).with_attributes(attributes);
        let parent = if self.public_endpoint {
            let remote_sc = remote.span().span_context().clone();
            if remote_sc.is_valid() {
                builder = builder.with_links(vec![Link::with_context(remote_sc)]);
            }
            // A new root; the outsider's baggage is not trusted either.
            Context::new()
        } else {
            remote
        };
        let span = builder.start_with_context(&*self.tracer, &parent);
        parent.with_span(span)
    }
}

/// The request's attributes, by the stable HTTP semantic conventions.
fn request_attributes<B>(
    req: &Request<B>,
    head: &Head<'_>,
    method_index: usize,
    route: &Route<'_>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(12);
    attributes.push(KeyValue::new(HTTP_REQUEST_METHOD, crate::http::METHOD_NAMES[method_index]));
    if method_index == crate::http::OTHER_METHOD {
        attributes.push(KeyValue::new(HTTP_REQUEST_METHOD_ORIGINAL, req.method().as_str().to_owned()));
    }
    let path = req.uri().path();
    attributes.push(match route.interned {
        // A route without parameters is its own path.
        Some(r) if r.route == path => KeyValue::new(URL_PATH, r.route),
        _ => KeyValue::new(URL_PATH, path.to_owned()),
    });
    if let Some(q) = req.uri().query() {
        attributes.push(KeyValue::new(URL_QUERY, redact_query(q).into_owned()));
    }
    attributes.push(KeyValue::new(URL_SCHEME, scheme(req.uri())));
    match (route.interned, route.matched) {
        (Some(r), _) => attributes.push(KeyValue::new(HTTP_ROUTE, r.route)),
        (None, Some(r)) => attributes.push(KeyValue::new(HTTP_ROUTE, r.to_owned())),
        (None, None) => {}
    }
    if let Some((host, port)) = server_address(req, head) {
        attributes.push(KeyValue::new(SERVER_ADDRESS, intern::host(host)));
        if let Some(port) = port {
            attributes.push(KeyValue::new(SERVER_PORT, port as i64));
        }
    }
    if let Some(client) = client_address(req, head) {
        attributes.push(KeyValue::new(CLIENT_ADDRESS, client));
    }
    if let Some(v) = crate::http::protocol_version(req.version()) {
        attributes.push(KeyValue::new(NETWORK_PROTOCOL_VERSION, v));
    }
    if let Some(ua) = head.user_agent.and_then(|v| v.to_str().ok()) {
        attributes.push(KeyValue::new(USER_AGENT_ORIGINAL, intern::user_agent(ua)));
    }
    attributes
}

pin_project_lite::pin_project! {
    /// The future of [`TraceService`]: polls the handler inside the span's context and ends
    /// the span with the outcome.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        cx: Option<Context>,
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: fmt::Display,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(cx) = this.cx.as_ref() else { return this.inner.poll(task) };
        let result = {
            let _guard = cx.clone().attach();
            std::task::ready!(this.inner.poll(task))
        };
        let span = cx.span();
        match &result {
            Ok(response) => {
                let code = response.status().as_u16();
                span.set_attribute(KeyValue::new(HTTP_RESPONSE_STATUS_CODE, code as i64));
                if code >= 500 {
                    span.set_attribute(KeyValue::new(ERROR_TYPE, code.to_string()));
                    span.set_status(Status::error(""));
                }
            }
            Err(e) => {
                span.set_attribute(KeyValue::new(ERROR_TYPE, short_type_name::<E>()));
                span.set_status(Status::error(e.to_string()));
            }
        }
        span.end();
        *this.cx = None;
        Poll::Ready(result)
    }
}

pub(crate) fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass read finds what a lookup per name finds (each name's first value), in
    /// small maps and in maps large enough to be looked up name by name.
    #[test]
    fn one_pass_header_read_agrees_with_lookups() {
        use crate::propagation::{BAGGAGE, TRACEPARENT, TRACESTATE};
        use http::header::{HOST, USER_AGENT};
        let names = [HOST, USER_AGENT, TRACEPARENT, TRACESTATE, X_FORWARDED_FOR, BAGGAGE];
        for filler in [0, 3, SCAN_HEADERS - 8, SCAN_HEADERS + 1, 60] {
            for present in 0..(1u32 << names.len()) {
                let mut h = http::HeaderMap::new();
                for i in 0..filler {
                    let name = http::HeaderName::try_from(format!("x-filler-{i}")).unwrap();
                    h.append(name, http::HeaderValue::from_static("v"));
                }
                for (i, name) in names.iter().enumerate() {
                    if present & (1 << i) != 0 {
                        h.append(name.clone(), http::HeaderValue::from_str(&format!("first-{i}")).unwrap());
                        h.append(name.clone(), http::HeaderValue::from_static("second"));
                    }
                }
                let head = Head::read(&h);
                let case = format!("{filler} fillers, headers {present:06b}");
                assert_eq!(head.host, h.get(HOST), "{case}");
                assert_eq!(head.user_agent, h.get(USER_AGENT), "{case}");
                assert_eq!(head.forwarded_for, h.get(X_FORWARDED_FOR), "{case}");
                assert_eq!(head.w3c.traceparent, h.get(TRACEPARENT), "{case}");
                assert_eq!(head.w3c.tracestate, h.get(TRACESTATE), "{case}");
                assert_eq!(head.w3c.baggage, h.contains_key(BAGGAGE), "{case}");
            }
        }
    }

    fn provider() -> (crate::testing::Recorder, opentelemetry_sdk::trace::SdkTracerProvider) {
        let recorder = crate::testing::Recorder::new();
        let provider = recorder.provider("api");
        (recorder, provider)
    }

    fn serve(layer: &TraceLayer, req: Request<()>) {
        use tower::ServiceExt;
        let svc = layer.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(()))
        }));
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(svc.oneshot(req)).unwrap();
    }

    /// A builder method on a layer whose configuration is shared (a clone is alive) used to
    /// rebuild it with the global tracer, dropping the provider it had been given.
    #[test]
    fn builder_methods_keep_the_given_provider() {
        let (recorder, provider) = provider();
        let base = TraceLayer::new().with_tracer_provider(&provider);
        let kept = base.clone();
        let changed =
            base.with_filter(|_| true).with_span_name(|m, _| format!("custom {m}")).public_endpoint();
        serve(&changed, Request::get("/a").body(()).unwrap());
        serve(&kept, Request::get("/b").body(()).unwrap());
        let names: Vec<_> = recorder.spans().iter().map(|s| s.name().to_owned()).collect();
        assert_eq!(names, ["custom GET", "GET"]);
    }

    #[test]
    fn the_filter_decides_and_the_request_comes_back_whole() {
        let (recorder, provider) = provider();
        let layer = TraceLayer::new()
            .with_tracer_provider(&provider)
            .with_filter(|req| req.uri().path() != "/healthz");
        let (req, traced) =
            layer.config.traces(Request::get("/healthz").header("x-a", "1").body(7u8).unwrap());
        assert!(!traced);
        assert_eq!(
            (req.uri().path(), req.headers()["x-a"].as_bytes(), *req.body()),
            ("/healthz", &b"1"[..], 7)
        );
        assert!(layer.config.traces(Request::get("/orders").body(()).unwrap()).1);
        serve(&layer, Request::get("/healthz").body(()).unwrap());
        assert!(recorder.spans().is_empty());
    }

    #[test]
    fn span_names_from_method_route_or_namer() {
        let config = TraceLayer::new().config;
        let get = http::Method::GET;
        let index = crate::http::method_index(&get);
        let none = Route { matched: None, interned: None };
        assert_eq!(config.span_name(&get, index, &none), "GET");
        let matched = Route { matched: Some("/users/{id}"), interned: None };
        assert_eq!(config.span_name(&get, index, &matched), "GET /users/{id}");
        let interned = Route { matched: Some("/users/{id}"), interned: intern::route("/users/{id}") };
        assert_eq!(config.span_name(&get, index, &interned), "GET /users/{id}");
        let odd = http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(config.span_name(&odd, crate::http::method_index(&odd), &none), "_OTHER");
        let named = TraceLayer::new().with_span_name(|m, r| format!("{m}:{}", r.unwrap_or("-"))).config;
        assert_eq!(named.span_name(&get, index, &matched), "GET:/users/{id}");
    }

    #[test]
    fn request_attributes_follow_the_http_conventions() {
        let req = Request::builder()
            .method("BREW")
            .uri("/users/42?sig=secret&page=2")
            .header("host", "api.local:8080")
            .header("user-agent", "curl/8")
            .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
            .body(())
            .unwrap();
        let head = Head::read(req.headers());
        let route = Route { matched: Some("/users/{id}"), interned: None };
        let attributes = request_attributes(&req, &head, crate::http::method_index(req.method()), &route);
        let got: Vec<(String, String)> =
            attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect();
        let want = [
            ("http.request.method", "_OTHER"),
            ("http.request.method_original", "BREW"),
            ("url.path", "/users/42"),
            ("url.query", "sig=REDACTED&page=2"),
            ("url.scheme", "http"),
            ("http.route", "/users/{id}"),
            ("server.address", "api.local"),
            ("server.port", "8080"),
            ("client.address", "203.0.113.9"),
            ("network.protocol.version", "1.1"),
            ("user_agent.original", "curl/8"),
        ];
        let want: Vec<(String, String)> = want.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_parent_is_the_caller_unless_the_endpoint_is_public() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let remote_sc = SpanContext::new(
            TraceId::from(7),
            SpanId::from(9),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let (recorder, provider) = provider();
        let remote = Context::new().with_remote_span_context(remote_sc.clone());
        let private = TraceLayer::new().with_tracer_provider(&provider);
        let cx = private.config.start("GET".into(), Vec::new(), remote.clone());
        assert_eq!(cx.span().span_context().trace_id(), TraceId::from(7));
        cx.span().end();
        let public = TraceLayer::new().with_tracer_provider(&provider).public_endpoint();
        let cx = public.config.start("GET".into(), Vec::new(), remote);
        assert_ne!(cx.span().span_context().trace_id(), TraceId::from(7));
        cx.span().end();
        let spans = recorder.spans();
        assert_eq!(spans[0].parent(), Some(SpanId::from(9)));
        assert_eq!(spans[1].parent(), None);
        assert_eq!(spans[1].data.links.links[0].span_context, remote_sc);
    }

    #[test]
    fn server_address_from_host_or_authority() {
        let cases = [
            (Some("api.local:8080"), "http://ignored/", Some(("api.local", Some(8080)))),
            (Some("api.local"), "/", Some(("api.local", None))),
            (Some("[::1]:9000"), "/", Some(("::1", Some(9000)))),
            (Some("[::1]"), "/", Some(("::1", None))),
            (Some("host:notaport"), "/", Some(("host", None))),
            (None, "http://user:pw@example.com:81/x", Some(("example.com", Some(81)))),
            (None, "http://example.com/x", Some(("example.com", None))),
            (None, "/x", None),
        ];
        for (host, uri, want) in cases {
            let mut req = Request::builder().uri(uri);
            if let Some(host) = host {
                req = req.header(http::header::HOST, host);
            }
            let req = req.body(()).unwrap();
            let head = Head::read(req.headers());
            assert_eq!(server_address(&req, &head), want, "{host:?} {uri}");
        }
    }
}
