//! `skein serve` as a user runs it: the listening line, flags and their `SKEIN_*` variables,
//! clear errors for what cannot be served, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skein() -> Command {
    Command::new(env!("CARGO_BIN_EXE_skein"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn serve_prints_the_listening_line_honours_env_vars_and_stops_on_sigterm() {
    let (g, o, h) = (free_port(), free_port(), free_port());
    let data = tempfile::tempdir().unwrap();
    let mut child = skein()
        .args(["serve", "--otlp-grpc-addr", &format!("127.0.0.1:{g}")])
        .env("SKEIN_DATA_DIR", data.path())
        .env("SKEIN_OTLP_HTTP_ADDR", format!("127.0.0.1:{o}"))
        .env("SKEIN_HTTP_ADDR", format!("127.0.0.1:{h}"))
        .env("SKEIN_MEMORY_MAX_SPANS", "10")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(
        line.trim_end(),
        format!(
            "listening otlp-grpc=http://127.0.0.1:{g} otlp-http=http://127.0.0.1:{o} http=http://127.0.0.1:{h}"
        )
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let healthz = rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{h}/healthz")).await.unwrap().text().await.unwrap()
    });
    assert_eq!(healthz, "ok\n");
    let readyz =
        rt.block_on(async { reqwest::get(format!("http://127.0.0.1:{h}/readyz")).await.unwrap().status() });
    assert_eq!(readyz, 200);

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "skein exits cleanly on SIGTERM: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "skein did not stop within 20s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clickhouse_that_is_not_running_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let out = skein_bench::serve_command(std::path::Path::new(env!("CARGO_BIN_EXE_skein")), data.path())
        .args(["--storage", "clickhouse", "--clickhouse-url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot use ClickHouse storage: cannot reach ClickHouse at http://127.0.0.1:1/")
            && stderr.contains("is ClickHouse running? Point --clickhouse-url at its HTTP interface"),
        "{stderr}"
    );
}

#[test]
fn a_data_dir_in_use_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_skein"));
    let mut first = skein_bench::serve_command(exe, data.path()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(first.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let out = skein_bench::serve_command(exe, data.path()).output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another skein process; stop it or choose another --data-dir"),
        "{stderr}"
    );
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = skein()
        .env("SKEIN_DATA_DIR", data.path())
        .args([
            "serve",
            "--http-addr",
            &addr,
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot listen on {addr} for http")), "{stderr}");
    assert!(stderr.contains("pick another address with --http-addr"), "{stderr}");
}

#[test]
fn bad_flag_values_are_refused() {
    let out = skein().args(["serve", "--retention", "forever"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("invalid value 'forever' for '--retention <RETENTION>'")
    );
    let out = skein().args(["serve"]).env("SKEIN_STORAGE", "cassandra").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'cassandra'"));
}
