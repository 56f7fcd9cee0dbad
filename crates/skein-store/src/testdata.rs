//! Builders for spans in tests (the conformance suite and other crates' tests use them).

use std::sync::Arc;

use skein_model::{
    AttrValue, Event, InstrumentationScope, KeyValue, Link, Resource, SERVICE_NAME, Span, SpanId, SpanKind,
    Status, StatusCode, TraceId,
};

/// Base time of generated spans: 2024-01-01T00:00:00Z in unix nanoseconds.
pub const BASE_TIME: u64 = 1_704_067_200_000_000_000;

/// Builds a span with deterministic ids: trace `n` and span `i` give ids that are easy to
/// read in failures (`…0n` and `…0i`).
#[derive(Debug, Clone)]
pub struct SpanBuilder {
    span: Span,
}

impl SpanBuilder {
    pub fn trace_id(n: u8) -> TraceId {
        let mut b = [0u8; 16];
        b[0] = 0xab;
        b[15] = n;
        TraceId::from_bytes(b).expect("non-zero")
    }

    pub fn span_id(i: u8) -> SpanId {
        let mut b = [0u8; 8];
        b[0] = 0xcd;
        b[7] = i;
        SpanId::from_bytes(b).expect("non-zero")
    }

    /// Span `i` of trace `n`, starting at `BASE_TIME + n seconds + i ms`, lasting 10 ms.
    pub fn new(n: u8, i: u8) -> Self {
        let start = BASE_TIME + n as u64 * 1_000_000_000 + i as u64 * 1_000_000;
        SpanBuilder {
            span: Span {
                trace_id: Self::trace_id(n),
                span_id: Self::span_id(i),
                parent_span_id: None,
                trace_state: String::new(),
                flags: 1,
                name: "op".into(),
                kind: SpanKind::Internal,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 10_000_000,
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: Vec::new(),
                dropped_events_count: 0,
                links: Vec::new(),
                dropped_links_count: 0,
                status: Status::default(),
                resource: Arc::new(Resource {
                    attributes: vec![KeyValue::string(SERVICE_NAME, "svc")],
                    ..Default::default()
                }),
                scope: Arc::new(InstrumentationScope::default()),
            },
        }
    }

    pub fn service(mut self, service: &str) -> Self {
        let mut resource = (*self.span.resource).clone();
        resource.attributes.retain(|kv| kv.key != SERVICE_NAME);
        resource.attributes.insert(0, KeyValue::string(SERVICE_NAME, service));
        self.span.resource = Arc::new(resource);
        self
    }

    pub fn resource_attr(mut self, key: &str, value: AttrValue) -> Self {
        let mut resource = (*self.span.resource).clone();
        resource.attributes.push(KeyValue::new(key, value));
        self.span.resource = Arc::new(resource);
        self
    }

    pub fn scope(mut self, name: &str, version: &str) -> Self {
        self.span.scope = Arc::new(InstrumentationScope {
            name: name.into(),
            version: version.into(),
            ..Default::default()
        });
        self
    }

    pub fn name(mut self, name: impl Into<skein_model::Str>) -> Self {
        self.span.name = name.into();
        self
    }

    pub fn kind(mut self, kind: SpanKind) -> Self {
        self.span.kind = kind;
        self
    }

    pub fn parent(mut self, i: u8) -> Self {
        self.span.parent_span_id = Some(Self::span_id(i));
        self
    }

    /// Ids of any value, for generators that need more than 255 traces or spans.
    pub fn ids(mut self, trace: TraceId, span: SpanId, parent: Option<SpanId>) -> Self {
        self.span.trace_id = trace;
        self.span.span_id = span;
        self.span.parent_span_id = parent;
        self
    }

    /// Start and end in unix nanoseconds.
    pub fn times(mut self, start: u64, end: u64) -> Self {
        self.span.start_time_unix_nano = start;
        self.span.end_time_unix_nano = end;
        self
    }

    /// Start offset in ms from the default start, and duration in ms.
    pub fn timing_ms(mut self, offset_ms: u64, duration_ms: u64) -> Self {
        let start = self.span.start_time_unix_nano
            - (self.span.start_time_unix_nano - BASE_TIME) % 1_000_000_000
            + offset_ms * 1_000_000;
        self.span.start_time_unix_nano = start;
        self.span.end_time_unix_nano = start + duration_ms * 1_000_000;
        self
    }

