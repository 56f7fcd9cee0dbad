//! The domain model of Skein: what a trace *is*, independent of any wire or disk format.
//!
//! Owns [`TraceId`], [`SpanId`], [`Span`], [`SpanKind`], [`Status`], [`Resource`],
//! [`InstrumentationScope`], [`AttrValue`], [`Event`], [`Link`] and [`TimeRange`].
//!
//! This crate must never do I/O and never depend on serde: wire formats (OTLP, Jaeger JSON)
//! and disk formats convert to and from these types by hand, in their own crates.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::Arc;

mod ids;

pub use ids::{ParseIdError, SpanId, TraceId};

/// The string type of names, attribute keys and string values: strings of up to 24 bytes
/// (nearly every key and name, most values) live inside it without a heap allocation,
/// which matters at hundreds of thousands of spans per second.
pub type Str = compact_str::CompactString;

/// Attribute keys of the OpenTelemetry semantic conventions too long to be stored inline in
/// a [`Str`]: kept as references to these static strings instead of one heap copy per span.
static LONG_KEYS: [Str; 12] = [
    Str::const_new("http.response.status_code"),
    Str::const_new("http.request.method_original"),
    Str::const_new("db.response.returned_rows"),
    Str::const_new("messaging.destination.name"),
    Str::const_new("messaging.batch.message_count"),
    Str::const_new("messaging.destination.partition.id"),
    Str::const_new("messaging.message.conversation_id"),
    Str::const_new("messaging.consumer.group.name"),
    Str::const_new("gen_ai.usage.input_tokens"),
    Str::const_new("gen_ai.usage.output_tokens"),
    Str::const_new("gen_ai.response.finish_reasons"),
    Str::const_new("process.runtime.description"),
];

/// An attribute key as a [`Str`]: inline when short, a shared static string for the long
/// keys of the semantic conventions, a heap copy otherwise.
pub fn attribute_key(key: &str) -> Str {
    if key.len() > 24
        && let Some(k) = LONG_KEYS.iter().find(|k| k.as_str() == key)
    {
        return k.clone();
    }
    Str::from(key)
}

/// Whether `a` and `b` hold the same bytes, as `a == b` answers, but without a call to
/// `memcmp` for up to 32 bytes (nearly every key, name and repeated value): the OTLP decoder
/// compares each attribute's key and value with the span before's, over a dozen times per
/// span, and under callgrind (400k realistic spans) those calls took 1.2 % of the server's
/// instructions; with this, the decoder's 2.11G instructions became 2.05G. Up to 32 bytes, two
/// to four loads of a word each that together cover both. The chunk encoder's memo of the span
/// before compares with it too (forced inline there: else it was not, and took more).
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    match n {
        0 => true,
        // Bytes 0, n / 2 and n - 1 are every byte.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        17..=32 => {
            word(a, 0) == word(b, 0)
                && word(a, 8) == word(b, 8)
                && word(a, n - 16) == word(b, n - 16)
                && word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
}

/// The resource attribute that names a service.
pub const SERVICE_NAME: &str = "service.name";
/// The service name used when a resource has no `service.name`, as the OTel spec says.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// The value of an attribute: every OTLP `AnyValue` variant, without loss.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// An `AnyValue` with no value set.
    Empty,
    Str(Str),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    KvList(Vec<KeyValue>),
}

impl AttrValue {
    /// Nesting depth: 1 for a scalar, 1 + the deepest element for arrays and kvlists.
    pub fn depth(&self) -> usize {
        match self {
            AttrValue::Array(items) => 1 + items.iter().map(AttrValue::depth).max().unwrap_or(0),
            AttrValue::KvList(kvs) => 1 + kvs.iter().map(|kv| kv.value.depth()).max().unwrap_or(0),
            _ => 1,
        }
    }

    /// The string a person would type to match this value in a search (`key=value`).
    /// Scalars render plainly; arrays and kvlists render as JSON-like text.
    pub fn to_search_string(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Empty => Ok(()),
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            AttrValue::Bytes(b) => {
                for byte in b {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
            AttrValue::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write_nested(f, item)?;
                }
                f.write_str("]")
            }
            AttrValue::KvList(kvs) => {
                f.write_str("{")?;
                for (i, kv) in kvs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{:?}:", kv.key)?;
                    write_nested(f, &kv.value)?;
                }
                f.write_str("}")
            }
        }
    }
}

