use expect_test::{Expect, expect};

use super::*;
use crate::proto::resource as pr;
use crate::to_traces_data;

fn kv(key: &str, v: pc::any_value::Value) -> pc::KeyValue {
    pc::KeyValue { key: key.into(), value: Some(pc::AnyValue { value: Some(v) }), ..Default::default() }
}

fn s(v: &str) -> pc::any_value::Value {
    pc::any_value::Value::StringValue(v.into())
}

/// A span that uses every OTLP field and every `AnyValue` variant.
fn rich_request() -> ExportTraceServiceRequest {
    use pc::any_value::Value;
    let span = pt::Span {
        trace_id: (1..=16).collect(),
        span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
        trace_state: "vendor=abc".into(),
        parent_span_id: vec![9, 9, 9, 9, 9, 9, 9, 9],
        flags: 0x301,
        name: "GET /cart".into(),
        kind: pt::span::SpanKind::Server as i32,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        attributes: vec![
            kv("str", s("v")),
            kv("bool", Value::BoolValue(true)),
            kv("int", Value::IntValue(i64::MAX)),
            kv("double", Value::DoubleValue(2.5)),
            kv("bytes", Value::BytesValue(vec![0, 255])),
            kv(
                "array",
                Value::ArrayValue(pc::ArrayValue {
                    values: vec![
                        pc::AnyValue { value: Some(Value::IntValue(1)) },
                        pc::AnyValue { value: None },
                    ],
                }),
            ),
            kv("kvlist", Value::KvlistValue(pc::KeyValueList { values: vec![kv("inner", s("x"))] })),
        ],
        dropped_attributes_count: 3,
        events: vec![pt::span::Event {
            time_unix_nano: 1_700_000_000_100_000_000,
            name: "exception".into(),
            attributes: vec![kv("exception.message", s("boom"))],
            dropped_attributes_count: 1,
        }],
        dropped_events_count: 4,
        links: vec![pt::span::Link {
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            trace_state: "k=v".into(),
            attributes: vec![kv("link.kind", s("batch"))],
            dropped_attributes_count: 2,
            flags: 1,
        }],
        dropped_links_count: 5,
        status: Some(pt::Status { message: "bad".into(), code: pt::status::StatusCode::Error as i32 }),
    };
    ExportTraceServiceRequest {
        resource_spans: vec![pt::ResourceSpans {
            resource: Some(pr::Resource {
                attributes: vec![kv("service.name", s("cart"))],
                dropped_attributes_count: 6,
                entity_refs: vec![],
            }),
            scope_spans: vec![pt::ScopeSpans {
                scope: Some(pc::InstrumentationScope {
                    name: "skein-otel".into(),
                    version: "0.1.0".into(),
                    attributes: vec![kv("scope.attr", s("y"))],
                    dropped_attributes_count: 7,
                }),
                spans: vec![span],
                schema_url: "https://opentelemetry.io/schemas/1.30.0".into(),
            }],
            schema_url: "https://opentelemetry.io/schemas/1.29.0".into(),
        }],
    }
}

#[test]
fn every_field_survives_a_round_trip() {
    let req = rich_request();
    let batch = to_model(req.clone(), &Limits::default());
    assert_eq!(batch.rejected, 0, "{:?}", batch.errors);
    assert_eq!(batch.spans.len(), 1);
    let span = &batch.spans[0];
    assert_eq!(span.service_name(), "cart");
    assert_eq!(span.parent_span_id.unwrap().to_hex(), "0909090909090909");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.status.code, StatusCode::Error);
    let back = to_traces_data(&batch.spans);
    assert_eq!(back.resource_spans, req.resource_spans);
}

fn check_rejected(mutate: impl FnOnce(&mut pt::Span), expect: Expect) {
    let mut req = rich_request();
    mutate(&mut req.resource_spans[0].scope_spans[0].spans[0]);
    let batch = to_model(req, &Limits::default());
    assert!(batch.spans.is_empty());
    assert_eq!(batch.rejected, 1);
    expect.assert_eq(&batch.error_message());
}

#[test]
fn rejects_bad_ids() {
    check_rejected(
        |s| s.trace_id = vec![1, 2, 3, 4],
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: invalid trace_id "01020304": expected 16 bytes, found 4"#
        ]],
    );
    check_rejected(
        |s| s.trace_id = vec![0; 16],
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: invalid trace_id "00000000000000000000000000000000": all zero bytes"#
        ]],
    );
    check_rejected(
        |s| s.span_id = vec![],
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: invalid span_id "": expected 8 bytes, found 0"#
        ]],
    );
    check_rejected(
        |s| s.parent_span_id = vec![1; 9],
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: invalid parent_span_id "010101010101010101": expected 8 bytes, found 9"#
        ]],
    );
    check_rejected(
        |s| s.links[0].span_id = vec![0; 8],
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: span 0102030405060708 of trace 0102030405060708090a0b0c0d0e0f10: links[0] invalid span_id "0000000000000000": all zero bytes"#
        ]],
    );
}

