//! API snapshot tests: the exact JSON that Jaeger clients and OTLP-JSON clients receive.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use expect_test::{Expect, expect};
use http_body_util::BodyExt;
use skein_model::{AttrValue, KeyValue, SpanKind};
use skein_store::testdata::{BASE_TIME, SpanBuilder as B};
use skein_store::{MemoryStore, SpanStore};
use tower::ServiceExt;

async fn app() -> axum::Router {
    let store = MemoryStore::default();
    store
        .write(vec![
            B::new(1, 1)
                .service("frontend")
                .resource_attr("host.name", AttrValue::Str("web-1".into()))
                .scope("skein-otel", "0.1.0")
                .name("GET /checkout")
                .kind(SpanKind::Server)
                .timing_ms(0, 120)
                .attr("http.response.status_code", AttrValue::Int(500))
                .attr("big", AttrValue::Int(1 << 60))
                .attr("ratio", AttrValue::Double(0.25))
                .attr("ok", AttrValue::Bool(false))
                .attr("raw", AttrValue::Bytes(vec![0, 1, 254]))
                .attr("list", AttrValue::Array(vec![AttrValue::Str("a".into()), AttrValue::Int(2)]))
                .attr("map", AttrValue::KvList(vec![KeyValue::new("k", AttrValue::Str("v".into()))]))
                .error("payment declined")
                .event("exception", 1_500_000, vec![KeyValue::string("exception.message", "declined")])
                .link(7, 7)
                .build(),
            B::new(1, 2)
                .service("checkout")
                .name("Checkout")
                .kind(SpanKind::Server)
                .parent(1)
                .timing_ms(10, 50)
                .build(),
            B::new(1, 3).service("checkout").name("orphan").parent(9).timing_ms(20, 5).build(),
        ])
        .await
        .unwrap();
    store
        .write(vec![
            B::new(2, 1).service("frontend").name("GET /").kind(SpanKind::Server).timing_ms(0, 3).build(),
        ])
        .await
        .unwrap();
    crate::router(Arc::new(store))
}

async fn get(uri: &str) -> (StatusCode, String) {
    let response = app().await.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
    (status, serde_json::to_string_pretty(&value).unwrap())
}

async fn check(uri: &str, status: StatusCode, expect: Expect) {
    let (got_status, body) = get(uri).await;
    assert_eq!(got_status, status, "{uri}: {body}");
    expect.assert_eq(&body);
}

fn trace1() -> String {
    B::trace_id(1).to_hex()
}

