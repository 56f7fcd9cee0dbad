//! The direct decoder gives exactly what prost and [`to_model`] give, for valid requests,
//! for requests with rejected spans and for corrupted bodies.

use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

use super::direct::{self, Fallback};
use super::*;
use crate::proto::resource as pr;

type Value = pc::any_value::Value;

fn value() -> impl Strategy<Value = Option<Value>> {
    let leaf = prop_oneof![
        10 => Just(None),
        30 => "[a-z0-9 /.-]{0,40}".prop_map(|s| Some(Value::StringValue(s))),
        5 => any::<bool>().prop_map(|b| Some(Value::BoolValue(b))),
        10 => any::<i64>().prop_map(|i| Some(Value::IntValue(i))),
        5 => (-1e12..1e12f64).prop_map(|d| Some(Value::DoubleValue(d))),
        5 => vec(any::<u8>(), 0..24).prop_map(|b| Some(Value::BytesValue(b))),
        // Never valid in traces: the whole span is rejected.
        1 => (0..3i32).prop_map(|i| Some(Value::StringValueStrindex(i))),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|values| Some(Value::ArrayValue(pc::ArrayValue {
                values: values.into_iter().map(|value| pc::AnyValue { value }).collect(),
            }))),
            vec((key(), inner), 0..4).prop_map(|kvs| Some(Value::KvlistValue(pc::KeyValueList {
                values: kvs.into_iter().map(|(k, v)| kv(k, v)).collect(),
            }))),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["http.request.method", "http.response.status_code", "url.path", "k"])
            .prop_map(String::from),
        1 => "[a-z._]{0,40}",
    ]
}

fn kv(key: String, value: Option<Value>) -> pc::KeyValue {
    // A KeyValue without a value and one with an empty AnyValue are both legal.
    let value = value.map(|v| pc::AnyValue { value: Some(v) });
    pc::KeyValue { key, value, ..Default::default() }
}

fn attributes() -> impl Strategy<Value = Vec<pc::KeyValue>> {
    vec((key(), value()), 0..7).prop_map(|kvs| kvs.into_iter().map(|(k, v)| kv(k, v)).collect())
}

fn id(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        60 => vec(any::<u8>(), len),
        1 => Just(vec![0; len]),
        1 => vec(any::<u8>(), 0..20),
    ]
}

fn span() -> impl Strategy<Value = pt::Span> {
    let parent = prop_oneof![Just(Vec::new()), Just(vec![0; 8]), id(8)];
    let kind = prop_oneof![30 => 0..6i32, 1 => 6..9i32];
    let event = (any::<u64>(), "[a-z]{0,10}", attributes(), 0..3u32).prop_map(|(t, name, attributes, d)| {
        pt::span::Event { time_unix_nano: t, name, attributes, dropped_attributes_count: d }
    });
    let link = (id(16), id(8), "[a-z=]{0,6}", attributes(), any::<u32>()).prop_map(
        |(trace_id, span_id, trace_state, attributes, flags)| pt::span::Link {
            trace_id,
            span_id,
            trace_state,
            attributes,
            dropped_attributes_count: 1,
            flags,
        },
    );
    let code = prop_oneof![30 => 0..3i32, 1 => 3..6i32];
    let status = prop::option::of((code, "[a-z ]{0,10}"))
        .prop_map(|s| s.map(|(code, message)| pt::Status { code, message }));
    (
        (id(16), id(8), parent, "[a-z=,]{0,10}", "[A-Za-z /{}]{0,40}", kind, any::<u64>(), any::<u64>()),
        (attributes(), vec(event, 0..3), vec(link, 0..2), status, any::<u32>(), 0..3u32),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent_span_id, trace_state, name, kind, start, end),
                (attributes, events, links, status, flags, dropped),
            )| pt::Span {
                trace_id,
                span_id,
                trace_state,
                parent_span_id,
                flags,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                dropped_attributes_count: dropped,
                events,
                dropped_events_count: dropped,
                links,
                dropped_links_count: dropped,
                status,
            },
        )
}

