//! gRPC spans for tonic servers and clients: the Rust `otelgrpc`.
//!
//! ```
//! # #[cfg(feature = "tonic")] fn build() {
//! use skein_otel::grpc::{GrpcClientLayer, GrpcServerLayer};
//! // Server: tonic::transport::Server::builder().layer(GrpcServerLayer::new()).add_service(…)
//! let _server_layer = GrpcServerLayer::new();
//! // Client: wrap the channel, then give it to the generated client.
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
//! let _svc = tower::ServiceBuilder::new().layer(GrpcClientLayer::new()).service(channel);
//! # }
//! ```
//!
//! Spans are named `package.Service/Method`, with `rpc.system.name=grpc`, `rpc.method`,
//! `rpc.response.status_code` (the code's name, such as `NOT_FOUND`) and `server.address`/
//! `server.port`. The context travels in the request metadata (`traceparent`). A server span
//! is an error for the codes semconv lists as server faults (`UNKNOWN`, `DEADLINE_EXCEEDED`,
//! `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`); a client span for any code but `OK`.
//! The span ends when the response's trailers (the final status) arrive.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response};
use http_body::{Body, Frame};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use tower::{Layer, Service};

use crate::semconv::*;

const RPC_SYSTEM_NAME: &str = "rpc.system.name";
const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";

/// The name of a gRPC status code, as semconv records it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    Server,
    Client,
}

/// Ends the span once the final gRPC status is known.
#[derive(Debug)]
struct Finisher {
    cx: Context,
    side: Side,
    done: bool,
}

impl Finisher {
    fn finish(&mut self, code: Option<i32>, message: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        let span = self.cx.span();
        let code = code.unwrap_or(2);
        span.set_attribute(KeyValue::new(RPC_RESPONSE_STATUS_CODE, code_name(code)));
        let error = match self.side {
            Side::Server => is_server_error(code),
            Side::Client => code != 0,
        };
        if error {
            span.set_attribute(KeyValue::new(ERROR_TYPE, code_name(code)));
            span.set_status(Status::error(message.unwrap_or_default()));
        }
        span.end();
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        // The body was dropped before its trailers: the call was cancelled.
        self.finish(Some(1), Some("response dropped before its status".into()));
    }
}

fn status_from(headers: &http::HeaderMap) -> Option<(i32, Option<String>)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).map(str::to_owned);
    Some((code, message))
}

fn start_span<B>(
    tracer: &BoxedTracer,
    server: Option<&(String, u16)>,
    req: &mut Request<B>,
    side: Side,
) -> Context {
    let path = req.uri().path().trim_start_matches('/');
    // A service's methods are a fixed set: each name is made once, not per call.
    let method: Cow<'static, str> = match crate::http::intern::rpc_method(path) {
        Some(m) => m.into(),
        None => path.to_owned().into(),
    };
    let mut attributes =
        vec![KeyValue::new(RPC_SYSTEM_NAME, "grpc"), KeyValue::new(RPC_METHOD, method.clone())];
    let authority = req
        .uri()
        .authority()
        .cloned()
        .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok()?.parse().ok());
    if let Some(a) = authority {
        attributes.push(KeyValue::new(SERVER_ADDRESS, crate::http::intern::host(a.host())));
        if let Some(port) = a.port_u16() {
            attributes.push(KeyValue::new(SERVER_PORT, port as i64));
        }
    } else if let Some((host, port)) = server {
        attributes.push(KeyValue::new(SERVER_ADDRESS, host.clone()));
        attributes.push(KeyValue::new(SERVER_PORT, *port as i64));
    }
    let (kind, parent) = match side {
        Side::Server => (SpanKind::Server, crate::propagation::extract(req.headers())),
        Side::Client => {
            (SpanKind::Client, req.extensions().get::<Context>().cloned().unwrap_or_else(Context::current))
        }
    };
    let span = tracer
        .span_builder(method)
        .with_kind(kind)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    let cx = parent.with_span(span);
    match side {
        Side::Server => {
            req.extensions_mut().insert(cx.clone());
        }
        Side::Client => crate::propagation::inject(&cx, req.headers_mut()),
    }
    cx
}

