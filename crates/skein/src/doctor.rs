//! `skein doctor`: asks a running Skein where chains break (`GET /api/v1/doctor`), prints the
//! report, and exits 1 when it finds a broken chain (2 when it cannot ask), so it can run after
//! integration tests.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub(crate) struct DoctorArgs {
    /// How far back to look (a Go duration: 15m, 1h, 90s).
    #[arg(long, default_value = "15m")]
    lookback: String,
    /// Skein's query address.
    #[arg(long, default_value = "http://127.0.0.1:16686")]
    server: String,
    /// Only findings that involve this service.
    #[arg(long)]
    service: Option<String>,
    /// Spans that ended this recently are not yet evidence that something is missing (their
    /// peers may not be exported yet). Use 0s right after flushing your exporters.
    #[arg(long, default_value = "30s")]
    grace: String,
    /// Print the report as JSON (the API's answer) instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the command; `Ok(true)` when a broken chain was found.
pub(crate) async fn run(args: DoctorArgs) -> anyhow::Result<bool> {
    let base = args.server.trim_end_matches('/').to_owned();
    let mut url = reqwest::Url::parse(&format!("{base}/api/v1/doctor"))
        .with_context(|| format!("--server {:?} is not a URL", args.server))?;
    url.query_pairs_mut().append_pair("lookback", &args.lookback).append_pair("grace", &args.grace);
    if let Some(s) = &args.service {
        url.query_pairs_mut().append_pair("service", s);
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let response =
        client.get(url.clone()).send().await.with_context(|| format!("cannot reach Skein at {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| format!("{url} did not answer JSON"))?;
    if !status.is_success() {
        let msg = body["error"]["message"].as_str().unwrap_or("no message");
        anyhow::bail!("Skein answered {status}: {msg}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", render(&body, &base, &args.lookback));
    }
    Ok(body["broken"] == true)
}

fn render(report: &Value, base: &str, lookback: &str) -> String {
    let mut out = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "Skein trace doctor: {} traces, {} spans in the last {lookback} (grace {}s){}",
        n(&report["traces"]),
        n(&report["spans"]),
        report["graceSeconds"],
        if report["truncated"] == true { " — truncated: only the newest traces were analysed" } else { "" }
    );
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    let broken: Vec<&Value> = findings.iter().filter(|f| f["broken"] == true).collect();
    let notes: Vec<&Value> = findings.iter().filter(|f| f["broken"] != true).collect();
    for f in broken.iter().chain(notes.iter()) {
        let label = if f["broken"] == true { "BROKEN" } else { "NOTE  " };
        let what = match (f["kind"].as_str().unwrap_or(""), f["peer"].as_str()) {
            ("split_trace", Some(peer)) => format!("{} → {peer}", f["service"].as_str().unwrap_or("")),
            ("uninstrumented_peer", Some(peer)) => {
                format!("{} → {peer}", f["service"].as_str().unwrap_or(""))
            }
            _ => {
                format!("{}: {}", f["service"].as_str().unwrap_or(""), f["operation"].as_str().unwrap_or(""))
            }
        };
        let _ = writeln!(
            out,
            "\n{label} {what} [{}]: {} seen, confidence {}",
            f["kind"].as_str().unwrap_or(""),
            n(&f["count"]),
            f["confidence"]
        );
        let _ = writeln!(out, "       {}", f["message"].as_str().unwrap_or(""));
        for e in f["examples"].as_array().into_iter().flatten().take(3) {
            let trace = e["traceID"].as_str().unwrap_or("");
            match e["otherTraceID"].as_str() {
                Some(other) if other != trace && f["kind"] == "detached_work" => {
                    let _ = writeln!(
                        out,
                        "       e.g. {base}/trace/{trace}  started while  {base}/trace/{other}  was running"
                    );
                }
                Some(other) if other != trace => {
                    let _ = writeln!(
                        out,
                        "       e.g. {base}/trace/{trace}  ⇢ continues in  {base}/trace/{other}"
                    );
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "       e.g. {base}/trace/{trace}?span={}",
                        e["spanID"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    let edges = report["edges"].as_array().cloned().unwrap_or_default();
    if !edges.is_empty() {
        let _ = writeln!(
            out,
            "\nPropagation health per edge (calls whose server side joined the caller's trace):"
        );
        let width = edges
            .iter()
            .map(|e| e["caller"].as_str().unwrap_or("").len() + e["callee"].as_str().unwrap_or("").len() + 3)
            .max()
            .unwrap_or(0);
        for e in &edges {
            let name =
                format!("{} → {}", e["caller"].as_str().unwrap_or(""), e["callee"].as_str().unwrap_or(""));
            let _ = writeln!(
                out,
                "  {name:<width$}  {:>6.1}%  ({} joined, {} split)",
                e["health"].as_f64().unwrap_or(1.0) * 100.0,
                n(&e["joined"]),
                n(&e["split"]),
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{}",
        match broken.len() {
            0 => "No broken chains found.".to_owned(),
            1 => "1 broken chain found.".to_owned(),
            k => format!("{k} broken chains found."),
        }
    );
    out
}
