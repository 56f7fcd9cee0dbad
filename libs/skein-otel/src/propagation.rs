//! Carrying the context across process boundaries with the global propagator
//! (W3C `traceparent`/`tracestate` and `baggage` after [`crate::init`]).

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// Writes `cx` into `carrier` (HTTP headers, gRPC metadata, message headers) with the global
/// propagator.
pub fn inject_into(cx: &Context, carrier: &mut dyn Injector) {
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, carrier));
}

/// Reads the context a caller sent in `carrier` with the global propagator. Without one,
/// the result has no span (a new trace starts).
pub fn extract_from(carrier: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract_with_context(&Context::new(), carrier))
}

#[cfg(any(feature = "tower", feature = "reqwest"))]
mod headers {
    use super::*;

    /// Writes `cx` into HTTP headers: for clients that are not reqwest.
    ///
    /// ```
    /// # #[cfg(feature = "tower")] {
    /// let mut headers = http::HeaderMap::new();
    /// skein_otel::propagation::inject(&opentelemetry::Context::current(), &mut headers);
    /// # }
    /// ```
    pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
        inject_into(cx, &mut opentelemetry_http::HeaderInjector(headers));
    }

    /// Reads the caller's context from HTTP headers.
    pub fn extract(headers: &http::HeaderMap) -> Context {
        extract_from(&opentelemetry_http::HeaderExtractor(headers))
    }
}

#[cfg(any(feature = "tower", feature = "reqwest"))]
pub use headers::{extract, inject};
