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

    /// Whether [`SpanMatcher::matches`] reads span attribute `key`: a span with only those of
    /// its attributes (and its events when [`SpanMatcher::reads_events`]) matches as it does
    /// whole, so a store may build only them to match (the embedded engine's search does).
    pub fn reads_attribute(&self, key: &str) -> bool {
        self.tags.iter().any(|t| t.key == key)
    }

    /// Whether [`SpanMatcher::matches`] reads a span's events (their names and attributes).
    pub fn reads_events(&self) -> bool {
        !self.tags.is_empty()
    }

    /// Per tag condition, in order, the text a span that meets it carries verbatim as a string:
    /// as the string value of a span, resource or event attribute under the condition's key
    /// or, for key `event`, as an event's name — or `None` when the condition can be met
    /// otherwise too (by a typed value whose text the wanted one is — a number, a boolean,
    /// bytes as hex, an array or a list — or by a synthetic tag). A store that finds a
    /// condition's text nowhere among some spans' strings (their resources' included) knows
    /// none of those spans matches, without building them. Derived here, beside
    /// [`SpanMatcher::matches`], so that the two cannot disagree.
    pub fn verbatim_texts(&self) -> Vec<(&'q str, Option<&'q str>)> {
        self.tags
            .iter()
            .map(|t| {
                let w = t.want;
                let typed = t.int.is_some() || t.float.is_some() || t.boolean.is_some();
                // `AttrValue`'s text of bytes is lowercase hex (and of no bytes, empty); of an
                // array or a list, it starts with its bracket.
                let bytes_text = w.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                let nested = w.starts_with('[') || w.starts_with('{');
                let verbatim = !(t.synthetic || typed || bytes_text || nested);
                (t.key, verbatim.then_some(w))
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

#[cfg(test)]
mod tests {
    use skein_model::{AttrValue, KeyValue, SpanKind};

    use super::*;
    use crate::testdata::SpanBuilder;

    /// A span cut down to what a matcher reads (the span attributes its conditions name, the
    /// events when it reads them) matches every query as the whole span does: conditions on
    /// span, resource and event attributes, event names, synthetic tags, service, operation,
    /// and ones that match nothing.
    #[test]
    fn a_span_with_only_what_a_matcher_reads_matches_as_the_whole_span_does() {
        let span = SpanBuilder::new(1, 1)
            .service("shop")
            .resource_attr("k8s.pod.name", AttrValue::Str("shop-1".into()))
            .name("GET /cart")
            .kind(SpanKind::Server)
            .attr("http.route", AttrValue::Str("/cart".into()))
            .attr("n", AttrValue::Int(7))
            .attr("client.address", AttrValue::Str("10.0.0.1".into()))
            .event("exception", 5, vec![KeyValue::string("exception.type", "Panic")])
            .error("boom")
            .build();
        let tags: [&[(&str, &str)]; 12] = [
            &[],
            &[("http.route", "/cart")],
            &[("n", "7")],
            &[("n", "007")],
            &[("client.address", "10.0.0.1"), ("n", "7")],
            &[("client.address", "10.0.0.1"), ("n", "8")],
            &[("exception.type", "Panic")],
            &[("event", "exception")],
            &[("k8s.pod.name", "shop-1")],
            &[("span.kind", "server"), ("error", "true")],
            &[("otel.status_description", "boom")],
            &[("client.address", "absent")],
        ];
        let mut matched = 0;
        for tags in tags {
            for (service, operation) in
                [(None, None), (Some("shop"), Some("GET /cart")), (Some("cart"), None)]
            {
                let q = TraceQuery {
                    service: service.map(str::to_owned),
                    operation: operation.map(str::to_owned),
                    tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    ..TraceQuery::default()
                };
                let m = SpanMatcher::new(&q);
                let mut cut = span.clone();
                cut.attributes.retain(|kv| m.reads_attribute(&kv.key));
                if !m.reads_events() {
                    cut.events.clear();
                }
                assert_eq!(m.matches(&cut), m.matches(&span), "{q:?}");
                matched += usize::from(m.matches(&span));
            }
        }
        assert_eq!(
            matched,
            2 * 10,
            "each query matches the whole span, but in another service or for an absent value"
        );
    }

    /// The strings a span carries that [`SpanMatcher::verbatim_texts`] speaks of: string
    /// values of its, its resource's and its events' attributes, and its events' names.
    fn strings_of(span: &Span) -> Vec<(String, String)> {
        let attrs = span
            .attributes
            .iter()
            .chain(&span.resource.attributes)
            .chain(span.events.iter().flat_map(|e| &e.attributes));
        let mut out: Vec<(String, String)> = attrs
            .filter_map(|kv| match &kv.value {
                AttrValue::Str(s) => Some((kv.key.to_string(), s.to_string())),
                _ => None,
            })
            .collect();
        out.extend(span.events.iter().map(|e| ("event".to_owned(), e.name.to_string())));
        out
    }

    /// A span that a query matches carries, for every condition with a verbatim text, that
    /// text as a string under the condition's key: typed values (numbers, booleans, bytes,
    /// arrays, lists) whose text is wanted, synthetic tags, resource and event attributes and
    /// event names included. Conditions that typed values or synthetic tags can meet have none.
    #[test]
    fn a_matching_span_carries_every_verbatim_text_as_a_string() {
        let span = SpanBuilder::new(1, 1)
            .service("shop")
            .resource_attr("k8s.pod.name", AttrValue::Str("shop-1".into()))
            .kind(SpanKind::Server)
            .attr("client.address", AttrValue::Str("10.0.0.1".into()))
            .attr("n", AttrValue::Int(7))
            .attr("ratio", AttrValue::Double(0.5))
            .attr("cached", AttrValue::Bool(true))
            .attr("blob", AttrValue::Bytes(vec![0xab, 0x01]))
            .attr("list", AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Int(2)]))
            .attr("map", AttrValue::KvList(vec![KeyValue::string("a", "b")]))
            .attr("empty", AttrValue::Empty)
            .attr("word", AttrValue::Str("deadbeef".into()))
            .event("exception", 5, vec![KeyValue::string("exception.type", "Panic")])
            .error("boom")
            .build();
        let strings = strings_of(&span);
        let conditions = [
            ("client.address", "10.0.0.1", true),
            ("k8s.pod.name", "shop-1", true),
            ("exception.type", "Panic", true),
            ("event", "exception", true),
            ("n", "7", false),
            ("n", "007", false),
            ("ratio", "0.5", false),
            ("cached", "true", false),
            ("blob", "ab01", false),
            ("list", "[1,2]", false),
            ("map", "{\"a\":\"b\"}", false),
            ("empty", "", false),
            ("word", "deadbeef", false),
            ("span.kind", "server", false),
            ("error", "true", false),
            ("otel.status_description", "boom", false),
            ("client.address", "10.0.0.2", true),
        ];
        let mut met = 0;
        for (key, want, verbatim) in conditions {
            let q = TraceQuery { tags: [(key.to_owned(), want.to_owned())].into(), ..TraceQuery::default() };
            let m = SpanMatcher::new(&q);
            let texts = m.verbatim_texts();
            assert_eq!(texts, vec![(key, verbatim.then_some(want))], "{key}={want}");
            if m.matches(&span) {
                met += 1;
                if let Some(text) = texts[0].1 {
                    assert!(strings.contains(&(key.to_owned(), text.to_owned())), "{key}={want}");
                }
            }
        }
        assert_eq!(met, conditions.len() - 1, "every condition but the absent address is met");
    }
}
