//! The single definition of which spans a [`TraceQuery`] selects.

use skein_model::{AttrValue, Span, SpanKind, StatusCode};

use crate::TraceQuery;

/// Tags that Jaeger shows on a span although OTLP carries them as fields, so that a search
/// for `error=true` or `span.kind=server` finds what the trace view shows.
pub fn synthetic_tags(span: &Span) -> Vec<(&'static str, String)> {
    let mut tags = Vec::new();
    if span.kind != SpanKind::Unspecified {
        tags.push(("span.kind", span.kind.as_str().to_owned()));
    }
    match span.status.code {
        StatusCode::Unset => {}
        StatusCode::Ok => tags.push(("otel.status_code", "OK".to_owned())),
        StatusCode::Error => {
            tags.push(("otel.status_code", "ERROR".to_owned()));
            tags.push(("error", "true".to_owned()));
        }
    }
    if !span.status.message.is_empty() {
        tags.push(("otel.status_description", span.status.message.clone()));
    }
    if !span.scope.name.is_empty() {
        tags.push(("otel.scope.name", span.scope.name.clone()));
    }
    if !span.scope.version.is_empty() {
        tags.push(("otel.scope.version", span.scope.version.clone()));
    }
    tags
}

/// Decides whether one span satisfies every condition of a query.
#[derive(Debug)]
pub struct SpanMatcher<'q> {
    query: &'q TraceQuery,
}

impl<'q> SpanMatcher<'q> {
    pub fn new(query: &'q TraceQuery) -> Self {
        SpanMatcher { query }
    }

    pub fn matches(&self, span: &Span) -> bool {
        let q = self.query;
        if q.service.as_deref().is_some_and(|service| span.service_name() != service) {
            return false;
        }
        if q.operation.as_deref().is_some_and(|op| span.name != op) {
            return false;
        }
        if !q.time.contains(span.start_time_unix_nano) {
            return false;
        }
        let d = span.duration_nanos();
        if q.min_duration_nanos.is_some_and(|min| d < min) || q.max_duration_nanos.is_some_and(|max| d > max)
        {
            return false;
        }
        q.tags.iter().all(|(k, v)| tag_matches(span, k, v))
    }
}

fn tag_matches(span: &Span, key: &str, want: &str) -> bool {
    let attr_eq =
        |attrs: &[skein_model::KeyValue]| attrs.iter().any(|kv| kv.key == key && value_eq(&kv.value, want));
    attr_eq(&span.attributes)
        || attr_eq(&span.resource.attributes)
        || span.events.iter().any(|e| attr_eq(&e.attributes) || (key == "event" && e.name == want))
        || synthetic_tags(span).iter().any(|(k, v)| *k == key && v == want)
}

fn value_eq(value: &AttrValue, want: &str) -> bool {
    match value {
        AttrValue::Str(s) => s == want,
        other => other.to_string() == want,
    }
}
