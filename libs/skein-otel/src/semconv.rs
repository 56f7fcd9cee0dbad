//! Attribute keys of the OpenTelemetry semantic conventions used here (stable names).

#[allow(unused_imports)] // each integration uses its own subset
pub(crate) use opentelemetry_semantic_conventions::attribute::{
    CLIENT_ADDRESS, DB_COLLECTION_NAME, DB_NAMESPACE, DB_OPERATION_NAME, DB_QUERY_TEXT, DB_SYSTEM_NAME,
    ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_REQUEST_METHOD_ORIGINAL, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE,
    NETWORK_PROTOCOL_VERSION, RPC_METHOD, SERVER_ADDRESS, SERVER_PORT, URL_FULL, URL_PATH, URL_QUERY,
    URL_SCHEME, USER_AGENT_ORIGINAL,
};

#[cfg_attr(not(any(feature = "tower", feature = "reqwest")), allow(dead_code))]
/// Query parameters whose values semconv says to redact in `url.query` and `url.full`.
pub(crate) const SENSITIVE_QUERY_KEYS: [&str; 4] = ["AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"];

#[cfg_attr(not(any(feature = "tower", feature = "reqwest")), allow(dead_code))]
/// Redacts the values of [`SENSITIVE_QUERY_KEYS`] in a query string (borrowed when there is
/// nothing to redact, the common case).
pub(crate) fn redact_query(query: &str) -> std::borrow::Cow<'_, str> {
    // The check runs on every query, so it goes byte by byte (the separators are ASCII).
    if !query.as_bytes().split(|&b| b == b'&').any(|pair| sensitive_key_len(pair).is_some()) {
        return query.into();
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match sensitive_key_len(pair.as_bytes()) {
            Some(key) => {
                out.push_str(&pair[..key]);
                out.push_str("=REDACTED");
            }
            None => out.push_str(pair),
        }
    }
    out.into()
}

/// The length of a `key=value` pair's key when its value is to be redacted.
fn sensitive_key_len(pair: &[u8]) -> Option<usize> {
    let eq = pair.iter().position(|&b| b == b'=')?;
    SENSITIVE_QUERY_KEYS.iter().any(|k| k.as_bytes() == &pair[..eq]).then_some(eq)
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_sensitive_query_values_only() {
        assert_eq!(super::redact_query("a=1&sig=secret&b"), "a=1&sig=REDACTED&b");
        assert_eq!(super::redact_query("a=1&sig&b=2"), "a=1&sig&b=2");
        assert!(matches!(super::redact_query("page=2"), std::borrow::Cow::Borrowed("page=2")));
        assert!(matches!(super::redact_query("a=b=sig&sig"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(super::redact_query(""), "");
        assert_eq!(
            super::redact_query("Signature=x&X-Goog-Signature=y"),
            "Signature=REDACTED&X-Goog-Signature=REDACTED"
        );
    }
}
