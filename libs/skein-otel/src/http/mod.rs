//! HTTP instrumentation: the server layer (feature `tower`/`axum`) and the reqwest client
//! middleware (feature `reqwest`).

#[cfg(feature = "reqwest")]
pub mod client;
#[cfg(feature = "tower")]
mod intern;
#[cfg(feature = "tower")]
pub mod server;

/// The `http.request.method` value: the method if semconv knows it, else `_OTHER`.
pub(crate) fn known_method(method: &http::Method) -> Option<&'static str> {
    Some(match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => return None,
    })
}

pub(crate) fn protocol_version(v: http::Version) -> Option<&'static str> {
    Some(match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_11 => "1.1",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => return None,
    })
}
