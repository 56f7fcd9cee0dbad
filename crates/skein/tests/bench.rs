//! `skein bench` end to end on a small run: it starts its own server, sends every span, reads
//! traces back, and ends with the JSON line the issue fixes. (Figures are printed, never
//! asserted: performance is reported by running the benchmark, not by tests.)

mod support;

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

/// `--server-cpus` and `--load-cpus` pin the started server and the load generator, and the
/// report says so (CPU 0 exists on every machine).
#[test]
#[cfg(target_os = "linux")]
fn bench_pins_server_and_load_when_asked() {
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["bench", "--spans", "1000", "--queries", "2", "--server-cpus", "0", "--load-cpus", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["server_cpus"], serde_json::json!([0]));
    assert_eq!(report["load_cpus"], serde_json::json!([0]));
    assert_eq!(report["spans_accepted"], 1000);
    assert!(stdout.contains("server on 0, load generator on 0"), "{stdout}");

    // A CPU the machine does not have is a clear error, not a silent run on any CPU.
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["bench", "--spans", "100", "--server-cpus", "100000"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CPU 100000"), "{stderr}");
}

/// `--via-collector` puts rotel (from the test virtualenv) between the load and the server;
/// the report says how many spans went through and at what rate.
#[test]
fn bench_via_a_collector_reports_that_path() {
    let Some(agent) = rotel_agent() else { return };
    for protocol in ["grpc", "http"] {
        let out = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args([
                "bench",
                "--spans",
                "20000",
                "--queries",
                "5",
                "--protocol",
                protocol,
                "--via-collector",
                &agent,
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{protocol}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(report["spans_accepted"], 20000, "{report}");
        assert_eq!(report["collector_spans_delivered"], 20000, "every span reached the server: {report}");
        assert!(report["collector_spans_per_sec"].as_f64().unwrap() > 0.0, "{report}");
        assert!(stdout.contains("delivered through rotel"), "{stdout}");
    }
}

/// The `rotel-agent` binary of the test virtualenv's rotel package.
fn rotel_agent() -> Option<String> {
    let python = support::python()?;
    let out = Command::new(&python)
        .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .unwrap();
    assert!(out.status.success(), "rotel is installed in the test virtualenv (scripts/test)");
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

/// `--compare-rotel` sends the same load to rotel's blackhole exporter after the run and
/// reports its spans per CPU-second beside the server's.
#[test]
fn bench_compares_with_rotel_blackhole() {
    let Some(agent) = rotel_agent() else { return };
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["bench", "--spans", "20000", "--queries", "5", "--compare-rotel", &agent])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(report["rotel_spans_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["rotel_spans_per_core_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(stdout.contains("rotel blackhole"), "{stdout}");
}
