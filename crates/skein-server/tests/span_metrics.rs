//! `--span-metrics`: `/metrics` has the RED series of the stored spans, named as the
//! OpenTelemetry Collector's spanmetrics connector names them, with a bounded number of span
//! names per service; without the flag, none of it.

mod common;

use common::{TestServer, metric};
use skein_server::Config;

/// One OTLP/JSON request of `api` SERVER spans: (name, duration in ms, failed).
fn request(spans: &[(&str, u64, bool)]) -> String {
    let start = 1_700_000_000_000_000_000u64;
    let spans: Vec<String> = spans
        .iter()
        .enumerate()
        .map(|(i, (name, ms, failed))| {
            format!(
                r#"{{"traceId":"{:032x}","spanId":"{:016x}","name":"{name}","kind":2,"startTimeUnixNano":"{start}","endTimeUnixNano":"{}","status":{{"code":{}}}}}"#,
                0xabc0 + i as u128 + (ms << 16) as u128,
                i + 1,
                start + ms * 1_000_000,
                if *failed { 2 } else { 0 }
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"api"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

async fn send(server: &TestServer, body: String) {
    let r = server.post_otlp_json(body).await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// A series of `api`'s SERVER spans; `le` (a histogram bucket) comes first, as the exposition
/// writes it.
fn series(name: &str, span_name: &str, status: &str, le: &str) -> String {
    let le = if le.is_empty() { String::new() } else { format!(r#"le="{le}","#) };
    format!(
        r#"{name}{{{le}service_name="api",span_name="{span_name}",span_kind="SPAN_KIND_SERVER",status_code="{status}"}}"#
    )
}

#[tokio::test]
async fn stored_spans_become_red_series_with_bounded_names() {
    let server = TestServer::start_with(Config { span_metrics: Some(2), ..Config::default() }).await;
    send(
        &server,
        request(&[("GET /a", 3, false), ("GET /a", 30, false), ("GET /a", 700, true), ("GET /b", 5, false)]),
    )
    .await;
    // A third name for `api` is past the bound of 2: counted as `_other`.
    send(&server, request(&[("GET /c", 1, false), ("GET /c", 1, false)])).await;
    send(&server, request(&[("GET /a", 9, false)])).await;
    let m = server.get_text("/metrics").await;

    let calls = "traces_span_metrics_calls_total";
    assert_eq!(metric(&m, &series(calls, "GET /a", "STATUS_CODE_UNSET", "")), 3.0, "{m}");
    assert_eq!(metric(&m, &series(calls, "GET /a", "STATUS_CODE_ERROR", "")), 1.0);
    assert_eq!(metric(&m, &series(calls, "GET /b", "STATUS_CODE_UNSET", "")), 1.0);
    assert_eq!(metric(&m, &series(calls, "_other", "STATUS_CODE_UNSET", "")), 2.0);
    assert!(!m.contains("GET /c"), "a name past the bound has no series: {m}");
    assert_eq!(metric(&m, r#"skein_span_metrics_folded_spans_total{service_name="api"}"#), 2.0);

    let duration = "traces_span_metrics_duration_milliseconds";
    let ok_a = |suffix: &str, le: &str| {
        metric(&m, &series(&format!("{duration}{suffix}"), "GET /a", "STATUS_CODE_UNSET", le))
    };
    assert_eq!(ok_a("_count", ""), 3.0);
    assert_eq!(ok_a("_sum", ""), 42.0, "3 + 30 + 9 ms");
    assert_eq!(ok_a("_bucket", "4.0"), 1.0);
    assert_eq!(ok_a("_bucket", "10.0"), 2.0);
    assert_eq!(ok_a("_bucket", "50.0"), 3.0);
    let failed =
        |le: &str| metric(&m, &series(&format!("{duration}_bucket"), "GET /a", "STATUS_CODE_ERROR", le));
    assert_eq!((failed("400.0"), failed("800.0")), (0.0, 1.0), "the failed 700 ms call");
    server.stop().await;

    let plain = TestServer::start().await;
    send(&plain, request(&[("GET /a", 3, false)])).await;
    let m = plain.get_text("/metrics").await;
    assert!(!m.contains("traces_span_metrics"), "off by default: {m}");
    assert!(m.contains("skein_spans_received_total"));
    plain.stop().await;
}