fn request() -> impl Strategy<Value = ExportTraceServiceRequest> {
    let scope =
        (prop::option::of(("[a-z.]{0,12}", "[0-9.]{0,6}", attributes())), vec(span(), 0..6), "[a-z:/]{0,8}")
            .prop_map(|(scope, spans, schema_url)| pt::ScopeSpans {
                scope: scope.map(|(name, version, attributes)| pc::InstrumentationScope {
                    name,
                    version,
                    attributes,
                    dropped_attributes_count: 0,
                }),
                spans,
                schema_url,
            });
    let resource_spans = (prop::option::of((attributes(), 0..2u32)), vec(scope, 1..3), "[a-z:/]{0,8}")
        .prop_map(|(resource, scope_spans, schema_url)| pt::ResourceSpans {
            resource: resource.map(|(attributes, dropped)| pr::Resource {
                attributes,
                dropped_attributes_count: dropped,
                ..Default::default()
            }),
            scope_spans,
            schema_url,
        });
    vec(resource_spans, 1..3).prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => Just(Limits::default()),
        1 => (1..5usize, 4..48usize, 1..8usize).prop_map(|(d, b, n)| Limits {
            max_attribute_depth: d,
            max_attribute_value_bytes: b,
            max_attributes: n,
        }),
    ]
}

/// The general path: prost, then the conversion.
fn general(body: &[u8], limits: &Limits) -> Result<ConvertedBatch, DecodeError> {
    Ok(to_model(decode_protobuf(body)?, limits))
}

fn assert_same(direct: Result<ConvertedBatch, DecodeError>, general: Result<ConvertedBatch, DecodeError>) {
    match (direct, general) {
        (Ok(d), Ok(g)) => {
            assert_eq!(d.spans, g.spans);
            assert_eq!((d.rejected, d.errors), (g.rejected, g.errors));
        }
        (Err(d), Err(g)) => assert_eq!(d.to_string(), g.to_string()),
        (d, g) => panic!("direct {d:?} but general {g:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn same_result_as_prost_and_to_model(request in request(), limits in limits()) {
        let body = request.encode_to_vec();
        let spans: usize = request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        prop_assert_eq!(direct::count_spans(&body), spans, "the count that sizes the decoded spans");
        assert_same(decode_protobuf_to_model(&body, &limits), general(&body, &limits));
        // A decoder that shares resources and scopes decodes the same spans, twice over.
        let sharing = crate::ProtobufDecoder::new(limits.clone());
        for _ in 0..2 {
            assert_same(sharing.decode(&body), general(&body, &limits));
        }
        // When the direct decoder answers by itself, it found no span to reject.
        if let Ok(spans) = direct::decode(&body, &limits, None) {
            let g = general(&body, &limits).unwrap();
            prop_assert_eq!(g.rejected, 0);
            prop_assert_eq!(spans, g.spans);
        }
    }

    #[test]
    fn same_result_for_corrupted_bodies(
        request in request(),
        limits in limits(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0..4u8), 1..4),
    ) {
        let mut body = request.encode_to_vec();
        for (at, byte, edit) in edits {
            if body.is_empty() {
                break;
            }
            let i = at.index(body.len());
            match edit {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                2 => { body.remove(i); }
                _ => body.truncate(i),
            }
        }
        assert_same(decode_protobuf_to_model(&body, &limits), general(&body, &limits));
    }
}

