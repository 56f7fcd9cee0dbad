//! `skein bench` end to end on a small run: it starts its own server, sends every span, reads
//! traces back, and ends with the JSON line the issue fixes. (Figures are printed, never
//! asserted: performance is reported by running the benchmark, not by tests.)

use std::process::Command;

#[test]
fn bench_sends_every_span_and_prints_the_json_line_last() {
    for protocol in ["grpc", "http"] {
        let out = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args([
                "bench",
                "--spans",
                "3000",
                "--spans-per-request",
                "200",
                "--queries",
                "5",
                "--protocol",
                protocol,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{protocol}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let last = stdout.lines().last().expect("output");
        let report: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
        for key in [
            "spans_per_sec",
            "spans_per_core_sec",
            "bytes_per_span",
            "trace_by_id_p99_ms",
            "search_p99_ms",
            "rss_mib",
        ] {
            assert!(report[key].is_number(), "{protocol}: {key} missing in {report}");
        }
        assert_eq!(report["spans_sent"], 3000);
        assert_eq!(report["spans_accepted"], 3000, "{protocol}: every span accepted: {report}");
        assert_eq!(report["requests_failed"], 0);
        assert!(stdout.contains("trace by id"), "human summary before the JSON: {stdout}");
    }
}