#[tokio::test]
async fn services_and_operations() {
    check(
        "/api/services",
        StatusCode::OK,
        expect![[r#"
        {
          "data": [
            "checkout",
            "frontend"
          ],
          "errors": null,
          "limit": 0,
          "offset": 0,
          "total": 2
        }"#]],
    )
    .await;
    check(
        "/api/services/checkout/operations",
        StatusCode::OK,
        expect![[r#"
        {
          "data": [
            "Checkout",
            "orphan"
          ],
          "errors": null,
          "limit": 0,
          "offset": 0,
          "total": 2
        }"#]],
    )
    .await;
    check(
        "/api/operations?service=frontend&spanKind=server",
        StatusCode::OK,
        expect![[r#"
        {
          "data": [
            {
              "name": "GET /",
              "spanKind": "server"
            },
            {
              "name": "GET /checkout",
              "spanKind": "server"
            }
          ],
          "errors": null,
          "limit": 0,
          "offset": 0,
          "total": 2
        }"#]],
    )
    .await;
    check("/api/operations?service=frontend&spanKind=sideways", StatusCode::BAD_REQUEST, expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 400,
              "msg": "malformed 'spanKind' parameter \"sideways\": expected one of unspecified, internal, server, client, producer, consumer"
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]]).await;
    check(
        "/api/v3/services",
        StatusCode::OK,
        expect![[r#"
        {
          "services": [
            "checkout",
            "frontend"
          ]
        }"#]],
    )
    .await;
    check(
        "/api/v3/operations?service=checkout",
        StatusCode::OK,
        expect![[r#"
        {
          "operations": [
            {
              "name": "Checkout",
              "spanKind": "server"
            },
            {
              "name": "orphan",
              "spanKind": "internal"
            }
          ]
        }"#]],
    )
    .await;
}

#[tokio::test]
async fn trace_by_id_in_jaeger_form() {
    check(&format!("/api/traces/{}", trace1()), StatusCode::OK, expect![[r#"
        {
          "data": [
            {
              "processes": {
                "p1": {
                  "serviceName": "frontend",
                  "tags": [
                    {
                      "key": "host.name",
                      "type": "string",
                      "value": "web-1"
                    }
                  ]
                },
                "p2": {
                  "serviceName": "checkout",
                  "tags": []
                }
              },
              "spans": [
                {
                  "duration": 120000,
                  "flags": 1,
                  "logs": [
                    {
                      "fields": [
                        {
                          "key": "event",
                          "type": "string",
                          "value": "exception"
                        },
                        {
                          "key": "exception.message",
                          "type": "string",
                          "value": "declined"
                        }
                      ],
                      "timestamp": 1704067201001500
                    }
                  ],
                  "operationName": "GET /checkout",
                  "processID": "p1",
                  "references": [
                    {
                      "refType": "FOLLOWS_FROM",
                      "spanID": "cd00000000000007",
                      "traceID": "ab000000000000000000000000000007"
                    }
                  ],
                  "spanID": "cd00000000000001",
                  "startTime": 1704067201000000,
                  "tags": [
                    {
                      "key": "http.response.status_code",
                      "type": "int64",
                      "value": 500
                    },
                    {
                      "key": "big",
                      "type": "int64",
                      "value": "1152921504606846976"
                    },
                    {
                      "key": "ratio",
                      "type": "float64",
                      "value": 0.25
                    },
                    {
                      "key": "ok",
                      "type": "bool",
                      "value": false
                    },
                    {
                      "key": "raw",
                      "type": "binary",
                      "value": "AAH+"
                    },
                    {
                      "key": "list",
                      "type": "string",
                      "value": "[\"a\",2]"
                    },
                    {
                      "key": "map",
                      "type": "string",
                      "value": "{\"k\":\"v\"}"
                    },
                    {
                      "key": "span.kind",
                      "type": "string",
                      "value": "server"
                    },
                    {
                      "key": "otel.status_code",
                      "type": "string",
                      "value": "ERROR"
                    },
                    {
                      "key": "error",
                      "type": "bool",
                      "value": true
                    },
                    {
                      "key": "otel.status_description",
                      "type": "string",
                      "value": "payment declined"
                    },
                    {
                      "key": "otel.scope.name",
                      "type": "string",
                      "value": "skein-otel"
                    },
                    {
                      "key": "otel.scope.version",
                      "type": "string",
                      "value": "0.1.0"
                    }
                  ],
                  "traceID": "ab000000000000000000000000000001",
                  "warnings": null
                },
                {
                  "duration": 50000,
                  "flags": 1,
                  "logs": [],
                  "operationName": "Checkout",
                  "processID": "p2",
                  "references": [
                    {
                      "refType": "CHILD_OF",
                      "spanID": "cd00000000000001",
                      "traceID": "ab000000000000000000000000000001"
                    }
                  ],
                  "spanID": "cd00000000000002",
                  "startTime": 1704067201010000,
                  "tags": [
                    {
                      "key": "span.kind",
                      "type": "string",
                      "value": "server"
                    }
                  ],
                  "traceID": "ab000000000000000000000000000001",
                  "warnings": null
                },
                {
                  "duration": 5000,
                  "flags": 1,
                  "logs": [],
                  "operationName": "orphan",
                  "processID": "p2",
                  "references": [
                    {
                      "refType": "CHILD_OF",
                      "spanID": "cd00000000000009",
                      "traceID": "ab000000000000000000000000000001"
                    }
                  ],
                  "spanID": "cd00000000000003",
                  "startTime": 1704067201020000,
                  "tags": [
                    {
                      "key": "span.kind",
                      "type": "string",
                      "value": "internal"
                    }
                  ],
                  "traceID": "ab000000000000000000000000000001",
                  "warnings": [
                    "parent span cd00000000000009 is not in this trace: the parent was lost, dropped or not yet received"
                  ]
                }
              ],
              "traceID": "ab000000000000000000000000000001",
              "warnings": null
            }
          ],
          "errors": null,
          "limit": 0,
          "offset": 0,
          "total": 1
        }"#]]).await;
}

#[tokio::test]
async fn trace_by_id_errors() {
    check(
        "/api/traces/0000000000000000000000000000000f",
        StatusCode::NOT_FOUND,
        expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 404,
              "msg": "trace not found"
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]],
    )
    .await;
    check(
        "/api/traces/nothex",
        StatusCode::BAD_REQUEST,
        expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 400,
              "msg": "malformed trace id \"nothex\": not a hex string; expected up to 32 hex digits"
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]],
    )
    .await;
    check(
        "/api/v3/traces/0000000000000000000000000000000f",
        StatusCode::NOT_FOUND,
        expect![[r#"
            {
              "error": {
                "httpCode": 404,
                "message": "No traces found"
              }
            }"#]],
    )
    .await;
}

#[tokio::test]
async fn trace_by_id_in_otlp_json() {
    check(
        &format!("/api/v3/traces/{}", trace1()),
        StatusCode::OK,
        expect![[r#"
        {
          "result": {
            "resourceSpans": [
              {
                "resource": {
                  "attributes": [
                    {
                      "key": "service.name",
                      "value": {
                        "stringValue": "frontend"
                      }
                    },
                    {
                      "key": "host.name",
                      "value": {
                        "stringValue": "web-1"
                      }
                    }
                  ],
                  "droppedAttributesCount": 0,
                  "entityRefs": []
                },
                "schemaUrl": "",
                "scopeSpans": [
                  {
                    "schemaUrl": "",
                    "scope": {
                      "attributes": [],
                      "droppedAttributesCount": 0,
                      "name": "skein-otel",
                      "version": "0.1.0"
                    },
                    "spans": [
                      {
                        "attributes": [
                          {
                            "key": "http.response.status_code",
                            "value": {
                              "intValue": "500"
                            }
                          },
                          {
                            "key": "big",
                            "value": {
                              "intValue": "1152921504606846976"
                            }
                          },
                          {
                            "key": "ratio",
                            "value": {
                              "doubleValue": 0.25
                            }
                          },
                          {
                            "key": "ok",
                            "value": {
                              "boolValue": false
                            }
                          },
                          {
                            "key": "raw",
                            "value": {
                              "bytesValue": "AAH+"
                            }
                          },
                          {
                            "key": "list",
                            "value": {
                              "arrayValue": {
                                "values": [
                                  {
                                    "stringValue": "a"
                                  },
                                  {
                                    "intValue": "2"
                                  }
                                ]
                              }
                            }
                          },
                          {
                            "key": "map",
                            "value": {
                              "kvlistValue": {
                                "values": [
                                  {
                                    "key": "k",
                                    "value": {
                                      "stringValue": "v"
                                    }
                                  }
                                ]
                              }
                            }
                          }
                        ],
                        "droppedAttributesCount": 0,
                        "droppedEventsCount": 0,
                        "droppedLinksCount": 0,
                        "endTimeUnixNano": "1704067201120000000",
                        "events": [
                          {
                            "attributes": [
                              {
                                "key": "exception.message",
                                "value": {
                                  "stringValue": "declined"
                                }
                              }
                            ],
                            "droppedAttributesCount": 0,
                            "name": "exception",
                            "timeUnixNano": "1704067201001500000"
                          }
                        ],
                        "flags": 1,
                        "kind": 2,
                        "links": [
                          {
                            "attributes": [],
                            "droppedAttributesCount": 0,
                            "flags": 0,
                            "spanId": "cd00000000000007",
                            "traceId": "ab000000000000000000000000000007",
                            "traceState": ""
                          }
                        ],
                        "name": "GET /checkout",
                        "parentSpanId": "",
                        "spanId": "cd00000000000001",
                        "startTimeUnixNano": "1704067201000000000",
                        "status": {
                          "code": 2,
                          "message": "payment declined"
                        },
                        "traceId": "ab000000000000000000000000000001",
                        "traceState": ""
                      }
                    ]
                  }
                ]
              },
              {
                "resource": {
                  "attributes": [
                    {
                      "key": "service.name",
                      "value": {
                        "stringValue": "checkout"
                      }
                    }
                  ],
                  "droppedAttributesCount": 0,
                  "entityRefs": []
                },
                "schemaUrl": "",
                "scopeSpans": [
                  {
                    "schemaUrl": "",
                    "scope": {
                      "attributes": [],
                      "droppedAttributesCount": 0,
                      "name": "",
                      "version": ""
                    },
                    "spans": [
                      {
                        "attributes": [],
                        "droppedAttributesCount": 0,
                        "droppedEventsCount": 0,
                        "droppedLinksCount": 0,
                        "endTimeUnixNano": "1704067201060000000",
                        "events": [],
                        "flags": 1,
                        "kind": 2,
                        "links": [],
                        "name": "Checkout",
                        "parentSpanId": "cd00000000000001",
                        "spanId": "cd00000000000002",
                        "startTimeUnixNano": "1704067201010000000",
                        "status": {
                          "code": 0,
                          "message": ""
                        },
                        "traceId": "ab000000000000000000000000000001",
                        "traceState": ""
                      },
                      {
                        "attributes": [],
                        "droppedAttributesCount": 0,
                        "droppedEventsCount": 0,
                        "droppedLinksCount": 0,
                        "endTimeUnixNano": "1704067201025000000",
                        "events": [],
                        "flags": 1,
                        "kind": 1,
                        "links": [],
                        "name": "orphan",
                        "parentSpanId": "cd00000000000009",
                        "spanId": "cd00000000000003",
                        "startTimeUnixNano": "1704067201020000000",
                        "status": {
                          "code": 0,
                          "message": ""
                        },
                        "traceId": "ab000000000000000000000000000001",
                        "traceState": ""
                      }
                    ]
                  }
                ]
              }
            ]
          }
        }"#]],
    )
    .await;
}

fn ids(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["data"].as_array().unwrap().iter().map(|t| t["traceID"].as_str().unwrap()[30..].to_owned()).collect()
}

#[tokio::test]
async fn search() {
    let start = BASE_TIME / 1000;
    let window = format!("&start={start}&end={}", start + 10_000_000);
    let search = |q: &str| {
        let uri = format!("/api/traces?{q}{window}");
        async move {
            let (status, body) = get(&uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            ids(&body)
        }
    };
    assert_eq!(search("service=frontend").await, ["02", "01"], "newest first");
    assert_eq!(search("service=frontend&limit=1").await, ["02"]);
    assert_eq!(search("service=frontend&operation=GET%20/checkout").await, ["01"]);
    assert_eq!(search("service=frontend&tags=%7B%22error%22%3A%22true%22%7D").await, ["01"]);
    assert_eq!(search("service=frontend&tag=http.response.status_code:500").await, ["01"]);
    assert_eq!(search("service=frontend&minDuration=100ms").await, ["01"]);
    assert_eq!(search("service=frontend&maxDuration=100ms").await, ["02"]);
    assert_eq!(search("service=checkout&minDuration=1s").await, Vec::<String>::new());
    let (status, body) = get(&format!("/api/traces?traceID={}&traceID=02", trace1())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["01"], "short id 02 pads to 000…02, which is not stored");
    check("/api/traces?service=frontend&minDuration=abc", StatusCode::BAD_REQUEST, expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 400,
              "msg": "malformed 'minDuration' parameter: invalid duration \"abc\": expected a Go duration such as \"1.5s\", \"300ms\" or \"1h30m\""
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]]).await;
    check(
        "/api/traces?operation=x",
        StatusCode::BAD_REQUEST,
        expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 400,
              "msg": "parameter 'service' is required"
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]],
    )
    .await;
}

#[tokio::test]
async fn search_v3() {
    let (status, body) = get(
        "/api/v3/traces?query.service_name=checkout&query.start_time_min=2024-01-01T00:00:00Z&query.start_time_max=2024-01-01T00:01:00Z&query.duration_min=40ms",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let spans: usize = v["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rs| rs["scopeSpans"].as_array().unwrap())
        .map(|ss| ss["spans"].as_array().unwrap().len())
        .sum();
    assert_eq!(spans, 3, "the whole of trace 1 comes back");
    check("/api/v3/traces?query.service_name=a&query.start_time_min=yesterday", StatusCode::BAD_REQUEST, expect![[r#"
        {
          "error": {
            "httpCode": 400,
            "message": "malformed 'query.start_time_min' parameter \"yesterday\": expected an RFC 3339 time such as 2024-01-01T00:00:00Z"
          }
        }"#]])
        .await;
}

#[tokio::test]
async fn dependencies() {
    let end_ms = BASE_TIME / 1_000_000 + 60_000;
    check(
        &format!("/api/dependencies?endTs={end_ms}&lookback=120000"),
        StatusCode::OK,
        expect![[r#"
        {
          "data": [
            {
              "callCount": 1,
              "child": "checkout",
              "parent": "frontend"
            }
          ],
          "errors": null,
          "limit": 0,
          "offset": 0,
          "total": 1
        }"#]],
    )
    .await;
    check(
        "/api/dependencies?endTs=soon",
        StatusCode::BAD_REQUEST,
        expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 400,
              "msg": "malformed 'endTs' parameter \"soon\": expected milliseconds"
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]],
    )
    .await;
}

#[tokio::test]
async fn critical_path_of_a_trace() {
    let uri = format!("/api/v1/traces/{}/critical-path", trace1());
    check(
        &uri,
        StatusCode::OK,
        expect![[r#"
        {
          "segments": [
            {
              "end": "1704067201120000000",
              "spanID": "cd00000000000001",
              "start": "1704067201060000000"
            },
            {
              "end": "1704067201060000000",
              "spanID": "cd00000000000002",
              "start": "1704067201010000000"
            },
            {
              "end": "1704067201010000000",
              "spanID": "cd00000000000001",
              "start": "1704067201000000000"
            }
          ],
          "traceID": "ab000000000000000000000000000001"
        }"#]],
    )
    .await;
    check(
        "/api/v1/traces/00000000000000000000000000000042/critical-path",
        StatusCode::NOT_FOUND,
        expect![[r#"
            {
              "error": {
                "httpCode": 404,
                "message": "trace not found"
              }
            }"#]],
    )
    .await;
    check(
        "/api/v1/traces/xyz/critical-path",
        StatusCode::BAD_REQUEST,
        expect![[r#"
        {
          "error": {
            "httpCode": 400,
            "message": "malformed trace id \"xyz\": not a hex string; expected up to 32 hex digits"
          }
        }"#]],
    )
    .await;
}

/// The trace view with its string table resolved, one line per span, for a readable snapshot.
fn resolve_view(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let strings: Vec<&str> = v["strings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    let s = |i: &serde_json::Value| strings[i.as_u64().unwrap() as usize];
    let attrs = |a: &serde_json::Value| {
        a.as_array()
            .unwrap()
            .chunks(3)
            .map(|kv| format!("{}={}({})", s(&kv[0]), s(&kv[1]), kv[2]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!("version {} trace {} base {}\n", v["version"], v["traceID"], v["base"]);
    for (i, r) in v["resources"].as_array().unwrap().iter().enumerate() {
        out += &format!("resource {i}: {} dropped={}\n", attrs(&r["attributes"]), r["dropped"]);
    }
    for (i, sc) in v["scopes"].as_array().unwrap().iter().enumerate() {
        out += &format!(
            "scope {i}: {:?} {:?} {}\n",
            s(&sc["name"]),
            s(&sc["version"]),
            attrs(&sc["attributes"])
        );
    }
    for row in v["spans"].as_array().unwrap() {
        let r = row.as_array().unwrap();
        out += &format!(
            "span {} parent={:?} {:?} kind={} +{} {}ns res={} scope={} status={} {:?} [{}] tracestate={:?} flags={} dropped={}\n",
            r[0],
            r[1].as_str().unwrap(),
            s(&r[2]),
            r[3],
            r[4],
            r[5],
            r[6],
            r[7],
            r[8],
            s(&r[9]),
            attrs(&r[10]),
            s(&r[13]),
            r[14],
            r[15]
        );
        for e in r[11].as_array().unwrap() {
            out += &format!("  event +{}ns {:?} [{}] dropped={}\n", e[0], s(&e[1]), attrs(&e[2]), e[3]);
        }
        for l in r[12].as_array().unwrap() {
            out += &format!("  link {} {} [{}]\n", l[0], l[1], attrs(&l[3]));
        }
    }
    out += &format!("critical path {}\n", v["criticalPath"]);
    out
}

#[tokio::test]
async fn trace_view_for_the_ui() {
    // Every field of every span survives: typed attribute values rendered as text with their type,
    // resources and scopes shared, events as offsets, links, status, the critical path.
    let (status, body) = get(&format!("/api/v1/traces/{}/view", trace1())).await;
    assert_eq!(status, StatusCode::OK);
    expect![[r#"
        version 1 trace "ab000000000000000000000000000001" base "1704067201000000000"
        resource 0: service.name=frontend(1) host.name=web-1(1) dropped=0
        resource 1: service.name=checkout(1) dropped=0
        scope 0: "skein-otel" "0.1.0" 
        scope 1: "" "" 
        span "cd00000000000001" parent="" "GET /checkout" kind=2 +0 120000000ns res=0 scope=0 status=2 "payment declined" [http.response.status_code=500(3) big=1152921504606846976(3) ratio=0.25(4) ok=false(2) raw=AAH+(5) list=["a",2](6) map={"k":"v"}(7)] tracestate="" flags=1 dropped=[0,0,0]
          event +1500000ns "exception" [exception.message=declined(1)] dropped=0
          link "ab000000000000000000000000000007" "cd00000000000007" []
        span "cd00000000000002" parent="cd00000000000001" "Checkout" kind=2 +10000000 50000000ns res=1 scope=1 status=0 "" [] tracestate="" flags=1 dropped=[0,0,0]
        span "cd00000000000003" parent="cd00000000000009" "orphan" kind=1 +20000000 5000000ns res=1 scope=1 status=0 "" [] tracestate="" flags=1 dropped=[0,0,0]
        critical path [[0,60000000,120000000],[1,10000000,60000000],[0,0,10000000]]
    "#]].assert_eq(&resolve_view(&body));
    check(
        "/api/v1/traces/00000000000000000000000000000042/view",
        StatusCode::NOT_FOUND,
        expect![[r#"
            {
              "error": {
                "httpCode": 404,
                "message": "trace not found"
              }
            }"#]],
    )
    .await;
}

#[tokio::test]
async fn doctor_and_trace_diagnosis() {
    // The fixture's trace 1 has a span whose parent (…09) never arrived.
    let (status, body) = get("/api/v1/doctor?lookback=200000h&grace=0s&service=checkout").await;
    assert_eq!(status, StatusCode::OK);
    // The answer reads back into the report type the CLI uses.
    let typed: crate::doctor::report::DoctorReport = serde_json::from_str(&body).unwrap();
    assert!(typed.broken && !typed.ingest_quiet && typed.unsettled_traces == 0, "{typed:?}");
    let mut report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let window = report.as_object_mut().unwrap().remove("window").unwrap();
    report.as_object_mut().unwrap().remove("quietForSeconds").expect("how long the ingest has been quiet");
    assert!(
        window["start"].as_str().unwrap().parse::<u64>().unwrap() < B::new(1, 1).build().start_time_unix_nano
    );
    expect![[r#"
        {
          "broken": true,
          "edges": [],
          "findings": [
            {
              "broken": true,
              "confidence": 1.0,
              "count": 1,
              "evidence": "1 span whose parent id is not in the trace, settled",
              "examples": [
                {
                  "otherSpanID": null,
                  "otherTraceID": null,
                  "spanID": "cd00000000000003",
                  "traceID": "ab000000000000000000000000000001",
                  "unambiguous": true
                }
              ],
              "kind": "orphan_spans",
              "message": "1 'orphan' span of checkout names a parent that never arrived: the parent was not exported (sampled out, dropped, lost in a crash), or a wrong parent id was propagated.",
              "operation": "orphan",
              "peer": null,
              "peerOperation": null,
              "service": "checkout"
            }
          ],
          "graceSeconds": 0.0,
          "ingestQuiet": false,
          "service": "checkout",
          "settleSeconds": 6.0,
          "spans": 4,
          "traces": 2,
          "truncated": false,
          "unsettledTraces": 0
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(&report).unwrap());
    check(
        &format!("/api/v1/traces/{}/diagnosis?grace=0s", trace1()),
        StatusCode::OK,
        expect![[r#"
            {
              "problems": [
                {
                  "kind": "orphan_spans",
                  "message": "this span's parent is not in the trace",
                  "missingParentID": "cd00000000000009",
                  "spanID": "cd00000000000003"
                }
              ],
              "related": [],
              "traceID": "ab000000000000000000000000000001",
              "unsettled": false
            }"#]],
    )
    .await;
    check("/api/v1/doctor?lookback=soon", StatusCode::BAD_REQUEST, expect![[r#"
        {
          "error": {
            "httpCode": 400,
            "message": "parameter 'lookback': invalid duration \"soon\": expected a Go duration such as \"1.5s\", \"300ms\" or \"1h30m\""
          }
        }"#]]).await;
}

#[tokio::test]
async fn trace_summaries_v3() {
    // Trace 1: root `GET /checkout` of frontend with error status, a checkout child, and a
    // checkout span whose parent (9) is not in the trace.
    check(
        "/api/v3/trace-summaries?query.serviceName=checkout&query.startTimeMin=2024-01-01T00:00:00Z&query.startTimeMax=2024-01-01T00:01:00Z&query.searchDepth=20",
        StatusCode::OK,
        expect![[r#"
            {
              "summaries": [
                {
                  "errorSpanCount": 1,
                  "maxEndTimeUnixNano": "1704067201120000000",
                  "minStartTimeUnixNano": "1704067201000000000",
                  "orphanSpanCount": 1,
                  "rootOperationName": "GET /checkout",
                  "rootServiceName": "frontend",
                  "services": [
                    {
                      "name": "checkout",
                      "spanCount": 2
                    },
                    {
                      "errorSpanCount": 1,
                      "name": "frontend",
                      "spanCount": 1
                    }
                  ],
                  "spanCount": 3,
                  "traceId": "ab000000000000000000000000000001"
                }
              ]
            }"#]],
    )
    .await;
    // Jaeger's deprecated snake_case names, the POST form, and no match at all.
    let (status, snake) = get(
        "/api/v3/trace-summaries?query.service_name=checkout&query.start_time_min=2024-01-01T00:00:00Z&query.start_time_max=2024-01-01T00:01:00Z",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, posted) = post(
        "/api/v3/trace-summaries",
        r#"{"query": {"serviceName": "checkout", "startTimeMin": "2024-01-01T00:00:00Z", "start_time_max": "2024-01-01T00:01:00Z", "attributes": {}, "searchDepth": 20, "durationMin": "0.001s"}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(snake, posted);
    assert!(snake.contains(&format!("\"traceId\": \"{}\"", trace1())), "{snake}");
    check(
        "/api/v3/trace-summaries?query.serviceName=nobody&query.startTimeMin=2024-01-01T00:00:00Z&query.startTimeMax=2024-01-01T00:01:00Z",
        StatusCode::OK,
        expect!["{}"],
    )
    .await;
}

#[tokio::test]
async fn v3_search_errors() {
    let cases = [
        (
            "/api/v3/trace-summaries?query.startTimeMin=yesterday",
            expect![[r#"
            {
              "error": {
                "httpCode": 400,
                "message": "malformed 'query.startTimeMin' parameter \"yesterday\": expected an RFC 3339 time such as 2024-01-01T00:00:00Z"
              }
            }"#]],
        ),
        (
            "/api/v3/trace-summaries?query.startTimeMin=2024-01-01T00:01:00Z&query.startTimeMax=2024-01-01T00:00:00Z",
            expect![[r#"
            {
              "error": {
                "httpCode": 400,
                "message": "'query.startTimeMin' must be before 'query.startTimeMax'"
              }
            }"#]],
        ),
        (
            "/api/v3/traces?query.searchDepth=0",
            expect![[r#"
            {
              "error": {
                "httpCode": 400,
                "message": "malformed 'query.searchDepth' parameter \"0\": expected a number from 1 to 10000"
              }
            }"#]],
        ),
        (
            "/api/v3/trace-summaries?query.duration_min=fast",
            expect![[r#"
                {
                  "error": {
                    "httpCode": 400,
                    "message": "malformed 'query.duration_min' parameter: invalid duration \"fast\": expected a Go duration such as \"1.5s\", \"300ms\" or \"1h30m\""
                  }
                }"#]],
        ),
        (
            "/api/v3/trace-summaries?query.attributes=%5B1%5D",
            expect![[r#"
            {
              "error": {
                "httpCode": 400,
                "message": "malformed 'query.attributes' parameter \"[1]\": expected a JSON object of strings (invalid type: sequence, expected a map at line 1 column 0)"
              }
            }"#]],
        ),
        (
            "/api/v3/trace-summaries?query.filter=%7B%7D",
            expect![[r#"
            {
              "error": {
                "httpCode": 400,
                "message": "parameter 'query.filter' (structured filters) is not supported; use the other query.* parameters"
              }
            }"#]],
        ),
        (
            "/api/v3/traces?query.serviceName=nobody",
            expect![[r#"
            {
              "error": {
                "httpCode": 404,
                "message": "No traces found"
              }
            }"#]],
        ),
    ];
    for (uri, expect) in cases {
        let (status, body) = get(uri).await;
        let code = serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["httpCode"].as_u64();
        assert_eq!(code, Some(u64::from(status.as_u16())), "{uri}: {body}");
        expect.assert_eq(&body);
    }
    let (status, body) = post("/api/v3/trace-summaries", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("malformed request body"), "{body}");
}

#[tokio::test]
async fn v3_operations_dependencies_and_trace_params() {
    check(
        "/api/v3/operations?service=frontend&spanKind=server",
        StatusCode::OK,
        expect![[r#"
        {
          "operations": [
            {
              "name": "GET /",
              "spanKind": "server"
            },
            {
              "name": "GET /checkout",
              "spanKind": "server"
            }
          ]
        }"#]],
    )
    .await;
    // An operation stored without a kind is `internal`, as in Jaeger.
    check(
        "/api/v3/operations?service=checkout&span_kind=internal",
        StatusCode::OK,
        expect![[r#"
            {
              "operations": [
                {
                  "name": "orphan",
                  "spanKind": "internal"
                }
              ]
            }"#]],
    )
    .await;
    check(
        "/api/v3/dependencies?startTime=2024-01-01T00:00:00Z&endTime=2024-01-01T00:10:00Z",
        StatusCode::OK,
        expect![[r#"
        {
          "dependencies": [
            {
              "callCount": "1",
              "child": "checkout",
              "parent": "frontend"
            }
          ]
        }"#]],
    )
    .await;
    check(
        "/api/v3/dependencies?start_time=2024-01-02T00:00:00Z&end_time=2024-01-01T00:00:00Z",
        StatusCode::BAD_REQUEST,
        expect![[r#"
        {
          "error": {
            "httpCode": 400,
            "message": "'startTime' must not be after 'endTime'"
          }
        }"#]],
    )
    .await;
    // A trace by base64 id, with Jaeger's optional time bounds and rawTraces.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE.encode(B::trace_id(1).as_bytes());
    let (status, body) =
        get(&format!("/api/v3/traces/{b64}?startTime=2024-01-01T00:00:00Z&rawTraces=true")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("\"name\": \"GET /checkout\""), "{body}");
    let (status, body) = get(&format!("/api/v3/traces/{}?raw_traces=perhaps", trace1())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// `trace-summaries` finds the same traces, in the same order, as the v1 search with the same
/// filters, over a store with traces of several services, durations, attributes and errors.
#[tokio::test]
async fn trace_summaries_match_the_v1_search() {
    let store = MemoryStore::default();
    for n in 1..=40u8 {
        let service = ["frontend", "checkout", "cart"][n as usize % 3];
        let mut root = B::new(n, 1)
            .service(service)
            .name(if n % 2 == 0 { "GET /a" } else { "GET /b" })
            .kind(SpanKind::Server)
            .timing_ms(0, u64::from(n) * 3)
            .attr("user.tier", AttrValue::Str(if n % 4 == 0 { "gold" } else { "free" }.into()));
        if n % 5 == 0 {
            root = root.error("boom");
        }
        let child =
            B::new(n, 2).service("db").name("SELECT").kind(SpanKind::Client).parent(1).timing_ms(1, 1);
        store.write(vec![root.build(), child.build()]).await.unwrap();
    }
    let app = crate::router(Arc::new(store));
    let fetch = |uri: String| {
        let app = app.clone();
        async move {
            let response = app.oneshot(Request::get(&uri).body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        }
    };
    let start_us = BASE_TIME / 1_000;
    let end_us = start_us + 60_000_000;
    let filters: [(&str, &str); 5] = [
        ("service=db", "query.serviceName=db"),
        (
            "service=frontend&operation=GET%20%2Fa",
            "query.serviceName=frontend&query.operationName=GET%20%2Fa",
        ),
        (
            "service=db&minDuration=1ms&limit=7",
            "query.serviceName=db&query.durationMin=1ms&query.searchDepth=7",
        ),
        (
            "service=checkout&tags=%7B%22user.tier%22%3A%22gold%22%7D",
            "query.serviceName=checkout&query.attributes=%7B%22user.tier%22%3A%22gold%22%7D",
        ),
        (
            "service=cart&maxDuration=60ms&tags=%7B%22error%22%3A%22true%22%7D",
            "query.serviceName=cart&query.durationMax=60ms&query.attributes=%7B%22error%22%3A%22true%22%7D",
        ),
    ];
    for (v1, v3) in filters {
        let v1_body = fetch(format!("/api/traces?{v1}&start={start_us}&end={end_us}&limit=100")).await;
        let limit = if v1.contains("limit=7") { 7 } else { 100 };
        let v1_ids: Vec<&str> = v1_body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["traceID"].as_str().unwrap())
            .take(limit)
            .collect();
        let v3_body = fetch(format!(
            "/api/v3/trace-summaries?{v3}&query.startTimeMin=2024-01-01T00:00:00Z&query.startTimeMax=2024-01-01T00:01:00Z"
        ))
        .await;
        let summaries = v3_body["summaries"].as_array().cloned().unwrap_or_default();
        let v3_ids: Vec<&str> = summaries.iter().map(|s| s["traceId"].as_str().unwrap()).collect();
        assert!(!v1_ids.is_empty(), "{v1}: the filter finds something");
        assert_eq!(v1_ids, v3_ids, "{v1} vs {v3}");
        for s in &summaries {
            assert_eq!(s["spanCount"], 2);
            assert!(s["rootOperationName"].as_str().unwrap().starts_with("GET /"));
            let min: u64 = s["minStartTimeUnixNano"].as_str().unwrap().parse().unwrap();
            let max: u64 = s["maxEndTimeUnixNano"].as_str().unwrap().parse().unwrap();
            assert!(max > min);
        }
    }
}

async fn post(uri: &str, body: &str) -> (StatusCode, String) {
    let request =
        Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_owned()));
    let response = app().await.oneshot(request.unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes).expect("every answer is JSON");
    (status, serde_json::to_string_pretty(&value).unwrap())
}

/// Jaeger's `prettyPrint` on the v1 API: four-space indentation, field order kept; absent or
/// `false`, the compact form.
#[tokio::test]
async fn pretty_print_v1() {
    let raw = |uri: &str| {
        let uri = uri.to_owned();
        async move {
            let response =
                app().await.oneshot(Request::get(&uri).body(Body::empty()).unwrap()).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }
    };
    let compact = raw("/api/services").await;
    assert_eq!(compact, r#"{"data":["checkout","frontend"],"total":2,"limit":0,"offset":0,"errors":null}"#);
    assert_eq!(raw("/api/services?prettyPrint=false").await, compact);
    let pretty = raw("/api/services?prettyPrint=true").await;
    assert_eq!(
        pretty,
        "{\n    \"data\": [\n        \"checkout\",\n        \"frontend\"\n    ],\n    \"total\": 2,\n    \"limit\": 0,\n    \"offset\": 0,\n    \"errors\": null\n}"
    );
    let trace = raw(&format!("/api/traces/{}?prettyPrint=1", trace1())).await;
    assert!(trace.starts_with("{\n    \"data\": [\n        {\n            \"traceID\""), "{trace}");
    let parsed: serde_json::Value = serde_json::from_str(&trace).unwrap();
    let compact: serde_json::Value =
        serde_json::from_str(&raw(&format!("/api/traces/{}", trace1())).await).unwrap();
    assert_eq!(parsed, compact);
}

/// Jaeger's metrics API over the spans above: frontend's two SERVER spans start at 00:00:01
/// (an error, 120 ms) and 00:00:02 (3 ms); the point at 00:01:00 looks back over the minute.
#[tokio::test]
async fn red_metrics_in_jaegers_metrics_api() {
    let end = BASE_TIME / 1_000_000 + 60_000;
    let params = format!("service=frontend&endTs={end}&lookback=60000&step=60000&ratePer=60000");
    check(
        &format!("/api/metrics/calls?{params}"),
        StatusCode::OK,
        expect![[r#"
        {
          "help": "calls/sec, grouped by service",
          "metrics": [
            {
              "labels": [
                {
                  "name": "service_name",
                  "value": "frontend"
                }
              ],
              "metricPoints": [
                {
                  "gaugeValue": {
                    "doubleValue": 0.0
                  },
                  "timestamp": "2024-01-01T00:00:00Z"
                },
                {
                  "gaugeValue": {
                    "doubleValue": 0.03333333333333333
                  },
                  "timestamp": "2024-01-01T00:01:00Z"
                }
              ]
            }
          ],
          "name": "service_call_rate",
          "type": "GAUGE"
        }"#]],
    )
    .await;
    check(&format!("/api/metrics/errors?{params}&groupByOperation=true"), StatusCode::OK, expect![[r#"
        {
          "help": "error rate, computed as a fraction of errors/sec over calls/sec, grouped by service & operation",
          "metrics": [
            {
              "labels": [
                {
                  "name": "service_name",
                  "value": "frontend"
                },
                {
                  "name": "operation",
                  "value": "GET /"
                }
              ],
              "metricPoints": [
                {
                  "gaugeValue": {
                    "doubleValue": 0.0
                  },
                  "timestamp": "2024-01-01T00:01:00Z"
                }
              ]
            },
            {
              "labels": [
                {
                  "name": "service_name",
                  "value": "frontend"
                },
                {
                  "name": "operation",
                  "value": "GET /checkout"
                }
              ],
              "metricPoints": [
                {
                  "gaugeValue": {
                    "doubleValue": 1.0
                  },
                  "timestamp": "2024-01-01T00:01:00Z"
                }
              ]
            }
          ],
          "name": "service_operation_error_rate",
          "type": "GAUGE"
        }"#]])
        .await;
    check(
        &format!("/api/metrics/latencies?{params}&quantile=0.95&spanKind=server"),
        StatusCode::OK,
        expect![[r#"
            {
              "help": "0.95th quantile latency, grouped by service",
              "metrics": [
                {
                  "labels": [
                    {
                      "name": "service_name",
                      "value": "frontend"
                    }
                  ],
                  "metricPoints": [
                    {
                      "gaugeValue": {
                        "doubleValue": 120.91161330143792
                      },
                      "timestamp": "2024-01-01T00:01:00Z"
                    }
                  ]
                }
              ],
              "name": "service_latencies",
              "type": "GAUGE"
            }"#]],
    )
    .await;
    // `spanKind` picks the kinds counted (SERVER by default): here checkout's one INTERNAL span.
    check(
        &format!("/api/metrics/calls?service=checkout&endTs={end}&lookback=0&step=60000&ratePer=60000&spanKind=internal"),
        StatusCode::OK,
        expect![[r#"
            {
              "help": "calls/sec, grouped by service",
              "metrics": [
                {
                  "labels": [
                    {
                      "name": "service_name",
                      "value": "checkout"
                    }
                  ],
                  "metricPoints": [
                    {
                      "gaugeValue": {
                        "doubleValue": 0.016666666666666666
                      },
                      "timestamp": "2024-01-01T00:01:00Z"
                    }
                  ]
                }
              ],
              "name": "service_call_rate",
              "type": "GAUGE"
            }"#]],
    )
    .await;
    check(
        "/api/metrics/calls?lookback=1000",
        StatusCode::BAD_REQUEST,
        expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 400,
              "msg": "unable to parse param 'service': please provide at least one service name"
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]],
    )
    .await;
    check(
        "/api/metrics/latencies?service=frontend",
        StatusCode::BAD_REQUEST,
        expect![[r#"
        {
          "data": null,
          "errors": [
            {
              "code": 400,
              "msg": "unable to parse param 'quantile': \"\" is not a number"
            }
          ],
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]],
    )
    .await;
    check(
        "/api/metrics/minstep",
        StatusCode::OK,
        expect![[r#"
        {
          "data": 1,
          "errors": null,
          "limit": 0,
          "offset": 0,
          "total": 0
        }"#]],
    )
    .await;
}

/// Metrics over a window larger than a request reads are refused, never computed on part of it
/// (the memory store reads whole traces, the newest 10,000).
#[tokio::test]
async fn red_metrics_refuse_a_window_they_cannot_read_whole() {
    let store = MemoryStore::default();
    let spans: Vec<_> = (0..10_001u32)
        .map(|i| {
            let mut s = B::new(1, 1).service("busy").kind(SpanKind::Server).build();
            s.trace_id = skein_model::TraceId::from_bytes((u128::from(i) + 1).to_be_bytes()).unwrap();
            s
        })
        .collect();
    store.write(spans).await.unwrap();
    let app = crate::router(Arc::new(store));
    let end = BASE_TIME / 1_000_000 + 60_000;
    let uri = format!("/api/metrics/calls?service=busy&endTs={end}&lookback=60000&step=60000&ratePer=60000");
    let response = app.oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("shorten lookback"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}