/// A request like the ones SDKs send: every span valid, so the direct path answers.
fn typical() -> ExportTraceServiceRequest {
    let attr = |k: &str, v: Value| kv(k.into(), Some(v));
    let span = |i: u8| pt::Span {
        trace_id: vec![7; 16],
        span_id: vec![i + 1; 8],
        parent_span_id: if i == 0 { Vec::new() } else { vec![1; 8] },
        name: "GET /api/cart".into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_002_000_000,
        attributes: vec![
            attr("http.request.method", Value::StringValue("GET".into())),
            attr("http.response.status_code", Value::IntValue(200)),
            attr(
                "url.full",
                Value::StringValue("https://shop.example.com/api/cart?user=42&x=a-long-value".into()),
            ),
            attr(
                "tags",
                Value::ArrayValue(pc::ArrayValue {
                    values: vec![pc::AnyValue { value: Some(Value::BoolValue(true)) }],
                }),
            ),
        ],
        events: vec![pt::span::Event { time_unix_nano: 5, name: "retry".into(), ..Default::default() }],
        links: vec![pt::span::Link { trace_id: vec![8; 16], span_id: vec![9; 8], ..Default::default() }],
        status: Some(pt::Status { code: 2, message: "boom".into() }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![pt::ResourceSpans {
            resource: Some(pr::Resource {
                attributes: vec![attr("service.name", Value::StringValue("cart".into()))],
                ..Default::default()
            }),
            scope_spans: vec![pt::ScopeSpans {
                scope: Some(pc::InstrumentationScope { name: "skein-otel".into(), ..Default::default() }),
                spans: (0..3).map(span).collect(),
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[test]
fn valid_requests_take_the_direct_path() {
    let request = typical();
    let body = request.encode_to_vec();
    let limits = Limits::default();
    let spans = direct::decode(&body, &limits, None).expect("a valid request needs no fallback");
    assert_eq!(spans.len(), 3);
    assert_eq!(spans, to_model(request, &limits).spans);
}

#[test]
fn a_sharing_decoder_hands_out_one_resource_and_scope_for_the_same_bytes() {
    let attr = |k: &str, v: Value| kv(k.into(), Some(v));
    let decoder = crate::ProtobufDecoder::new(Limits::default());
    let limits = Limits::default();
    let body = typical().encode_to_vec();
    let first = decoder.decode(&body).unwrap().spans;
    let second = decoder.decode(&body).unwrap().spans;
    // The same spans as decoded alone, each request's resource and scope the same `Arc`.
    assert_eq!(first, decode_protobuf_to_model(&body, &limits).unwrap().spans);
    assert_eq!(first, second);
    for s in first.iter().chain(&second) {
        assert!(Arc::ptr_eq(&s.resource, &first[0].resource));
        assert!(Arc::ptr_eq(&s.scope, &first[0].scope));
    }
    // Another resource, another scope version, another schema URL: each its own.
    let mut other = typical();
    other.resource_spans[0].resource.as_mut().unwrap().attributes[0] =
        attr("service.name", Value::StringValue("checkout".into()));
    let mut version = typical();
    version.resource_spans[0].scope_spans[0].scope.as_mut().unwrap().version = "2".into();
    let mut schema = typical();
    schema.resource_spans[0].schema_url = "https://opentelemetry.io/schemas/1.31.0".into();
    for (request, new_resource, new_scope) in
        [(other, true, false), (version, false, true), (schema, true, false)]
    {
        let spans = decoder.decode(&request.encode_to_vec()).unwrap().spans;
        assert_eq!(spans, to_model(request, &limits).spans);
        assert_eq!(!Arc::ptr_eq(&spans[0].resource, &first[0].resource), new_resource);
        assert_eq!(!Arc::ptr_eq(&spans[0].scope, &first[0].scope), new_scope);
    }
    // A client that sends a new resource with every request does not grow it without bound:
    // the table is emptied when full, and every request still decodes as alone.
    for i in 0..2100 {
        let mut request = typical();
        request.resource_spans[0].resource.as_mut().unwrap().attributes[0] =
            attr("service.name", Value::StringValue(format!("service-{i}")));
        let body = request.encode_to_vec();
        assert_eq!(decoder.decode(&body).unwrap().spans, to_model(request, &limits).spans);
    }
    assert!(decoder.known_resources() <= 1024, "{} kept", decoder.known_resources());
}

#[test]
fn fields_in_any_order_are_read_like_prost_reads_them() {
    use prost::encoding::{message, string};
    let request = typical();
    let rs = &request.resource_spans[0];
    let ss = &rs.scope_spans[0];
    // The scope's schema URL and the resource after the spans that need them.
    let mut scope_spans = Vec::new();
    for span in &ss.spans {
        message::encode(2, span, &mut scope_spans);
    }
    string::encode(3, &ss.schema_url, &mut scope_spans);
    message::encode(1, ss.scope.as_ref().unwrap(), &mut scope_spans);
    let mut resource_spans = Vec::new();
    prost::encoding::bytes::encode(2, &scope_spans, &mut resource_spans);
    message::encode(1, rs.resource.as_ref().unwrap(), &mut resource_spans);
    let mut body = Vec::new();
    prost::encoding::bytes::encode(1, &resource_spans, &mut body);

    let limits = Limits::default();
    let spans = direct::decode(&body, &limits, None).expect("field order needs no fallback");
    assert_eq!(spans, to_model(request, &limits).spans);
}

#[test]
fn what_the_direct_path_leaves_to_the_general_one() {
    let limits = Limits::default();
    let mut invalid = typical();
    invalid.resource_spans[0].scope_spans[0].spans[1].span_id = vec![0; 8];
    let merged = status_twice();
    // The same request twice over is just two resources' worth of spans: no merging.
    let mut twice = typical().encode_to_vec();
    twice.extend_from_slice(&twice.clone());

    assert_eq!(direct::decode(&invalid.encode_to_vec(), &limits, None), Err(Fallback));
    assert_eq!(direct::decode(&merged, &limits, None), Err(Fallback));
    assert_eq!(direct::decode(&twice, &limits, None).map(|s| s.len()), Ok(6));
    // Protobuf merges the two statuses (the second's message, its code where set) ...
    let span = &general(&merged, &limits).unwrap().spans[0];
    assert_eq!((span.status.code, span.status.message.as_str()), (StatusCode::Error, "second"));
    // ... and the direct decoder's answer is the general one, for these and a broken body.
    for body in [invalid.encode_to_vec(), merged, twice, vec![0x0a, 0xff, 0xff]] {
        assert_same(decode_protobuf_to_model(&body, &limits), general(&body, &limits));
    }
}

/// A request whose first span carries its status field twice.
fn status_twice() -> Vec<u8> {
    use prost::encoding::{bytes, message};
    let request = typical();
    let mut span = request.resource_spans[0].scope_spans[0].spans[0].encode_to_vec();
    message::encode(15, &pt::Status { code: 0, message: "second".into() }, &mut span);
    let mut scope_spans = Vec::new();
    bytes::encode(2, &span, &mut scope_spans);
    let mut resource_spans = Vec::new();
    bytes::encode(2, &scope_spans, &mut resource_spans);
    let mut body = Vec::new();
    bytes::encode(1, &resource_spans, &mut body);
    body
}

#[test]
fn nesting_prost_refuses_is_refused_whatever_the_depth_limit() {
    let limits = Limits { max_attribute_depth: 1000, ..Limits::default() };
    for depth in [30, 32, 33, 40] {
        let mut value = Value::StringValue("leaf".into());
        for _ in 1..depth {
            value = Value::KvlistValue(pc::KeyValueList { values: vec![kv("k".into(), Some(value))] });
        }
        let mut request = typical();
        let event = &mut request.resource_spans[0].scope_spans[0].spans[0].events[0];
        event.attributes = vec![kv("deep".into(), Some(value))];
        let body = request.encode_to_vec();
        let general = general(&body, &limits);
        assert_eq!(general.is_err(), depth > 32, "prost's own limit, depth {depth}");
        assert_same(decode_protobuf_to_model(&body, &limits), general);
    }
}

/// The `KeyValue`s the direct decoder reads without its field loop (key, then one string,
/// boolean, integer or double, every length in one byte) and their near misses (lengths of
/// two bytes, integers of many, a boolean of 2, an empty value, the value before the key, a
/// value with a field after it, a double of 7 bytes, a key or value not UTF-8 or over the
/// limit) decode as prost decodes them, to the same spans or the same rejection.
#[test]
fn key_values_of_every_shape_decode_as_prost_decodes_them() {
    use prost::encoding::{bytes, message};
    let long = |n: usize| vec![b'v'; n];
    let value = |tag: u8, payload: &[u8]| [&[tag][..], payload].concat();
    let string = |s: &[u8]| {
        let mut v = Vec::new();
        bytes::encode(1, &s.to_vec(), &mut v);
        v
    };
    let any_values: Vec<Vec<u8>> = vec![
        string(b"GET"),
        string(b""),
        string(&long(127)),
        string(&long(128)),
        string(&long(300)),
        string(&[0xff, 0xfe]),
        value(0x10, &[1]),
        value(0x10, &[0]),
        value(0x10, &[2]),
        value(0x10, &[0x81, 0x00]),
        value(0x18, &[5]),
        value(0x18, &[0x80, 0x01]),
        value(0x18, &[0xff; 9].iter().copied().chain([0x01]).collect::<Vec<_>>()),
        value(0x18, &[0xff; 11]),
        value(0x21, &1.5f64.to_le_bytes()),
        value(0x21, &[0; 7]),
        Vec::new(),
        [string(b"a"), value(0x18, &[5])].concat(),
        [string(b"a"), string(b"b")].concat(),
    ];
    let keys: Vec<Vec<u8>> = vec![b"http.method".to_vec(), Vec::new(), long(127), long(200), vec![0xc0]];
    let mut cases = Vec::new();
    for any in &any_values {
        for key in &keys {
            let (mut k, mut v) = (Vec::new(), Vec::new());
            bytes::encode(1, key, &mut k);
            bytes::encode(2, any, &mut v);
            cases.push([k.clone(), v.clone()].concat());
            cases.push([v.clone(), k.clone()].concat());
            cases.push([k.clone(), v.clone(), value(0x18, &[1])].concat());
        }
    }
    let base = typical().resource_spans[0].scope_spans[0].spans[0].encode_to_vec();
    for kv in cases {
        let mut span = base.clone();
        bytes::encode(9, &kv, &mut span);
        let mut scope_spans = Vec::new();
        bytes::encode(2, &span, &mut scope_spans);
        let mut resource_spans = Vec::new();
        bytes::encode(2, &scope_spans, &mut resource_spans);
        message::encode(1, typical().resource_spans[0].resource.as_ref().unwrap(), &mut resource_spans);
        let mut body = Vec::new();
        bytes::encode(1, &resource_spans, &mut body);
        for limits in [Limits::default(), Limits { max_attribute_value_bytes: 100, ..Limits::default() }] {
            assert_same(decode_protobuf_to_model(&body, &limits), general(&body, &limits));
        }
    }
}
