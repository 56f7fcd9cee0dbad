//! The single definition of which spans a [`TraceQuery`] selects.

use skein_model::{AttrValue, KeyValue, Span, SpanKind, StatusCode};

use crate::TraceQuery;

/// The keys of [`synthetic_tags`].
const SYNTHETIC_KEYS: [&str; 6] = [
    "span.kind",
    "otel.status_code",
    "error",
    "otel.status_description",
    "otel.scope.name",
    "otel.scope.version",
];

/// One synthetic tag of a span, if it has it.
fn synthetic_tag<'s>(span: &'s Span, key: &str) -> Option<&'s str> {
    match key {
        "span.kind" if span.kind != SpanKind::Unspecified => Some(span.kind.as_str()),
        "otel.status_code" => match span.status.code {
            StatusCode::Unset => None,
            StatusCode::Ok => Some("OK"),
            StatusCode::Error => Some("ERROR"),
        },
        "error" if span.status.code == StatusCode::Error => Some("true"),
        "otel.status_description" if !span.status.message.is_empty() => Some(&span.status.message),
        "otel.scope.name" if !span.scope.name.is_empty() => Some(&span.scope.name),
        "otel.scope.version" if !span.scope.version.is_empty() => Some(&span.scope.version),
        _ => None,
    }
}

/// Tags that Jaeger shows on a span although OTLP carries them as fields, so that a search
/// for `error=true` or `span.kind=server` finds what the trace view shows.
pub fn synthetic_tags(span: &Span) -> Vec<(&'static str, String)> {
    synthetic_tags_of(span).map(|(k, v)| (k, v.to_owned())).collect()
}

/// [`synthetic_tags`] borrowing the values from the span (nothing allocated).
pub fn synthetic_tags_of(span: &Span) -> impl Iterator<Item = (&'static str, &str)> {
    SYNTHETIC_KEYS.iter().filter_map(|k| synthetic_tag(span, k).map(|v| (*k, v)))
}

/// A `key=value` condition, with the value pre-parsed for typed attributes.
#[derive(Debug)]
struct TagCondition<'q> {
    key: &'q str,
    want: &'q str,
    int: Option<i64>,
    float: Option<f64>,
    boolean: Option<bool>,
    synthetic: bool,
}

impl TagCondition<'_> {
    fn value_eq(&self, value: &AttrValue) -> bool {
        match value {
            AttrValue::Str(s) => s == self.want,
            AttrValue::Int(i) => self.int == Some(*i),
            AttrValue::Bool(b) => self.boolean == Some(*b),
            AttrValue::Double(d) => self.float == Some(*d),
            other => other.to_string() == self.want,
        }
    }

    fn in_attrs(&self, attrs: &[KeyValue]) -> bool {
        attrs.iter().any(|kv| kv.key == self.key && self.value_eq(&kv.value))
    }

    fn matches(&self, span: &Span) -> bool {
        self.in_attrs(&span.attributes)
            || self.in_attrs(&span.resource.attributes)
            || span
                .events
                .iter()
                .any(|e| self.in_attrs(&e.attributes) || (self.key == "event" && e.name == self.want))
            || (self.synthetic && synthetic_tag(span, self.key).is_some_and(|v| v == self.want))
    }
}

/// Decides whether one span satisfies every condition of a query.
#[derive(Debug)]
pub struct SpanMatcher<'q> {
    query: &'q TraceQuery,
    tags: Vec<TagCondition<'q>>,
}

impl<'q> SpanMatcher<'q> {
    pub fn new(query: &'q TraceQuery) -> Self {
        let tags = query
            .tags
            .iter()
            .map(|(k, v)| TagCondition {
                key: k,
                want: v,
                int: v.parse().ok(),
                float: v.parse().ok(),
                boolean: v.parse().ok(),
                synthetic: SYNTHETIC_KEYS.contains(&k.as_str()),
            })
            .collect();
        SpanMatcher { query, tags }
    }

    /// The service a span must belong to, if any.
    pub fn service(&self) -> Option<&'q str> {
        self.query.service.as_deref()
    }

    /// The query's tag conditions as an index of tag values sees them (the embedded engine's
    /// postings and Bloom filters, which keep strings as they are, integers in decimal and
    /// booleans as `true`/`false`): per condition its key and every text that a value the
    /// condition accepts is indexed under — the wanted text, and for an integer its canonical
    /// form (`007` finds `7`). A condition also accepts values no such index holds (doubles,
    /// bytes, arrays): a chunk that has such a value for the key must not be ruled out by it.
    /// Derived here, beside [`SpanMatcher::matches`], so that pruning and matching cannot
    /// disagree.
    pub fn indexed_tags(&self) -> Vec<(&'q str, Vec<String>)> {
        self.tags
            .iter()
            .map(|t| {
                let mut texts = vec![t.want.to_owned()];
                if let Some(i) = t.int
                    && i.to_string() != t.want
                {
                    texts.push(i.to_string());
                }
                (t.key, texts)
            })
            .collect()
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
        self.tags.iter().all(|t| t.matches(span))
    }
}