    pub fn attr(mut self, key: &str, value: AttrValue) -> Self {
        self.span.attributes.push(KeyValue::new(key, value));
        self
    }

    pub fn error(mut self, message: &str) -> Self {
        self.span.status = Status { code: StatusCode::Error, message: message.into() };
        self
    }

    pub fn event(mut self, name: &str, offset_ns: u64, attrs: Vec<KeyValue>) -> Self {
        self.span.events.push(Event {
            time_unix_nano: self.span.start_time_unix_nano + offset_ns,
            name: name.into(),
            attributes: attrs,
            dropped_attributes_count: 0,
        });
        self
    }

    pub fn link(mut self, trace: u8, span: u8) -> Self {
        self.span.links.push(Link {
            trace_id: Self::trace_id(trace),
            span_id: Self::span_id(span),
            trace_state: String::new(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            flags: 0,
        });
        self
    }

    pub fn build(self) -> Span {
        self.span
    }
}

/// Three spans that between them use every field and every kind of attribute value: the
/// round-trip case of the span encodings.
pub fn rich_batch() -> Vec<Span> {
    vec![
        SpanBuilder::new(1, 1)
            .service("a")
            .scope("lib", "1.0")
            .attr("s", AttrValue::Str("x".into()))
            .attr("i", AttrValue::Int(-5))
            .attr("big", AttrValue::Int(i64::MIN))
            .attr("d", AttrValue::Double(0.25))
            .attr("b", AttrValue::Bytes(vec![1, 2]))
            .attr("arr", AttrValue::Array(vec![AttrValue::Empty, AttrValue::Bool(true)]))
            .attr("kv", AttrValue::KvList(vec![KeyValue::string("k", "v")]))
            .event("e", 5, vec![KeyValue::string("ek", "ev")])
            .link(2, 3)
            .error("bad")
            .build(),
        SpanBuilder::new(1, 2).service("a").parent(1).kind(SpanKind::Client).build(),
        SpanBuilder::new(2, 1).service("b").build(),
    ]
}

/// `count` one-span traces over several minutes from `base` (ns), one every 397 ms: services
/// `api`, `cart` and `db` in turn, operations `GET /a`, `GET /b` and `SELECT`, SERVER, CLIENT
/// and INTERNAL spans, every seventh failing, durations from 1 ms to about 2 s. Trace ids are
/// numbered from `first`. For the RED pre-aggregates' tests.
pub fn spans_over_minutes(first: u32, count: u32, base: u64) -> Vec<Span> {
    (0..count)
        .map(|n| {
            let start = base + n as u64 * 397_000_000 + 123_456;
            let duration = 1_000_000 + (n as u64 * 7_919_000) % 2_000_000_000;
            let mut b = SpanBuilder::new(1, 1)
                .service(["api", "cart", "db"][n as usize % 3])
                .name(["GET /a", "GET /b", "SELECT"][(n as usize / 3) % 3])
                .kind([SpanKind::Server, SpanKind::Client, SpanKind::Internal][(n as usize / 9) % 3])
                .times(start, start + duration);
            if n % 7 == 0 {
                b = b.error("boom");
            }
            let mut s = b.build();
            let mut id = [0u8; 16];
            id[0] = 0x3e;
            id[12..].copy_from_slice(&(first + n).to_be_bytes());
            s.trace_id = TraceId::from_bytes(id).expect("non-zero");
            s
        })
        .collect()
}

/// The RED pre-aggregates of `spans` counted afresh, for `minutes` and `services`: what a
/// store's `red` must answer.
pub fn red_recount(
    spans: &[Span],
    minutes: &std::ops::Range<u64>,
    services: &[String],
) -> crate::red::RedSummary {
    let mut all = crate::red::RedSummary::default();
    spans.iter().for_each(|s| all.add(s));
    let mut picked = crate::red::RedSummary::default();
    picked.merge_where(&all, minutes, Some(services));
    picked
}
