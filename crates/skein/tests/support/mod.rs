#![allow(dead_code)]

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

pub fn workspace_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The Python with the OTel SDK (and rotel): `SKEIN_PYTHON`, else `.venv/bin/python` at the
/// root, as `scripts/test` makes it. Missing, it fails under `CI` and skips elsewhere.
pub fn python() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("SKEIN_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "no Python with the OpenTelemetry SDK at {}: run scripts/test, which installs it",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A `skein serve` child process on ports the OS picks, with `args` added; its stderr (the
/// log) goes to a file in its data directory.
pub struct Skein {
    data: tempfile::TempDir,
    child: std::process::Child,
    pub grpc: String,
    pub otlp_http: String,
    pub http: String,
}

impl Skein {
    pub fn start() -> Skein {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Skein {
        let data = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(data.path().join("skein.log")).unwrap();
        let mut command = skein_bench::serve_command(
            std::path::Path::new(env!("CARGO_BIN_EXE_skein")),
            &data.path().join("data"),
        );
        command.args(args).stderr(log);
        let (child, l) = skein_bench::spawn_listening(&mut command).expect("skein serve starts");
        Skein { data, grpc: l.otlp_grpc, otlp_http: l.otlp_http, http: l.http, child }
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let resp = reqwest::get(format!("{}{path}", self.http)).await.unwrap();
            (resp.status().as_u16(), resp.json().await.unwrap())
        })
    }

    /// The value of one series of `/metrics`, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let text = rt.block_on(async {
            reqwest::get(format!("{}/metrics", self.http)).await.unwrap().text().await.unwrap()
        });
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("skein.log")).unwrap_or_default()
    }
}

impl Drop for Skein {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