fn write_nested(f: &mut fmt::Formatter<'_>, value: &AttrValue) -> fmt::Result {
    match value {
        AttrValue::Str(s) => write!(f, "{s:?}"),
        AttrValue::Bytes(_) => write!(f, "\"{value}\""),
        AttrValue::Empty => f.write_str("null"),
        other => write!(f, "{other}"),
    }
}

/// One attribute: a key and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyValue {
    pub key: Str,
    pub value: AttrValue,
}

impl KeyValue {
    pub fn new(key: impl Into<Str>, value: AttrValue) -> Self {
        KeyValue { key: key.into(), value }
    }

    pub fn string(key: impl Into<Str>, value: impl Into<Str>) -> Self {
        KeyValue::new(key, AttrValue::Str(value.into()))
    }
}

/// Looks up an attribute by key (the first one wins, as in OTLP).
pub fn find_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AttrValue> {
    attrs.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

/// The entity that produced the spans: a service instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resource {
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
    pub schema_url: String,
}

impl Resource {
    /// `service.name`, or `unknown_service` when the resource has none.
    pub fn service_name(&self) -> &str {
        match find_attr(&self.attributes, SERVICE_NAME) {
            Some(AttrValue::Str(s)) if !s.is_empty() => s,
            _ => UNKNOWN_SERVICE,
        }
    }
}

/// The instrumentation library that made the spans.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstrumentationScope {
    pub name: String,
    pub version: String,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
    pub schema_url: String,
}

/// What role a span plays in a request, as in OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum SpanKind {
    #[default]
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// All kinds, in OTLP enum order.
    pub const ALL: [SpanKind; 6] = [
        SpanKind::Unspecified,
        SpanKind::Internal,
        SpanKind::Server,
        SpanKind::Client,
        SpanKind::Producer,
        SpanKind::Consumer,
    ];

    /// The OTLP enum number (0 unspecified … 5 consumer).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind with this OTLP enum number.
    pub fn from_code(code: u8) -> Option<SpanKind> {
        SpanKind::ALL.get(code as usize).copied()
    }

    /// The lowercase name used by Jaeger (`span.kind` tag) and query parameters.
    /// `Unspecified` has no name in Jaeger and renders as the empty string.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    /// Parses the lowercase Jaeger name (`server`, `client`, …); also accepts
    /// `unspecified` for the empty kind.
    pub fn parse(s: &str) -> Option<SpanKind> {
        match s.to_ascii_lowercase().as_str() {
            "unspecified" => Some(SpanKind::Unspecified),
            "internal" => Some(SpanKind::Internal),
            "server" => Some(SpanKind::Server),
            "client" => Some(SpanKind::Client),
            "producer" => Some(SpanKind::Producer),
            "consumer" => Some(SpanKind::Consumer),
            _ => None,
        }
    }
}

/// The status code of a span, as in OTLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    /// All codes, in OTLP enum order.
    pub const ALL: [StatusCode; 3] = [StatusCode::Unset, StatusCode::Ok, StatusCode::Error];

    /// The OTLP enum number (0 unset, 1 ok, 2 error).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The status code with this OTLP enum number.
    pub fn from_code(code: u8) -> Option<StatusCode> {
        StatusCode::ALL.get(code as usize).copied()
    }
}

/// The status of a span.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub code: StatusCode,
    pub message: String,
}

/// A timestamped event inside a span (Jaeger calls these logs).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub time_unix_nano: u64,
    pub name: Str,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
}

/// A link from a span to another span, possibly in another trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub trace_state: String,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
    pub flags: u32,
}

/// One span with everything OTLP says about it. The resource and scope are shared between
/// the spans of one batch that came from the same service and library.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None` for a root span.
    pub parent_span_id: Option<SpanId>,
    pub trace_state: String,
    pub flags: u32,
    pub name: Str,
    pub kind: SpanKind,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<KeyValue>,
    pub dropped_attributes_count: u32,
    pub events: Vec<Event>,
    pub dropped_events_count: u32,
    pub links: Vec<Link>,
    pub dropped_links_count: u32,
    pub status: Status,
    pub resource: Arc<Resource>,
    pub scope: Arc<InstrumentationScope>,
}

impl Span {
    /// The span's service (`service.name` of its resource).
    pub fn service_name(&self) -> &str {
        self.resource.service_name()
    }

