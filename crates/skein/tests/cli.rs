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

/// Token files are re-read on SIGHUP: a revoked token stops working and a new one works,
/// without a restart. `skein doctor --token-file` talks to the protected server.
#[test]
#[cfg(unix)]
fn tokens_are_reloaded_on_sighup_and_the_cli_can_use_them() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("query-tokens");
    std::fs::write(&tokens, "# readers\nold-token\n").unwrap();
    let h = free_port();
    let mut child = skein()
        .args(["serve", "--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0"])
        .args(["--http-addr", &format!("127.0.0.1:{h}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("SKEIN_QUERY_TOKEN_FILE", &tokens)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening"), "{line}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = |token: &str| {
        rt.block_on(async {
            reqwest::Client::new()
                .get(format!("http://127.0.0.1:{h}/api/services"))
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    assert_eq!(status("old-token"), 200);
    assert_eq!(status("new-token"), 401);
    std::fs::write(&tokens, "new-token\n").unwrap();
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while status("new-token") != 200 {
        assert!(Instant::now() < deadline, "the new token works after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status("old-token"), 401, "the revoked token no longer works");

    // The doctor reads a token file; without it, it says Skein refused.
    let doctor = |args: &[&str]| {
        skein()
            .args(["doctor", "--server", &format!("http://127.0.0.1:{h}"), "--json", "--wait", "0s"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = doctor(&["--token-file", tokens.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = doctor(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));

    let _ = child.kill();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    let _ = child.wait();
    assert!(log.contains("token files reloaded"), "{log}");
    assert!(!log.contains("old-token") && !log.contains("new-token"), "tokens never logged: {log}");
}

/// A listener other machines can reach without a token file gets a warning naming the port and
/// the flag that closes it.
#[test]
fn an_open_listener_on_a_public_address_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = skein()
        .args(["serve", "--otlp-grpc-addr", "0.0.0.0:0", "--otlp-http-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    let _ = child.wait();
    let port = line.split("otlp-grpc=http://0.0.0.0:").nth(1).unwrap().split(' ').next().unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("needs no token")).collect();
    assert_eq!(warnings.len(), 1, "only the public listener: {log}");
    assert!(
        warnings[0].contains(&format!("port {port}")) && warnings[0].contains("--ingest-token-file"),
        "{log}"
    );
}

/// `skein serve` with TLS, and the CLIs talking to it with `--ca-cert`: the doctor over
/// https, and the bench sending OTLP over gRPC with TLS and querying over https.
#[test]
fn the_clis_talk_to_a_tls_skein_with_its_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert_file, key_file, ca_file) =
        (write("cert.pem", cert.pem()), write("key.pem", key.serialize_pem()), write("ca.pem", ca.pem()));
    let mut child = skein()
        .args(["serve", "--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--http-addr"])
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("SKEIN_TLS_CERT", &cert_file)
        .env("SKEIN_TLS_KEY", &key_file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {line}"))
            .to_owned()
    };
    let (grpc, http) = (url("otlp-grpc"), url("http"));
    assert!(grpc.starts_with("https://") && http.starts_with("https://"), "{line}");
    let ca = ca_file.to_str().unwrap();

    let bench = skein()
        .args(["bench", "--target", &grpc, "--query-url", &http, "--ca-cert", ca])
        .args(["--spans", "2000", "--queries", "3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&bench.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["spans_accepted"], 2000, "{report}");

    let doctor = skein()
        .args(["doctor", "--server", &http, "--ca-cert", ca, "--json", "--wait", "0s"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&doctor.stderr)));
    assert!(report["traces"].as_u64().unwrap() > 0, "{report}");
    // Without the CA, the doctor cannot trust the server, and says so.
    let refused = skein().args(["doctor", "--server", &http, "--wait", "0s"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));

    let _ = child.kill();
    let _ = child.wait();
}
