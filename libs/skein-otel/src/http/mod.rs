//! HTTP instrumentation: the server layer (feature `tower`/`axum`) and the reqwest client
//! middleware (feature `reqwest`).

#[cfg(feature = "reqwest")]
pub mod client;
#[cfg(feature = "tower")]
pub(crate) mod intern;
#[cfg(feature = "tower")]
pub mod server;

/// `http.request.method` values: the methods semconv knows, then `_OTHER` for the rest,
/// numbered by [`method_index`].
pub(crate) const METHOD_NAMES: [&str; 10] =
    ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE", "_OTHER"];

/// The index of `_OTHER` in [`METHOD_NAMES`].
pub(crate) const OTHER_METHOD: usize = METHOD_NAMES.len() - 1;

/// The index of `method`'s value in [`METHOD_NAMES`] ([`OTHER_METHOD`] for unknown methods).
pub(crate) fn method_index(method: &http::Method) -> usize {
    match *method {
        http::Method::GET => 0,
        http::Method::POST => 1,
        http::Method::PUT => 2,
        http::Method::DELETE => 3,
        http::Method::HEAD => 4,
        http::Method::OPTIONS => 5,
        http::Method::PATCH => 6,
        http::Method::CONNECT => 7,
        http::Method::TRACE => 8,
        _ => OTHER_METHOD,
    }
}

/// The `http.request.method` value: the method if semconv knows it, else `None` (`_OTHER`).
#[cfg(feature = "reqwest")]
pub(crate) fn known_method(method: &http::Method) -> Option<&'static str> {
    let i = method_index(method);
    (i != OTHER_METHOD).then(|| METHOD_NAMES[i])
}

#[cfg(feature = "tower")]
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
