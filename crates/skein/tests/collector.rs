//! Behind a collector: the OpenTelemetry Python SDK sends to rotel (PyPI `rotel`, the Rust
//! OpenTelemetry collector, installed by `scripts/test` into `.venv`), which forwards to a
//! running `skein serve` with its default batching (8,192 spans or 200 ms per export).
//!
//! - With Skein's defaults every span of a large load arrives, traces connected, over gRPC and
//!   over HTTP. (With the old default limit of 4 MiB, rotel's full batches of these spans were
//!   refused.)
//! - A request Skein will never accept (over `--max-request-bytes`) is answered so that rotel
//!   drops it instead of retrying: Skein counts and logs it once, and rotel keeps forwarding.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::{Skein, python, workspace_root};

/// The `rotel-agent` binary of the `rotel` package in the test virtualenv.
fn rotel_agent(python: &Path) -> PathBuf {
    let out = Command::new(python)
        .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
        .output()
        .expect("python runs");
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        out.status.success() && path.exists(),
        "rotel is not installed in {}: run scripts/test, which installs it ({})",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A rotel agent with its default batching, receiving OTLP on its own ports and exporting to
/// `endpoint` with `protocol`.
struct Rotel {
    child: Child,
    dir: tempfile::TempDir,
    grpc_port: u16,
    http_port: u16,
}

impl Rotel {
    fn start(python: &Path, protocol: &str, endpoint: &str) -> Rotel {
        let dir = tempfile::tempdir().unwrap();
        let (grpc_port, http_port) = (free_port(), free_port());
        let child = Command::new(rotel_agent(python))
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http_port}")])
            .args(["--exporter", "otlp", "--otlp-exporter-protocol", protocol])
            .args(["--otlp-exporter-endpoint", endpoint])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.path().join("rotel.log"))
            .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("rotel-agent starts");
        let rotel = Rotel { child, dir, grpc_port, http_port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", grpc_port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "rotel did not listen: {}", rotel.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        rotel
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `send_load.py` against rotel's receiver for `protocol`; returns its JSON summary,
/// after checking that rotel took every span.
fn send_load(
    python: &Path,
    rotel: &Rotel,
    protocol: &str,
    traces: usize,
    chunk: usize,
    parallel: usize,
) -> Json {
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", rotel.grpc_port),
        _ => format!("http://127.0.0.1:{}/v1/traces", rotel.http_port),
    };
    let summary = send_load_to(python, protocol, &endpoint, traces, chunk, parallel);
    assert_eq!(summary["failed"], 0, "rotel took every span from the SDK");
    summary
}

fn send_load_to(
    python: &Path,
    protocol: &str,
    endpoint: &str,
    traces: usize,
    chunk: usize,
    parallel: usize,
) -> Json {
    let out = Command::new(python)
        .arg(workspace_root().join("tests/interop/python/send_load.py"))
        .args(["--protocol", protocol, "--endpoint", endpoint, "--traces", &traces.to_string()])
        .args(["--chunk", &chunk.to_string(), "--parallel", &parallel.to_string()])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "send_load.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("send_load.py prints JSON")
}

/// Waits until Skein has stored `want` spans received over `protocol`.
fn wait_for_spans(skein: &Skein, protocol: &str, want: f64, rotel: &Rotel) {
    let series = format!("skein_spans_received_total{{protocol=\"{protocol}\"}}");
    let started = Instant::now();
    loop {
        let got = skein.metric(&series);
        if got >= want {
            assert_eq!(got, want, "no span stored twice");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{got} of {want} spans arrived through rotel\nskein: {}\nrotel: {}",
            skein.log(),
            rotel.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every trace has its 7 spans, one root, and every other span's parent.
fn assert_connected(skein: &Skein, trace_ids: &[Json]) {
    for id in trace_ids {
        let (status, body) = skein.get(&format!("/api/traces/{}", id.as_str().unwrap()));
        assert_eq!(status, 200, "{body}");
        let spans = body["data"][0]["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 7, "trace {id}");
        let ids: Vec<&Json> = spans.iter().map(|s| &s["spanID"]).collect();
        let mut roots = 0;
        for span in spans {
            match span["references"].as_array().unwrap().iter().find(|r| r["refType"] == "CHILD_OF") {
                Some(parent) => assert!(ids.contains(&&parent["spanID"]), "trace {id}: a parent is missing"),
                None => roots += 1,
            }
        }
        assert_eq!(roots, 1, "trace {id}");
    }
}

#[test]
fn rotel_with_default_batching_forwards_every_span_over_grpc_and_http() {
    let Some(python) = python() else { return };
    let skein = Skein::start();
    for (protocol, endpoint) in [("grpc", skein.grpc.clone()), ("http", skein.otlp_http.clone())] {
        let rotel = Rotel::start(&python, protocol, &endpoint);
        // 21,000 spans of ~550 bytes, sent fast enough that rotel fills batches of 8,192
        // (4.5 MB, over the 4 MiB that used to be Skein's limit).
        let summary = send_load(&python, &rotel, protocol, 3000, 2048, 4);
        assert_eq!(summary["spans"], 21_000);
        wait_for_spans(&skein, protocol, 21_000.0, &rotel);
        let ids = summary["trace_ids"].as_array().unwrap();
        // Every trace of the first and last few hundred, and a stride through the rest.
        let sample: Vec<Json> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < 300 || *i >= ids.len() - 300 || i % 10 == 0)
            .map(|(_, id)| id.clone())
            .collect();
        assert_connected(&skein, &sample);
    }
    assert_eq!(skein.metric("skein_requests_refused_total{protocol=\"grpc\",reason=\"too_large\"}"), 0.0);
}

/// Skein limited to 1 MiB requests; rotel forwards one batch of 4,102 spans (~2.2 MB).
fn oversize_through_rotel(protocol: &str) {
    let Some(python) = python() else { return };
    let skein = Skein::start_with(&["--max-request-bytes", "1048576"]);
    let endpoint = if protocol == "grpc" { skein.grpc.clone() } else { skein.otlp_http.clone() };
    let rotel = Rotel::start(&python, protocol, &endpoint);
    send_load(&python, &rotel, protocol, 586, 4096, 1);
    let series = format!("skein_requests_refused_total{{protocol=\"{protocol}\",reason=\"too_large\"}}");
    let started = Instant::now();
    while skein.metric(&series) < 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "rotel never forwarded the batch: {}",
            rotel.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // rotel retries a retryable answer after 5 s, then backs off; wait past two attempts.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(skein.metric(&series), 1.0, "refused once, never retried");
    assert_eq!(skein.log().matches("otlp request refused").count(), 1, "logged once: {}", skein.log());
    assert!(skein.log().contains("raise --max-request-bytes"), "{}", skein.log());
    // rotel dropped it and keeps forwarding. (The last 6 spans of the load may have gone
    // out in a batch of their own, and been stored.)
    let before = skein.metric(&format!("skein_spans_received_total{{protocol=\"{protocol}\"}}"));
    assert!(before == 0.0 || before == 6.0, "{before}");
    let summary = send_load(&python, &rotel, protocol, 10, 512, 1);
    wait_for_spans(&skein, protocol, before + 70.0, &rotel);
    assert_connected(&skein, summary["trace_ids"].as_array().unwrap());
}

#[test]
fn an_oversize_request_through_rotel_over_grpc_is_dropped_not_retried() {
    oversize_through_rotel("grpc");
}

#[test]
fn an_oversize_request_through_rotel_over_http_is_dropped_not_retried() {
    oversize_through_rotel("http");
}

/// The Python SDK's exporters, sending straight to Skein, give up on a request too large to
/// ever be accepted at once (`INVALID_ARGUMENT` over gRPC, `413` over HTTP) instead of
/// retrying it, and report the spans as failed.
#[test]
fn the_python_sdk_does_not_retry_an_oversize_request() {
    let Some(python) = python() else { return };
    let skein = Skein::start_with(&["--max-request-bytes", "1048576"]);
    for (protocol, endpoint) in
        [("grpc", skein.grpc.clone()), ("http", format!("{}/v1/traces", skein.otlp_http))]
    {
        let summary = send_load_to(&python, protocol, &endpoint, 586, 4096, 1);
        assert_eq!(summary["failed"], 4096, "{protocol}: the oversize chunk failed, the rest was sent");
        let refused = format!("skein_requests_refused_total{{protocol=\"{protocol}\",reason=\"too_large\"}}");
        assert_eq!(skein.metric(&refused), 1.0, "{protocol}: sent once, not retried");
        let received = format!("skein_spans_received_total{{protocol=\"{protocol}\"}}");
        assert_eq!(skein.metric(&received), 6.0, "{protocol}");
    }
}
