//! `skein demo` end to end: the real binary runs Skein, the shop (frontend, checkout, cart,
//! SQLite, a real redis-server) and a few requests; the test reads the traces back through the
//! Jaeger API and checks that one request is one connected trace, and that each `--break` mode
//! splits it exactly where the pitfall it imitates would.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

const REQUESTS: usize = 3;

/// A running `skein demo` child; killed on drop if the test fails first.
struct Demo {
    child: Child,
    http: String,
    stdout: Vec<String>,
    stderr: std::sync::mpsc::Receiver<String>,
    _data: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `skein demo` with `args` and waits until it reports that its requests are done.
fn demo(args: &[&str], path: Option<&str>) -> Demo {
    demo_with(REQUESTS, args, path)
}

fn demo_with(requests: usize, args: &[&str], path: Option<&str>) -> Demo {
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skein"));
    cmd.args(["demo", "--http-addr", "127.0.0.1:0", "--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr"])
        .args(["127.0.0.1:0", "--requests"])
        .arg(requests.to_string());
    // Defaults for the traffic unless the test sets them.
    for (flag, value) in [("--rate", "20"), ("--fail-ratio", "0"), ("--slow-ratio", "0")] {
        if !args.contains(&flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.arg("--data-dir").arg(data.path()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    let mut child = cmd.spawn().expect("skein demo starts");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    // Keep stderr drained (the shop logs there) and available for assertions.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut http = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(l) = skein_bench::parse_listening(&line) {
            http = Some(l.http);
        }
        let done = line.starts_with("skein demo: sent");
        lines.push(line);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not finish its requests: {lines:?}");
    }
    let http = http.unwrap_or_else(|| panic!("no listening line: {lines:?}"));
    Demo { child, http, stdout: lines, stderr: rx, _data: data }
}

/// One span as the test looks at it.
#[derive(Clone, Debug)]
struct S {
    trace: String,
    id: String,
    parent: Option<String>,
    service: String,
    name: String,
    kind: String,
    tags: BTreeMap<String, Json>,
}

impl Demo {
    /// Waits up to 10 s for a line on stderr that satisfies `want`; returns what was read.
    fn stderr_until(&self, want: impl Fn(&str) -> bool) -> (bool, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            let hit = want(&line);
            seen.push(line);
            if hit {
                return (true, seen);
            }
        }
        (false, seen)
    }

    /// Every trace with a span of the shop's services, by trace id.
    fn traces(&self) -> BTreeMap<String, Vec<S>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut traces = BTreeMap::new();
        for service in ["frontend", "checkout", "cart"] {
            let url = format!("{}/api/traces?service={service}&lookback=1h&limit=1000", self.http);
            let body: Json = rt.block_on(async { reqwest::get(&url).await.unwrap().json().await.unwrap() });
            for t in body["data"].as_array().unwrap() {
                let id = t["traceID"].as_str().unwrap().to_owned();
                let spans = t["spans"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        let tags: BTreeMap<String, Json> = s["tags"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|t| (t["key"].as_str().unwrap().to_owned(), t["value"].clone()))
                            .collect();
                        S {
                            trace: id.clone(),
                            id: s["spanID"].as_str().unwrap().to_owned(),
                            parent: s["references"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .find(|r| r["refType"] == "CHILD_OF")
                                .map(|r| r["spanID"].as_str().unwrap().to_owned()),
                            service: t["processes"][s["processID"].as_str().unwrap()]["serviceName"]
                                .as_str()
                                .unwrap()
                                .to_owned(),
                            name: s["operationName"].as_str().unwrap().to_owned(),
                            kind: tags
                                .get("span.kind")
                                .and_then(|k| k.as_str())
                                .unwrap_or("internal")
                                .to_owned(),
                            tags,
                        }
                    })
                    .collect();
                traces.insert(id, spans);
            }
        }
        traces
    }

    /// `skein doctor --grace 0s --json` against this demo: (exit code, report).
    fn doctor(&self) -> (i32, Json) {
        let out = Command::new(env!("CARGO_BIN_EXE_skein"))
            .args(["doctor", "--server", &self.http, "--grace", "0s", "--json"])
            .output()
            .unwrap();
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor prints JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), report)
    }

    /// The doctor's broken findings as (kind, service, peer, operation, count); checks the exit code.
    fn doctor_breaks(&self) -> Vec<(String, String, String, String, u64)> {
        let (code, report) = self.doctor();
        let breaks: Vec<_> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["broken"] == true)
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().to_owned(),
                    f["service"].as_str().unwrap().to_owned(),
                    f["peer"].as_str().unwrap_or("").to_owned(),
                    f["operation"].as_str().unwrap().to_owned(),
                    f["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(code, if breaks.is_empty() { 0 } else { 1 }, "doctor's exit code: {report:#}");
        breaks
    }

    /// Stops the demo as a user does (Ctrl-C) and checks that it exits cleanly.
    fn interrupt(mut self) {
        let status = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "skein demo exits cleanly on Ctrl-C: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "skein demo did not stop within 30s of Ctrl-C");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The one span of `trace` with this service and name.
fn find<'a>(trace: &'a [S], service: &str, name: &str) -> &'a S {
    let found: Vec<&S> = trace.iter().filter(|s| s.service == service && s.name == name).collect();
    assert_eq!(found.len(), 1, "one {service} {name:?} span in {:#?}", names(trace));
    found[0]
}