/// Traces every call a tonic server receives.
#[derive(Clone)]
pub struct GrpcServerLayer {
    tracer: Arc<BoxedTracer>,
    server: Option<Arc<(String, u16)>>,
}

/// Traces every call a tonic client makes, and sends the context in its metadata.
#[derive(Clone)]
pub struct GrpcClientLayer {
    tracer: Arc<BoxedTracer>,
    server: Option<Arc<(String, u16)>>,
}

macro_rules! layer_common {
    ($layer:ident, $side:expr) => {
        impl $layer {
            /// With the global tracer provider (create it after [`crate::init`]).
            pub fn new() -> Self {
                $layer { tracer: Arc::new(crate::tracer()), server: None }
            }

            /// With this provider instead of the global one.
            pub fn with_tracer_provider<P>(provider: &P) -> Self
            where
                P: TracerProvider,
                P::Tracer: Send + Sync + 'static,
                <P::Tracer as Tracer>::Span: Send + Sync + 'static,
            {
                $layer { tracer: Arc::new(crate::tracer_from(provider)), server: None }
            }

            /// `server.address` and `server.port` for requests whose URI has no authority
            /// (a tonic `Channel` adds it only after this layer).
            pub fn with_server(mut self, address: impl Into<String>, port: u16) -> Self {
                self.server = Some(Arc::new((address.into(), port)));
                self
            }
        }

        impl Default for $layer {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Debug for $layer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($layer)).finish_non_exhaustive()
            }
        }

        impl<S> Layer<S> for $layer {
            type Service = GrpcService<S>;

            fn layer(&self, inner: S) -> GrpcService<S> {
                GrpcService {
                    inner,
                    tracer: Arc::clone(&self.tracer),
                    server: self.server.clone(),
                    side: $side,
                }
            }
        }
    };
}

layer_common!(GrpcServerLayer, Side::Server);
layer_common!(GrpcClientLayer, Side::Client);

/// The service made by [`GrpcServerLayer`] and [`GrpcClientLayer`].
#[derive(Clone)]
pub struct GrpcService<S> {
    inner: S,
    tracer: Arc<BoxedTracer>,
    server: Option<Arc<(String, u16)>>,
    side: Side,
}

impl<S> fmt::Debug for GrpcService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcService").field("side", &self.side).finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
    ResBody: Body,
{
    type Response = Response<GrpcBody<ResBody>>;
    type Error = S::Error;
    type Future = GrpcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let cx = start_span(&self.tracer, self.server.as_deref(), &mut req, self.side);
        let inner = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        GrpcFuture { inner, finisher: Some(Finisher { cx, side: self.side, done: false }) }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`GrpcService`].
    pub struct GrpcFuture<F> {
        #[pin]
        inner: F,
        finisher: Option<Finisher>,
    }
}

impl<F, ResBody, E> Future for GrpcFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: fmt::Display,
{
    type Output = Result<Response<GrpcBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _guard = this.finisher.as_ref().map(|f| f.cx.clone().attach());
            std::task::ready!(this.inner.poll(task))
        };
        let mut finisher = this.finisher.take().expect("polled after completion");
        Poll::Ready(match result {
            Ok(response) => {
                // A trailers-only answer (an error) has its status in the headers.
                if let Some((code, message)) = status_from(response.headers()) {
                    finisher.finish(Some(code), message);
                }
                Ok(response.map(|body| GrpcBody { inner: body, finisher: Some(finisher) }))
            }
            Err(e) => {
                finisher.finish(Some(14), Some(e.to_string()));
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends the span when the gRPC status arrives in the trailers.
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        finisher: Option<Finisher>,
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some((code, message)) = f.trailers_ref().and_then(status_from)
                    && let Some(mut fin) = this.finisher.take()
                {
                    fin.finish(Some(code), message);
                }
            }
            Some(Err(_)) => {
                if let Some(mut fin) = this.finisher.take() {
                    fin.finish(Some(14), Some("response body failed".into()));
                }
            }
            None => {
                if let Some(mut fin) = this.finisher.take() {
                    fin.finish(None, Some("stream ended without a grpc-status".into()));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
