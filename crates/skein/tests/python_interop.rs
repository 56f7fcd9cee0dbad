//! The official OpenTelemetry Python SDK sends to a running `skein serve` (the real binary)
//! over gRPC and over HTTP/protobuf; the test reads the trace back through the Jaeger API
//! and checks every field.
//!
//! The SDK lives in the project's virtualenv, made by `scripts/test` (or set `SKEIN_PYTHON`).

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value as Json;
use support::{Skein, python, workspace_root};

fn send(python: &PathBuf, protocol: &str, endpoint: &str, service: &str) -> Json {
    let script = workspace_root().join("tests/interop/python/send_trace.py");
    let out = Command::new(python)
        .arg(script)
        .args(["--protocol", protocol, "--endpoint", endpoint, "--service", service])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("python prints the ids as JSON")
}

fn tag<'a>(tags: &'a Json, key: &str) -> &'a Json {
    tags.as_array()
        .unwrap()
        .iter()
        .find(|t| t["key"] == key)
        .unwrap_or_else(|| panic!("tag {key} missing in {tags}"))
}

fn typed(tags: &Json, key: &str) -> (String, Json) {
    let t = tag(tags, key);
    (t["type"].as_str().unwrap().to_owned(), t["value"].clone())
}

fn check(skein: &Skein, ids: &Json, service: &str) {
    let trace_id = ids["trace_id"].as_str().unwrap();
    let (status, body) = skein.get(&format!("/api/traces/{trace_id}"));
    assert_eq!(status, 200, "{body}");
    let trace = &body["data"][0];
    assert_eq!(trace["traceID"], trace_id);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    let root = spans.iter().find(|s| s["spanID"] == ids["root_span_id"]).expect("root span");
    let child = spans.iter().find(|s| s["spanID"] == ids["child_span_id"]).expect("child span");

    let process = &trace["processes"][root["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], service);
    assert_eq!(tag(&process["tags"], "service.version")["value"], "2.0.1");
    assert_eq!(tag(&process["tags"], "telemetry.sdk.language")["value"], "python");

    assert_eq!(root["operationName"], "POST /orders");
    assert_eq!(
        root["references"],
        serde_json::json!([{
            "refType": "FOLLOWS_FROM", "traceID": "0af7651916cd43dd8448eb211c80319c", "spanID": "b7ad6b7169203331"
        }])
    );
    let tags = &root["tags"];
    assert_eq!(typed(tags, "http.request.method"), ("string".into(), "POST".into()));
    assert_eq!(typed(tags, "http.response.status_code"), ("int64".into(), 502.into()));
    assert_eq!(typed(tags, "retry"), ("bool".into(), true.into()));
    assert_eq!(typed(tags, "ratio"), ("float64".into(), 0.5.into()));
    assert_eq!(typed(tags, "huge"), ("int64".into(), "9007199254740993".into()));
    assert_eq!(typed(tags, "items"), ("string".into(), r#"["a","b"]"#.into()));
    assert_eq!(typed(tags, "counts"), ("string".into(), "[1,2,3]".into()));
    assert_eq!(tag(tags, "span.kind")["value"], "server");
    assert_eq!(tag(tags, "otel.scope.name")["value"], "interop.python");
    assert_eq!(tag(tags, "otel.scope.version")["value"], "0.9.0");
    assert_eq!(tag(tags, "otel.status_code")["value"], "ERROR");
    assert_eq!(tag(tags, "otel.status_description")["value"], "bad gateway");
    assert_eq!(typed(tags, "error"), ("bool".into(), true.into()));
    let log = &root["logs"][0];
    assert_eq!(tag(&log["fields"], "event")["value"], "retrying");
    assert_eq!(typed(&log["fields"], "attempt"), ("int64".into(), 2.into()));
    let start = root["startTime"].as_u64().unwrap();
    let end = start + root["duration"].as_u64().unwrap();
    assert!(start > 1_600_000_000_000_000, "startTime in µs: {start}");
    assert!((start..=end).contains(&log["timestamp"].as_u64().unwrap()));
    assert_eq!(root["warnings"], Json::Null);

    assert_eq!(child["operationName"], "redis GET");
    assert_eq!(
        child["references"],
        serde_json::json!([{ "refType": "CHILD_OF", "traceID": trace_id, "spanID": ids["root_span_id"] }])
    );
    assert_eq!(tag(&child["tags"], "span.kind")["value"], "client");
    assert_eq!(tag(&child["tags"], "db.system.name")["value"], "redis");
    let child_start = child["startTime"].as_u64().unwrap();
    assert!(child_start >= start && child_start <= end, "child inside its parent");

    // The OTLP-JSON view keeps what Jaeger's model cannot show, such as link attributes.
    let (status, v3) = skein.get(&format!("/api/v3/traces/{trace_id}"));
    assert_eq!(status, 200);
    let otlp_spans = v3["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap();
    let otlp_root = otlp_spans.iter().find(|s| s["spanId"] == ids["root_span_id"]).unwrap();
    assert_eq!(otlp_root["links"][0]["attributes"][0]["key"], "link.reason");
    assert_eq!(otlp_root["kind"], 2);

    // Jaeger UI 2.19+ searches through trace summaries, with these exact parameters.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let iso =
        |secs: u64| humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let (status, found) = skein.get(&format!(
        "/api/v3/trace-summaries?query.serviceName={service}&query.startTimeMin={}&query.startTimeMax={}&query.searchDepth=20",
        iso(now - 600),
        iso(now + 60)
    ));
    assert_eq!(status, 200, "{found}");
    let summary = &found["summaries"][0];
    assert_eq!(summary["traceId"], trace_id);
    assert_eq!(summary["rootServiceName"], service);
    assert_eq!(summary["rootOperationName"], root["operationName"]);
    assert_eq!(summary["spanCount"], 2);
    assert_eq!(summary["errorSpanCount"], 1);
    let min: u64 = summary["minStartTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert_eq!(min / 1_000, start, "the root's start, in ns");
}

#[test]
fn python_sdk_over_grpc_and_http() {
    let Some(python) = python() else { return };
    let skein = Skein::start();
    let grpc_ids = send(&python, "grpc", &skein.grpc, "py-grpc");
    check(&skein, &grpc_ids, "py-grpc");
    let http_ids = send(&python, "http", &format!("{}/v1/traces", skein.otlp_http), "py-http");
    check(&skein, &http_ids, "py-http");
    let (_, services) = skein.get("/api/services");
    assert_eq!(services["data"], serde_json::json!(["py-grpc", "py-http"]));
}

/// The trace doctor on chains broken by real SDK code: `doctor_scenarios.py` sends a call that
/// does not propagate (orders → billing), work handed to a thread without its context (worker),
/// and calls to a peer with no instrumentation (api → legacy.internal:8080).
#[test]
fn the_doctor_names_each_broken_edge_of_python_sdk_traces() {
    let Some(python) = python() else { return };
    let skein = Skein::start();
    let script = workspace_root().join("tests/interop/python/doctor_scenarios.py");
    let out = Command::new(&python)
        .arg(script)
        .args(["--endpoint", &format!("{}/v1/traces", skein.otlp_http), "--repeat", "5"])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));

    let doctor = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["doctor", "--server", &skein.http, "--grace", "0s", "--json"])
        .output()
        .unwrap();
    assert_eq!(doctor.status.code(), Some(1), "broken chains make the doctor exit 1");
    let report: Json = serde_json::from_slice(&doctor.stdout).unwrap();
    let mut findings: Vec<(String, String, String, String, u64, bool)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["service"].as_str().unwrap().to_owned(),
                f["peer"].as_str().unwrap_or("").to_owned(),
                f["operation"].as_str().unwrap().to_owned(),
                f["count"].as_u64().unwrap(),
                f["broken"].as_bool().unwrap(),
            )
        })
        .collect();
    findings.sort();
    let s = |v: &str| v.to_owned();
    assert_eq!(
        findings,
        vec![
            (s("detached_work"), s("worker"), s(""), s("process job"), 5, true),
            (s("split_trace"), s("orders"), s("billing"), s("POST"), 5, true),
            (s("uninstrumented_peer"), s("api"), s("legacy.internal:8080"), s("GET"), 5, false),
        ],
        "{report:#}"
    );
    let split = report["findings"].as_array().unwrap().iter().find(|f| f["kind"] == "split_trace").unwrap();
    assert_eq!(split["peerOperation"], "POST /pay/{id}");
    assert!(split["confidence"].as_f64().unwrap() > 0.9, "{split}");

    // The text report, as a user reads it after the integration tests.
    let text = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["doctor", "--server", &skein.http, "--grace", "0s"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("BROKEN orders → billing [split_trace]"), "{text}");
    assert!(text.contains("BROKEN worker: process job [detached_work]"), "{text}");
    assert!(text.contains("NOTE   api → legacy.internal:8080 [uninstrumented_peer]"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("orders → billing")
                && l.ends_with("0.0%  (0 joined, 5 split)")),
        "{text}"
    );
    assert!(text.trim_end().ends_with("2 broken chains found."), "{text}");
}