fn has(trace: &[S], service: &str, name: &str) -> bool {
    trace.iter().any(|s| s.service == service && s.name == name)
}

fn names(trace: &[S]) -> Vec<String> {
    trace.iter().map(|s| format!("{} {} ({})", s.service, s.name, s.kind)).collect()
}

fn root(trace: &[S]) -> &S {
    let roots: Vec<&S> = trace.iter().filter(|s| s.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one root in {:#?}", names(trace));
    roots[0]
}

fn assert_child(trace: &[S], parent: &S, child: &S) {
    assert_eq!(
        child.parent.as_deref(),
        Some(parent.id.as_str()),
        "{} is a child of {}",
        child.name,
        parent.name
    );
    assert_eq!(child.trace, parent.trace);
    assert!(trace.iter().all(|s| s.trace == parent.trace));
}

/// Every span's parent is in the trace, and there is one root.
fn assert_connected(trace: &[S]) {
    root(trace);
    for s in trace {
        if let Some(p) = &s.parent {
            assert!(
                trace.iter().any(|x| &x.id == p),
                "the parent of {} is in the trace: {:#?}",
                s.name,
                names(trace)
            );
        }
    }
}

/// The parts of one request that stay together in every mode, checked wherever they are.
fn check_checkout_internals(trace: &[S], with_confirmation: bool) {
    let server = find(trace, "checkout", "shop.Checkout/PlaceOrder");
    let server = if server.kind == "server" { server } else { panic!("checkout's span is a server span") };
    let select = find(trace, "checkout", "SELECT products");
    assert_child(trace, server, select);
    assert_eq!(select.tags["db.system.name"], "sqlite");
    assert_eq!(select.tags["db.query.text"], "SELECT id, name, price_cents FROM products ORDER BY id");
    assert_eq!(select.kind, "client");
    let insert = find(trace, "checkout", "INSERT orders");
    assert_child(trace, server, insert);
    assert_eq!(
        insert.tags["db.query.text"],
        "INSERT INTO orders (id, user_id, total_cents) VALUES (?, ?, ?)"
    );
    let charge = find(trace, "checkout", "charge card");
    assert_child(trace, server, charge);
    assert_eq!(charge.kind, "client");
    assert_eq!(charge.tags["payment.provider"], "acme-pay");
    assert!(charge.tags["payment.amount_cents"].as_i64().unwrap() > 0);
    if with_confirmation {
        assert_child(trace, server, find(trace, "checkout", "send confirmation"));
    } else {
        assert!(!has(trace, "checkout", "send confirmation"));
    }
}

fn check_cart(trace: &[S], cart_server: &S) {
    assert_eq!(cart_server.kind, "server");
    let hget = find(trace, "cart", "HGETALL");
    assert_child(trace, cart_server, hget);
    assert_eq!(hget.tags["db.system.name"], "redis");
    assert_eq!(hget.tags["db.query.text"], "HGETALL ?", "argument values are not recorded");
}

#[test]
fn a_request_is_one_connected_trace_across_http_grpc_sql_redis_and_a_spawned_task() {
    let demo = demo(&[], None);
    assert!(
        demo.stdout
            .iter()
            .any(|l| l.contains(&format!("open the UI at {}/search?service=frontend", demo.http))),
        "the demo says where the UI is: {:#?}",
        demo.stdout
    );
    let traces = demo.traces();
    assert_eq!(
        traces.len(),
        REQUESTS,
        "one trace per request: {:#?}",
        traces.values().map(|t| names(t)).collect::<Vec<_>>()
    );
    for trace in traces.values() {
        assert_connected(trace);
        let root = root(trace);
        assert_eq!(
            (root.service.as_str(), root.name.as_str(), root.kind.as_str()),
            ("frontend", "GET /checkout", "server")
        );
        assert_child(trace, root, find(trace, "frontend", "authenticate"));
        let grpc_client = find(trace, "frontend", "shop.Checkout/PlaceOrder");
        assert_eq!(grpc_client.kind, "client");
        assert_eq!(grpc_client.tags["rpc.system.name"], "grpc");
        assert_child(trace, root, grpc_client);
        let grpc_server = trace.iter().find(|s| s.service == "checkout" && s.kind == "server").unwrap();
        assert_child(trace, grpc_client, grpc_server);
        check_checkout_internals(trace, true);
        // `fetch_cart` is a `#[tracing::instrument]`ed function: its span sits between the
        // gRPC server span and the HTTP call made inside it.
        let fetch_cart = find(trace, "checkout", "fetch_cart");
        assert_child(trace, grpc_server, fetch_cart);
        assert!(fetch_cart.tags["enduser.id"].as_str().unwrap().starts_with("user-"));
        let http_client = find(trace, "checkout", "GET");
        assert_child(trace, fetch_cart, http_client);
        let price = find(trace, "checkout", "price");
        assert_child(trace, grpc_server, price);
        assert!(price.tags["shop.total_cents"].as_i64().unwrap() > 0);
        let cart_server = find(trace, "cart", "GET /cart/{user}");
        assert_child(trace, http_client, cart_server);
        check_cart(trace, cart_server);
    }
    let (found, seen) = demo.stderr_until(|l| l.contains("placing order"));
    assert!(found, "{seen:#?}");
    let line = seen.last().unwrap();
    let ids: Vec<&String> = traces.keys().collect();
    assert!(
        ids.iter().any(|id| line.contains(&format!("trace_id={id}"))),
        "a log line inside a span carries its trace id: {line}"
    );
    demo.interrupt();
}

#[test]
fn break_spawn_loses_the_background_task() {
    let demo = demo(&["--break", "spawn"], None);
    let traces = demo.traces();
    assert_eq!(traces.len(), 2 * REQUESTS, "each request splits in two");
    let (tasks, requests): (Vec<_>, Vec<_>) = traces.values().partition(|t| t.len() == 1);
    assert_eq!(tasks.len(), REQUESTS);
    for t in tasks {
        let s = &t[0];
        assert_eq!(
            (s.service.as_str(), s.name.as_str(), s.parent.as_deref()),
            ("checkout", "send confirmation", None)
        );
    }
    for t in requests {
        assert_connected(t);
        check_checkout_internals(t, false);
        assert!(has(t, "cart", "HGETALL"), "everything else stays in the request's trace");
    }
    let n = REQUESTS as u64;
    assert_eq!(
        demo.doctor_breaks(),
        [("detached_work".into(), "checkout".into(), String::new(), "send confirmation".into(), n)],
        "the doctor names the spawned task"
    );
    demo.interrupt();
}

#[test]
fn break_middleware_splits_the_frontend_from_everything_behind_it() {
    let demo = demo(&["--break", "middleware"], None);
    let traces = demo.traces();
    assert_eq!(traces.len(), 2 * REQUESTS);
    let (front, back): (Vec<_>, Vec<_>) = traces.values().partition(|t| root(t).name == "GET /checkout");
    assert_eq!(front.len(), REQUESTS);
    for t in front {
        assert_connected(t);
        let mut n = names(t);
        n.sort();
        assert_eq!(n, ["frontend GET /checkout (server)", "frontend authenticate (internal)"]);
    }
    for t in back {
        assert_connected(t);
        let r = root(t);
        assert_eq!(
            (r.service.as_str(), r.name.as_str(), r.kind.as_str()),
            ("frontend", "shop.Checkout/PlaceOrder", "client")
        );
        check_checkout_internals(t, true);
        check_cart(t, find(t, "cart", "GET /cart/{user}"));
    }
    let n = REQUESTS as u64;
    assert_eq!(
        demo.doctor_breaks(),
        [("detached_work".into(), "frontend".into(), String::new(), "shop.Checkout/PlaceOrder".into(), n)],
        "the doctor names the frontend, where the middleware dropped the context"
    );
    demo.interrupt();
}

#[test]
fn break_client_splits_the_cart_from_its_caller() {
    let demo = demo(&["--break", "client"], None);
    let traces = demo.traces();
    assert_eq!(traces.len(), 2 * REQUESTS);
    let (carts, requests): (Vec<_>, Vec<_>) = traces.values().partition(|t| root(t).service == "cart");
    assert_eq!(carts.len(), REQUESTS);
    for t in carts {
        assert_connected(t);
        check_cart(t, root(t));
        assert!(t.iter().all(|s| s.service == "cart"));
    }
    for t in requests {
        assert_connected(t);
        check_checkout_internals(t, true);
        // The client span is there, but nothing joined it.
        let client = find(t, "checkout", "GET");
        assert_eq!(client.kind, "client");
        assert!(
            t.iter().all(|s| s.parent.as_deref() != Some(client.id.as_str())),
            "no child under the client span"
        );
        assert!(!t.iter().any(|s| s.service == "cart"));
    }
    let n = REQUESTS as u64;
    assert_eq!(
        demo.doctor_breaks(),
        [("split_trace".into(), "checkout".into(), "cart".into(), "GET".into(), n)],
        "the doctor names the edge checkout → cart"
    );
    let (_, report) = demo.doctor();
    let edge = report["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["caller"] == "checkout" && e["callee"] == "cart")
        .unwrap();
    assert_eq!(
        (edge["joined"].as_u64(), edge["split"].as_u64(), edge["health"].as_f64()),
        (Some(0), Some(n), Some(0.0))
    );
    // As the README tells users to run it after their tests, with no --grace: the requests
    // ended moments ago, yet nothing is silently missed. The doctor waits until the ingest is
    // quiet (every exporter flushed), then judges every trace and exits 1.
    let out = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["doctor", "--server", &demo.http, "--lookback", "15m"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("BROKEN checkout → cart [split_trace]: 3 seen"), "{text}");
    assert!(text.contains("every span is judged"), "{text}");
    demo.interrupt();
}

#[test]
fn without_redis_server_the_demo_says_how_to_install_it_and_runs_the_cart_without_cache() {
    // A PATH without redis-server.
    let demo = demo(&[], Some("/nonexistent"));
    let (found, seen) = demo.stderr_until(|l| l.contains("redis-server is not on PATH"));
    assert!(found, "the demo says why there is no cache: {seen:#?}");
    let (found, seen) = demo.stderr_until(|l| l.contains("apt-get install redis-server"));
    assert!(found, "and how to install it: {seen:#?}");
    let traces = demo.traces();
    assert_eq!(traces.len(), REQUESTS);
    for trace in traces.values() {
        assert_connected(trace);
        assert!(has(trace, "cart", "GET /cart/{user}"));
        assert!(!has(trace, "cart", "HGETALL"));
    }
    demo.interrupt();
}

#[test]
fn the_doctor_finds_nothing_wrong_with_a_healthy_shop_over_1000_requests() {
    let demo = demo_with(1000, &["--rate", "400", "--fail-ratio", "0.1"], None);
    assert_eq!(demo.doctor_breaks(), vec![], "no broken chain");
    let (_, report) = demo.doctor();
    let edges = report["edges"].as_array().unwrap();
    let joined = |a: &str, b: &str| {
        let e = edges.iter().find(|e| e["caller"] == a && e["callee"] == b).unwrap();
        assert_eq!(e["health"].as_f64(), Some(1.0));
        e["joined"].as_u64().unwrap()
    };
    assert_eq!(joined("frontend", "checkout"), 1000);
    assert!(joined("checkout", "cart") >= 1000);
    // The payment provider has no server spans: a note, not a break.
    let notes: Vec<&Json> =
        report["findings"].as_array().unwrap().iter().filter(|f| f["broken"] == false).collect();
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0]["kind"].as_str(), notes[0]["peer"].as_str()),
        (Some("uninstrumented_peer"), Some("acme-pay"))
    );
    demo.interrupt();
}