    /// Duration in nanoseconds; zero when the end is before the start.
    pub fn duration_nanos(&self) -> u64 {
        self.end_time_unix_nano.saturating_sub(self.start_time_unix_nano)
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }
}

/// A half-open range of unix times in nanoseconds: `start <= t < end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl TimeRange {
    /// Every representable time.
    pub const ALL: TimeRange = TimeRange { start_unix_nano: 0, end_unix_nano: u64::MAX };

    pub fn new(start_unix_nano: u64, end_unix_nano: u64) -> Self {
        TimeRange { start_unix_nano, end_unix_nano }
    }

    pub fn contains(&self, t: u64) -> bool {
        self.start_unix_nano <= t && t < self.end_unix_nano
    }

    pub fn is_empty(&self) -> bool {
        self.end_unix_nano <= self.start_unix_nano
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `same_bytes` answers as `==` for every length up to 40 and a difference at any place
    /// (a word compared wrongly, or a byte no load covers, would answer `true` for one).
    #[test]
    fn same_bytes_answers_as_equality_at_every_length_and_place() {
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "{n} bytes equal");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x40;
                assert!(!same_bytes(&a, &b), "{n} bytes differing at {at}");
                assert!(!same_bytes(&b, &a), "{n} bytes differing at {at}");
            }
            let mut longer = a.clone();
            longer.push(0);
            assert!(!same_bytes(&a, &longer) && !same_bytes(&longer, &a), "{n} and {} bytes", n + 1);
        }
    }

    #[test]
    fn long_semantic_convention_keys_are_shared_not_copied() {
        let k = attribute_key("http.response.status_code");
        assert_eq!(k, "http.response.status_code");
        assert!(!k.is_heap_allocated(), "a static string");
        let other = attribute_key("app.a.key.longer.than.twenty.four");
        assert_eq!(other, "app.a.key.longer.than.twenty.four");
        assert!(other.is_heap_allocated());
        assert_eq!(attribute_key("url.path"), "url.path");
        for k in &LONG_KEYS {
            assert!(k.len() > 24, "{k} would be inline anyway");
        }
    }

    #[test]
    fn otlp_codes_round_trip_and_follow_the_otlp_enums() {
        for (i, k) in SpanKind::ALL.iter().enumerate() {
            assert_eq!((k.code() as usize, SpanKind::from_code(k.code())), (i, Some(*k)));
        }
        for (i, c) in StatusCode::ALL.iter().enumerate() {
            assert_eq!((c.code() as usize, StatusCode::from_code(c.code())), (i, Some(*c)));
        }
        assert_eq!((SpanKind::Client.code(), StatusCode::Error.code()), (3, 2));
        assert_eq!((SpanKind::from_code(6), StatusCode::from_code(3)), (None, None));
    }

    #[test]
    fn depth_counts_nesting() {
        let scalar = AttrValue::Int(1);
        assert_eq!(scalar.depth(), 1);
        let nested = AttrValue::Array(vec![AttrValue::KvList(vec![KeyValue::new(
            "k",
            AttrValue::Array(vec![AttrValue::Bool(true)]),
        )])]);
        assert_eq!(nested.depth(), 4);
        assert_eq!(AttrValue::Array(vec![]).depth(), 1);
    }

    #[test]
    fn display_renders_nested_values_as_json_like_text() {
        let v = AttrValue::KvList(vec![
            KeyValue::string("a", "x\"y"),
            KeyValue::new("b", AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Empty])),
            KeyValue::new("c", AttrValue::Bytes(vec![0xde, 0xad])),
        ]);
        assert_eq!(v.to_string(), r#"{"a":"x\"y","b":[1,null],"c":"dead"}"#);
        assert_eq!(AttrValue::Double(1.5).to_string(), "1.5");
    }

    #[test]
    fn service_name_falls_back_to_unknown_service() {
        let mut r = Resource::default();
        assert_eq!(r.service_name(), "unknown_service");
        r.attributes.push(KeyValue::string(SERVICE_NAME, "shop"));
        assert_eq!(r.service_name(), "shop");
    }

    #[test]
    fn span_kind_round_trips_through_its_name() {
        for kind in SpanKind::ALL {
            let name = if kind == SpanKind::Unspecified { "unspecified" } else { kind.as_str() };
            assert_eq!(SpanKind::parse(name), Some(kind));
        }
        assert_eq!(SpanKind::parse("bogus"), None);
    }
}
