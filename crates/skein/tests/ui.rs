//! The web UI in a real headless Chromium (Debian's `chromium`, driven by `playwright-core`)
//! against the real `skein serve`: `tests/ui/*.test.mjs`, run with Node's test runner.
//!
//! `scripts/test` installs what this needs (Chromium from Debian, `playwright-core` from npm into
//! `tests/ui/node_modules`). Set `SKEIN_SCREENSHOT_DIR` to keep the screenshots (the README's are
//! made with `SKEIN_SCREENSHOT_DIR=docs/screenshots`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// What the browser tests need, or why they cannot run (a failure under CI, a skip otherwise).
fn requirements(root: &Path) -> Result<PathBuf, String> {
    let chromium =
        std::env::var_os("SKEIN_CHROMIUM").map(PathBuf::from).unwrap_or("/usr/bin/chromium".into());
    if !chromium.exists() {
        return Err(format!("no Chromium at {}: run scripts/test, which installs it", chromium.display()));
    }
    if !root.join("tests/ui/node_modules/playwright-core").exists() {
        return Err(
            "tests/ui/node_modules has no playwright-core: run scripts/test, which installs it".into()
        );
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(chromium),
        _ => Err("no `node` on PATH (Node.js ≥ 20 runs the browser tests)".into()),
    }
}

#[test]
fn web_ui_in_headless_chromium() {
    let root = workspace_root();
    let chromium = match requirements(&root) {
        Ok(c) => c,
        Err(msg) if std::env::var_os("CI").is_some() => panic!("{msg}"),
        Err(msg) => {
            eprintln!("SKIPPED: {msg}");
            return;
        }
    };
    let data = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_skein"));
    let (mut server, listening) =
        skein_bench::spawn_listening(&mut skein_bench::serve_command(exe, data.path())).unwrap();
    // A second Skein behind a query token, for the login page.
    let protected_data = tempfile::tempdir().unwrap();
    let tokens = protected_data.path().join("query-tokens");
    std::fs::write(&tokens, "ui-login-token-4c1e\n").unwrap();
    let (mut protected, protected_listening) = skein_bench::spawn_listening(
        skein_bench::serve_command(exe, &protected_data.path().join("data"))
            .arg("--query-token-file")
            .arg(&tokens),
    )
    .unwrap();

    let out = Command::new("node")
        .args(["--test", "--test-reporter=spec", "--test-concurrency=1"])
        .args(["tests/ui/model.test.mjs", "tests/ui/ui.test.mjs", "tests/ui/login.test.mjs"])
        .current_dir(&root)
        .env("SKEIN_URL", &listening.http)
        .env("SKEIN_OTLP_HTTP", &listening.otlp_http)
        .env("SKEIN_CHROMIUM", &chromium)
        .env("SKEIN_PROTECTED_URL", &protected_listening.http)
        .env("SKEIN_PROTECTED_TOKEN", "ui-login-token-4c1e")
        .output()
        .expect("node runs");
    let _ = server.kill();
    let _ = server.wait();
    let _ = protected.kill();
    let _ = protected.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "the browser tests failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("UI figures: 50,000-span trace"), "the large-trace test ran:\n{stdout}");
    assert!(stdout.contains("login: the token opens the UI"), "the login test ran:\n{stdout}");
}