/// `skein demo --token-file`: the demo's Skein asks for a token to send and to read; the shop's
/// services send it (skein-otel's `header`), so every request still arrives whole, and the query
/// API answers only with the token.
#[test]
fn the_demo_behind_a_token_still_traces_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# demo\ndemo-token-93d1\n").unwrap();
    let demo = demo(&["--token-file", tokens.to_str().unwrap()], None);
    assert!(demo.stdout.iter().any(|l| l.contains("it asks for a token")), "{:?}", demo.stdout);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let get = |token: Option<&str>| {
        rt.block_on(async {
            let mut request =
                reqwest::Client::new().get(format!("{}/api/traces?service=frontend&limit=100", demo.http));
            if let Some(t) = token {
                request = request.header("authorization", format!("Bearer {t}"));
            }
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Json>().await.unwrap())
        })
    };
    assert_eq!(get(None).0, 401);
    let (status, body) = get(Some("demo-token-93d1"));
    assert_eq!(status, 200);
    let traces = body["data"].as_array().unwrap();
    assert_eq!(traces.len(), REQUESTS, "every request arrived with the token");
    for t in traces {
        let services: std::collections::BTreeSet<&str> = t["processes"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p["serviceName"].as_str().unwrap())
            .collect();
        assert!(services.contains("checkout") && services.contains("cart"), "{services:?}");
    }
    demo.interrupt();
}
