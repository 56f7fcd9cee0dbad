//! `skein doctor`: asks a running Skein where chains break (`GET /api/v1/doctor`), prints the
//! report, and exits with a code a script can act on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every trace in the window was judged, and no chain is broken |
//! | 1 | a broken chain was found |
//! | 2 | Skein could not be asked (not running, bad answer, bad arguments) |
//! | 3 | no broken chain among the traces judged, but some were too recent to judge |
//!
//! Right after a test run the last spans may still be arriving: while Skein reports traces
//! too recent to judge and its ingest will soon count as quiet, the command waits (up to
//! `--wait`) and asks again.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context;
use skein_query::doctor::report::{DoctorReport, FindingReport};

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
    /// While Skein keeps receiving spans, those that ended this recently are not yet evidence
    /// that something is missing (their peers may not be exported yet).
    #[arg(long, default_value = "30s")]
    grace: String,
    /// Once Skein has received nothing for this long, every exporter has flushed and every
    /// span is judged, however recent.
    #[arg(long, default_value = "6s")]
    settle: String,
    /// How long to wait for recent traces to settle before answering.
    #[arg(long, default_value = "15s")]
    wait: String,
    /// Print the report as JSON (the API's answer) instead of text.
    #[arg(long)]
    json: bool,
    /// A file whose first token is sent as `Authorization: Bearer`, for a Skein with
    /// --query-token-file.
    #[arg(long, env = "SKEIN_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) that signed a TLS Skein's certificate (for an https:// server).
    #[arg(long, env = "SKEIN_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

/// What the doctor concluded.
pub(crate) struct Verdict {
    report: DoctorReport,
}

impl Verdict {
    pub(crate) fn exit_code(&self) -> i32 {
        match (self.report.broken, self.report.unsettled_traces) {
            (true, _) => 1,
            (false, 0) => 0,
            (false, _) => 3,
        }
    }
}

fn go_duration(flag: &str, v: &str) -> anyhow::Result<Duration> {
    skein_query::duration::parse_go_duration(v)
        .map(Duration::from_nanos)
        .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
}

/// Runs the command and prints the report.
pub(crate) async fn run(args: DoctorArgs) -> anyhow::Result<Verdict> {
    let base = args.server.trim_end_matches('/').to_owned();
    let wait = go_duration("wait", &args.wait)?;
    let mut url = reqwest::Url::parse(&format!("{base}/api/v1/doctor"))
        .with_context(|| format!("--server {:?} is not a URL", args.server))?;
    url.query_pairs_mut()
        .append_pair("lookback", &args.lookback)
        .append_pair("grace", &args.grace)
        .append_pair("settle", &args.settle);
    if let Some(s) = &args.service {
        url.query_pairs_mut().append_pair("service", s);
    }
    let token = args.token_file.as_deref().map(skein_bench::read_token_file).transpose()?;
    let client = skein_bench::authed_client(token.as_deref(), args.ca_cert.as_deref())?;
    let started = Instant::now();
    let report = loop {
        let report = ask(&client, &url, &base).await?;
        // Quiet soon: ask again then, if the wait allows it.
        let settles_in = Duration::from_secs_f64((report.settle_seconds - report.quiet_for_seconds).max(0.0));
        if report.unsettled_traces == 0 || report.ingest_quiet || started.elapsed() + settles_in > wait {
            break report;
        }
        if !args.json {
            eprintln!(
                "{} traces are too recent to judge; Skein's ingest will be quiet in {:.1}s, waiting…",
                report.unsettled_traces,
                settles_in.as_secs_f64()
            );
        }
        tokio::time::sleep(settles_in + Duration::from_millis(100)).await;
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, &base, &args.lookback));
    }
    Ok(Verdict { report })
}

async fn ask(client: &reqwest::Client, url: &reqwest::Url, base: &str) -> anyhow::Result<DoctorReport> {
    let response =
        client.get(url.clone()).send().await.with_context(|| format!("cannot reach Skein at {base}"))?;
    let status = response.status();
    let body = response.bytes().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let msg = error["error"]["message"].as_str().unwrap_or("no message");
        anyhow::bail!("Skein answered {status}: {msg}");
    }
    serde_json::from_slice(&body).with_context(|| format!("{url} did not answer a doctor report"))
}

fn render(report: &DoctorReport, base: &str, lookback: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Skein trace doctor: {} traces, {} spans in the last {lookback}{}",
        report.traces,
        report.spans,
        if report.truncated { " — truncated: only the newest traces were analysed" } else { "" }
    );
    let _ = writeln!(
        out,
        "{}",
        if report.ingest_quiet {
            format!("Skein has received nothing for {:.1}s: every span is judged.", report.quiet_for_seconds)
        } else {
            format!(
                "Skein is still receiving spans: those that ended in the last {}s are not evidence yet.",
                report.grace_seconds
            )
        }
    );
    let (broken, notes): (Vec<&FindingReport>, Vec<&FindingReport>) =
        report.findings.iter().partition(|f| f.broken);
    for f in broken.iter().chain(notes.iter()) {
        let label = if f.broken { "BROKEN" } else { "NOTE  " };
        let what = match (f.kind.as_str(), &f.peer) {
            ("split_trace" | "uninstrumented_peer", Some(peer)) => format!("{} → {peer}", f.service),
            _ => format!("{}: {}", f.service, f.operation),
        };
        let _ = writeln!(out, "\n{label} {what} [{}]: {} seen, confidence {}", f.kind, f.count, f.confidence);
        let _ = writeln!(out, "       {}", f.message);
        let _ = writeln!(out, "       evidence: {}", f.evidence);
        for e in f.examples.iter().take(3) {
            let maybe = if e.unambiguous { "" } else { " (one of several candidates)" };
            match &e.other_trace_id {
                Some(other) if *other != e.trace_id && f.kind == "detached_work" => {
                    let _ = writeln!(
                        out,
                        "       e.g. {base}/trace/{}  started while  {base}/trace/{other}  was running{maybe}",
                        e.trace_id
                    );
                }
                Some(other) if *other != e.trace_id => {
                    let _ = writeln!(
                        out,
                        "       e.g. {base}/trace/{}  ⇢ continues in  {base}/trace/{other}{maybe}",
                        e.trace_id
                    );
                }
                _ => {
                    let _ = writeln!(out, "       e.g. {base}/trace/{}?span={}", e.trace_id, e.span_id);
                }
            }
        }
    }
    if !report.edges.is_empty() {
        let _ = writeln!(
            out,
            "\nPropagation health per edge (calls whose server side joined the caller's trace):"
        );
        let width = report.edges.iter().map(|e| e.caller.len() + e.callee.len() + 3).max().unwrap_or(0);
        for e in &report.edges {
            let name = format!("{} → {}", e.caller, e.callee);
            let _ = writeln!(
                out,
                "  {name:<width$}  {:>6.1}%  ({} joined, {} split)",
                e.health * 100.0,
                e.joined,
                e.split,
            );
        }
    }
    let verdict = match (broken.len(), report.unsettled_traces) {
        (0, 0) => "No broken chains found.".to_owned(),
        (0, n) => format!(
            "No broken chains found in the traces judged, but {n} trace{s} too recent to judge (exit code 3): \
             run again once your exporters have flushed.",
            s = if n == 1 { " was" } else { "s were" }
        ),
        (1, _) => "1 broken chain found.".to_owned(),
        (k, _) => format!("{k} broken chains found."),
    };
    let _ = writeln!(out, "\n{verdict}");
    out
}
