//! Helpers shared by the integration tests that send OTLP themselves.

/// An OTLP/JSON request of five spans of trace `trace_id` (32 hex digits) from `service`,
/// starting now, each with the attribute `n`.
pub fn otlp_json_batch(trace_id: &str, service: &str, n: u32) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let spans: Vec<String> = (1..=5)
        .map(|i| {
            format!(
                r#"{{"traceId":"{trace_id}","spanId":"{i:016x}","name":"op{i}","kind":2,"startTimeUnixNano":"{now}","endTimeUnixNano":"{end}","attributes":[{{"key":"n","value":{{"intValue":"{n}"}}}}]}}"#,
                end = now + 1000
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},"scopeSpans":[{{"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}