#[test]
fn all_zero_parent_means_root() {
    let mut req = rich_request();
    req.resource_spans[0].scope_spans[0].spans[0].parent_span_id = vec![0; 8];
    let batch = to_model(req, &Limits::default());
    assert!(batch.spans[0].is_root());
}

#[test]
fn rejects_values_beyond_limits() {
    fn nested(depth: usize) -> pc::AnyValue {
        if depth == 1 {
            return pc::AnyValue { value: Some(s("leaf")) };
        }
        pc::AnyValue {
            value: Some(pc::any_value::Value::ArrayValue(pc::ArrayValue { values: vec![nested(depth - 1)] })),
        }
    }
    check_rejected(
        |s| {
            s.attributes.push(pc::KeyValue {
                key: "deep".into(),
                value: Some(nested(9)),
                ..Default::default()
            })
        },
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: span 0102030405060708 of trace 0102030405060708090a0b0c0d0e0f10: attribute "deep": value nested deeper than the limit of 8 levels"#
        ]],
    );
    check_rejected(
        |sp| sp.attributes.push(kv("huge", s(&"x".repeat(64 * 1024 + 1)))),
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: span 0102030405060708 of trace 0102030405060708090a0b0c0d0e0f10: attribute "huge": value is 65537 bytes, over the limit of 65536 bytes"#
        ]],
    );
    check_rejected(
        |s| s.kind = 42,
        expect![[
            r#"resource_spans[0].scope_spans[0].spans[0]: span 0102030405060708 of trace 0102030405060708090a0b0c0d0e0f10: unknown span kind 42"#
        ]],
    );
    // Exactly at the limit is fine.
    let mut req = rich_request();
    req.resource_spans[0].scope_spans[0].spans[0].attributes.push(pc::KeyValue {
        key: "deep".into(),
        value: Some(nested(8)),
        ..Default::default()
    });
    assert_eq!(to_model(req, &Limits::default()).rejected, 0);
}

#[test]
fn partial_batches_keep_the_valid_spans() {
    let mut req = rich_request();
    let spans = &mut req.resource_spans[0].scope_spans[0].spans;
    let good = spans[0].clone();
    for i in 0..14u8 {
        let mut bad = good.clone();
        bad.span_id = vec![i];
        spans.push(bad);
    }
    let batch = to_model(req, &Limits::default());
    assert_eq!(batch.spans.len(), 1);
    assert_eq!(batch.rejected, 14);
    assert!(batch.error_message().ends_with("; and 4 more rejected spans"), "{}", batch.error_message());
}

#[test]
fn decodes_otlp_json() {
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},
      "scopeSpans":[{"scope":{"name":"manual"},"spans":[{
        "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","parentSpanId":"",
        "name":"op","kind":3,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
        "attributes":[{"key":"n","value":{"intValue":"-9007199254740993"}},{"key":"b","value":{"bytesValue":"AP8="}}],
        "status":{"code":2,"message":"oops"}}]}]}]}"#;
    let req = decode_json(body.as_bytes()).unwrap();
    let batch = to_model(req, &Limits::default());
    assert_eq!(batch.rejected, 0, "{:?}", batch.errors);
    let span = &batch.spans[0];
    assert_eq!(span.trace_id.to_hex(), "5b8efff798038103d269b633813fc60c");
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 1_000_000_000);
    assert_eq!(span.attributes[0].value, AttrValue::Int(-9_007_199_254_740_993));
    assert_eq!(span.attributes[1].value, AttrValue::Bytes(vec![0, 255]));
    assert_eq!(span.status.code, StatusCode::Error);
}

#[test]
fn malformed_bodies_are_errors_that_say_why() {
    let err = decode_json(b"{\"resourceSpans\": 5}").unwrap_err();
    expect![[r#"malformed OTLP JSON: invalid type: integer `5`, expected a sequence at line 1 column 19"#]]
        .assert_eq(&err.to_string());
    let err =
        decode_json(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"}]}]}]}"#).unwrap_err();
    assert!(err.to_string().starts_with("malformed OTLP JSON: "), "{err}");
    let err = decode_protobuf(&[0x0a, 0xff, 0xff]).unwrap_err();
    assert!(err.to_string().starts_with("malformed OTLP protobuf: "), "{err}");
}
