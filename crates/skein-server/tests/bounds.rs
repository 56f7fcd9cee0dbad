//! The memory store stays within `--memory-max-spans` and `--retention`, evicting oldest
//! traces first, and /metrics counts what it evicted.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TestServer, metric};

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn json_trace(trace: u8, spans: u8, start: u64) -> String {
    let spans: Vec<String> = (1..=spans)
        .map(|i| {
            format!(
                r#"{{"traceId":"{t}","spanId":"{s}","name":"op","kind":2,"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}"}}"#,
                t = format!("{trace:02x}").repeat(16),
                s = format!("{i:02x}").repeat(8),
                end = start + 1000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"bounded"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

async fn send(server: &TestServer, body: String) {
    let resp = server.post_otlp_json(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "{}", "full success is the empty message");
}

#[tokio::test]
async fn memory_store_evicts_oldest_traces_beyond_max_spans() {
    let server = TestServer::start_with(skein_server::Config {
        storage: skein_server::StorageKind::Memory,
        memory_max_spans: 5,
        ..Default::default()
    })
    .await;
    for trace in 1..=3u8 {
        send(&server, json_trace(trace, 2, now_nanos())).await;
    }
    let (status, _) = server.get_json(&format!("/api/traces/{}", "01".repeat(16))).await;
    assert_eq!(status, 404, "the oldest trace was evicted");
    for trace in 2..=3u8 {
        let (status, body) =
            server.get_json(&format!("/api/traces/{}", format!("{trace:02x}").repeat(16))).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"][0]["spans"].as_array().unwrap().len(), 2, "newer traces are whole");
    }
    let m = server.get_text("/metrics").await;
    assert_eq!(metric(&m, "skein_spans_evicted_total"), 2.0);
    assert_eq!(metric(&m, "skein_traces_evicted_total"), 1.0);
    assert_eq!(metric(&m, "skein_spans_stored"), 4.0);
    server.stop().await;
}

#[tokio::test]
async fn memory_store_drops_traces_older_than_retention() {
    let server = TestServer::start_with(skein_server::Config {
        storage: skein_server::StorageKind::Memory,
        retention: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let two_hours_ago = now_nanos() - 2 * 3600 * 1_000_000_000;
    send(&server, json_trace(1, 1, two_hours_ago)).await;
    send(&server, json_trace(2, 1, now_nanos())).await;
    let (old, _) = server.get_json(&format!("/api/traces/{}", "01".repeat(16))).await;
    let (new, _) = server.get_json(&format!("/api/traces/{}", "02".repeat(16))).await;
    assert_eq!((old, new), (404, 200));
    server.stop().await;
}
