//! Several `skein serve` nodes on one 2-shard ClickHouse cluster (started by `scripts/test`
//! with `scripts/clickhouse-servers`): the OpenTelemetry Python SDK sends to node A and
//! everything is read back through node B; node A is SIGKILLed right after its
//! acknowledgements and a shard is stopped during ingest, and every acknowledged span arrives.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn need(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) => Some(v),
        Err(_) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{name} is not set: CI runs this test through scripts/test, which starts ClickHouse")
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: {name} not set (run scripts/test, which starts ClickHouse and the Python SDK)"
            );
            None
        }
    }
}

struct Node {
    child: Child,
    grpc: String,
    otlp_http: String,
    http: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, url: &str, cluster: &str, database: &str) -> Node {
    let (child, l) = skein_bench::spawn_listening(
        skein_bench::serve_command(Path::new(env!("CARGO_BIN_EXE_skein")), data)
            .args(["--storage", "clickhouse", "--clickhouse-url", url, "--clickhouse-cluster", cluster])
            .args(["--clickhouse-database", database])
            .stderr(Stdio::null()),
    )
    .expect("skein serve --storage clickhouse starts");
    Node { child, grpc: l.otlp_grpc, otlp_http: l.otlp_http, http: l.http }
}

/// Trace ids spread over both shards (their first bytes differ).
fn batch(round: u32, n: u32) -> (String, String) {
    let trace_id = format!("{:08x}{round:08x}{n:016x}", n.wrapping_mul(2_654_435_761));
    let body = support::otlp_json_batch(&trace_id, "ch-e2e", n);
    (trace_id, body)
}

struct Api {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Api {
    fn get(&self, url: &str) -> (u16, Json) {
        self.rt.block_on(async {
            match self.client.get(url).send().await {
                Ok(resp) => (resp.status().as_u16(), resp.json().await.unwrap_or(Json::Null)),
                Err(_) => (0, Json::Null),
            }
        })
    }

    fn post(&self, url: &str, body: String) -> u16 {
        self.rt.block_on(async {
            self.client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    }

    /// Sends `count` batches of 5 spans; returns the trace ids acknowledged.
    fn send(&self, node: &Node, round: u32, count: u32) -> Vec<String> {
        let mut acknowledged = Vec::new();
        for n in 0..count {
            let (id, body) = batch(round, n);
            let status = self.post(&format!("{}/v1/traces", node.otlp_http), body);
            assert_eq!(status, 200, "batch {n} of round {round} acknowledged");
            acknowledged.push(id);
        }
        acknowledged
    }

    /// Waits until every trace is readable at `http` with all 5 spans.
    fn wait_for_all(&self, http: &str, ids: &[String], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut missing: Vec<&String> = ids.iter().collect();
        while !missing.is_empty() {
            missing.retain(|id| {
                let (status, body) = self.get(&format!("{http}/api/traces/{id}"));
                !(status == 200 && body["data"][0]["spans"].as_array().is_some_and(|s| s.len() == 5))
            });
            assert!(
                missing.is_empty() || Instant::now() < deadline,
                "{what}: {} of {} acknowledged traces never arrived, e.g. {}",
                missing.len(),
                ids.len(),
                missing[0]
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn servers(command: &str, name: &str) {
    let dir = std::env::var("SKEIN_TEST_CLICKHOUSE_DIR").expect("set with the cluster's URL");
    let status = Command::new(workspace_root().join("scripts/clickhouse-servers"))
        .args([command, &dir, name])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "clickhouse-servers {command} {name}");
}

#[test]
fn two_nodes_on_a_two_shard_cluster_lose_nothing_acknowledged() {
    let (Some(url), Some(cluster), Some(python)) = (
        need("SKEIN_TEST_CLICKHOUSE_CLUSTER_URL"),
        need("SKEIN_TEST_CLICKHOUSE_CLUSTER"),
        need("SKEIN_PYTHON"),
    ) else {
        return;
    };
    let database = format!("e2e_{}", std::process::id());
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = start(data_a.path(), &url, &cluster, &database);
    let b = start(data_b.path(), &url, &cluster, &database);
    let api = Api {
        rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
        client: reqwest::Client::new(),
    };

    // 1. The Python SDK sends to A over gRPC; B shows the whole trace, every field.
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/interop/python/send_trace.py"))
        .args(["--protocol", "grpc", "--endpoint", &a.grpc, "--service", "py-shop"])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    let ids: Json = serde_json::from_slice(&out.stdout).unwrap();
    let trace_id = ids["trace_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let trace = loop {
        let (status, body) = api.get(&format!("{}/api/traces/{trace_id}", b.http));
        if status == 200 {
            break body["data"][0].clone();
        }
        assert!(Instant::now() < deadline, "node B never showed the trace node A acknowledged ({status})");
        std::thread::sleep(Duration::from_millis(200));
    };
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    let root = spans.iter().find(|s| s["spanID"] == ids["root_span_id"]).expect("root span");
    assert_eq!(root["operationName"], "POST /orders");
    assert_eq!(trace["processes"][root["processID"].as_str().unwrap()]["serviceName"], "py-shop");
    let status_tag =
        root["tags"].as_array().unwrap().iter().find(|t| t["key"] == "http.response.status_code");
    assert_eq!(status_tag.unwrap()["value"], 502);
    for node in [&a, &b] {
        let (_, services) = api.get(&format!("{}/api/services", node.http));
        assert!(services["data"].as_array().unwrap().iter().any(|s| s == "py-shop"), "{services}");
        let (_, found) =
            api.get(&format!("{}/api/traces?service=py-shop&tags=%7B%22retry%22%3A%22true%22%7D", node.http));
        assert_eq!(found["data"].as_array().map(Vec::len), Some(1), "tag search on every node: {found}");
    }

    // 2. A is SIGKILLed right after acknowledging: its buffer delivers after the restart.
    let acknowledged = api.send(&a, 1, 40);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    let a = start(data_a.path(), &url, &cluster, &database);
    api.wait_for_all(&b.http, &acknowledged, "after kill -9 of node A");

    // 3. A shard is down during ingest: A keeps acknowledging into its buffer and still finds
    //    those spans itself; when the shard returns, B sees every one.
    servers("stop-one", "shard2");
    let during = api.send(&a, 2, 40);
    let (status, body) = api.get(&format!("{}/api/traces/{}", a.http, during[0]));
    assert_eq!(
        (status, body["data"][0]["spans"].as_array().map(Vec::len)),
        (200, Some(5)),
        "buffered trace on A"
    );
    servers("start-one", "shard2");
    api.wait_for_all(&b.http, &during, "after the shard came back");
    api.wait_for_all(&b.http, &acknowledged, "earlier traces, after the shard came back");
}
