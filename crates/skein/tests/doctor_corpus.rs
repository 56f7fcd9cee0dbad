//! The trace doctor measured on a labelled corpus sent by the OpenTelemetry Python SDK
//! (`tests/interop/python/doctor_corpus.py`): healthy scenarios that look suspicious (new roots
//! after a request, roots linking to their cause, a scheduled job, start-up work, concurrent
//! identical requests) and each kind of break, alone and mixed. Run as a user would, right
//! after the exporters flushed: `skein doctor` with its defaults.
//!
//! Prints precision and recall per kind, at edge level (is `A → B` broken) and at trace level
//! (are these two traces one request, from each trace's diagnosis), and holds the targets: no
//! healthy edge reported broken, every broken edge found, and trace-level recall of at least
//! 0.95 for split traces and detached work.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value as Json;
use skein_query::doctor::report::{Diagnosis, DoctorReport};
use support::{Skein, python, workspace_root};

#[derive(Default)]
struct Score {
    true_pos: usize,
    false_pos: usize,
    false_neg: usize,
}

impl Score {
    fn precision(&self) -> f64 {
        let reported = self.true_pos + self.false_pos;
        if reported == 0 { 1.0 } else { self.true_pos as f64 / reported as f64 }
    }

    fn recall(&self) -> f64 {
        let expected = self.true_pos + self.false_neg;
        if expected == 0 { 1.0 } else { self.true_pos as f64 / expected as f64 }
    }
}

/// Every trace of `service` (as Jaeger JSON), with the `corpus.request` values of its spans.
fn traces_of(skein: &Skein, service: &str) -> Vec<(String, BTreeSet<String>)> {
    let (status, body) = skein.get(&format!("/api/traces?service={service}&lookback=1h&limit=10000"));
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let requests = t["spans"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["tags"].as_array().unwrap().iter())
                .filter(|tag| tag["key"] == "corpus.request")
                .map(|tag| tag["value"].as_str().unwrap().to_owned())
                .collect();
            (t["traceID"].as_str().unwrap().to_owned(), requests)
        })
        .collect()
}

#[test]
fn the_doctor_on_a_labelled_corpus() {
    let Some(python) = python() else { return };
    let skein = Skein::start();
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/interop/python/doctor_corpus.py"))
        .args(["--endpoint", &format!("{}/v1/traces", skein.otlp_http)])
        .output()
        .expect("python runs");
    assert!(out.status.success(), "doctor_corpus.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let labels: Json = serde_json::from_slice(&out.stdout).unwrap();
    let scenarios = labels["scenarios"].as_array().unwrap();

    // As a user runs it right after the tests: defaults, no --grace.
    let doctor = Command::new(env!("CARGO_BIN_EXE_skein"))
        .args(["doctor", "--server", &skein.http, "--lookback", "15m", "--json"])
        .output()
        .unwrap();
    let report: DoctorReport = serde_json::from_slice(&doctor.stdout)
        .unwrap_or_else(|e| panic!("a doctor report ({e}): {}", String::from_utf8_lossy(&doctor.stderr)));
    assert_eq!(report.unsettled_traces, 0, "every trace judged once the ingest was quiet");
    assert_eq!(doctor.status.code(), Some(1), "broken chains: exit 1");

    // Edge level, by kind.
    let expected: BTreeSet<(String, String, Option<String>)> = scenarios
        .iter()
        .flat_map(|s| s["expect"].as_array().unwrap().iter())
        .map(|e| {
            (
                e[0].as_str().unwrap().to_owned(),
                e[1].as_str().unwrap().to_owned(),
                e[2].as_str().map(str::to_owned),
            )
        })
        .collect();
    let reported: BTreeSet<(String, String, Option<String>)> = report
        .findings
        .iter()
        .filter(|f| f.broken)
        .map(|f| (f.kind.clone(), f.service.clone(), f.peer.clone()))
        .collect();
    let mut edge: BTreeMap<String, Score> = BTreeMap::new();
    for e in reported.union(&expected) {
        let score = edge.entry(e.0.clone()).or_default();
        match (reported.contains(e), expected.contains(e)) {
            (true, true) => score.true_pos += 1,
            (true, false) => score.false_pos += 1,
            _ => score.false_neg += 1,
        }
    }
    let false_alarms: Vec<_> =
        report.findings.iter().filter(|f| f.broken && f.service.starts_with("h-")).collect();

    // Trace level: for every trace, the traces its diagnosis says are the same request.
    let mut services: BTreeSet<String> = BTreeSet::new();
    for s in
        ["h-chain-api", "h-chain-backend", "h-after-shop", "h-linked-api", "h-sched-api", "h-startup-api"]
    {
        services.insert(s.to_owned());
    }
    for s in
        ["h-concurrent-api", "h-concurrent-backend", "b-split-api", "b-split-backend", "b-split-conc-api"]
    {
        services.insert(s.to_owned());
    }
    for s in ["b-split-conc-backend", "b-detached-worker", "b-middleware-frontend", "b-middleware-backend"] {
        services.insert(s.to_owned());
    }
    services.insert("m-mixed-api".to_owned());
    let mut requests_of: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut service_of: HashMap<String, String> = HashMap::new();
    for service in &services {
        for (trace, requests) in traces_of(&skein, service) {
            requests_of.entry(trace.clone()).or_default().extend(requests);
            service_of.entry(trace).or_insert_with(|| service.clone());
        }
    }
    let same_request =
        |a: &str, b: &str| requests_of.get(a).zip(requests_of.get(b)).is_some_and(|(x, y)| !x.is_disjoint(y));
    // The kind a pair of traces must be found as, by the scenario of the first trace's service.
    let kind_of = |service: &str| -> Option<&'static str> {
        match service {
            // Identical calls in flight at once: timing is all that tells them apart.
            s if s.starts_with("b-split-conc") => Some("split_trace (identical concurrent calls)"),
            s if s.starts_with("b-split") => Some("split_trace"),
            s if s.starts_with("b-detached") || s.starts_with("b-middleware") || s.starts_with("m-mixed") => {
                Some("detached_work")
            }
            _ => None,
        }
    };
    let mut predicted: BTreeSet<(String, String, String, bool)> = BTreeSet::new();
    for trace in requests_of.keys() {
        let (status, body) = skein.get(&format!("/api/v1/traces/{trace}/diagnosis"));
        assert_eq!(status, 200, "{body}");
        let diagnosis: Diagnosis = serde_json::from_value(body).unwrap();
        for r in diagnosis.related {
            let (a, b) =
                if trace < &r.trace_id { (trace.clone(), r.trace_id) } else { (r.trace_id, trace.clone()) };
            predicted.insert((a, b, r.kind, r.unambiguous));
        }
    }
    let mut truth: BTreeSet<(String, String)> = BTreeSet::new();
    let traces: Vec<&String> = requests_of.keys().collect();
    for (i, a) in traces.iter().enumerate() {
        for b in &traces[i + 1..] {
            if same_request(a, b) && kind_of(&service_of[*a]).is_some() {
                let (a, b) = if a < b { ((*a).clone(), (*b).clone()) } else { ((*b).clone(), (*a).clone()) };
                truth.insert((a, b));
            }
        }
    }
    let mut trace: BTreeMap<String, Score> = BTreeMap::new();
    let mut unambiguous = Score::default();
    for (a, b, kind, sure) in &predicted {
        let right = same_request(a, b);
        let kind = kind_of(&service_of[a]).map_or(kind.clone(), str::to_owned);
        let score = trace.entry(kind).or_default();
        if right {
            score.true_pos += 1;
        } else {
            score.false_pos += 1;
        }
        if *sure {
            if right {
                unambiguous.true_pos += 1;
            } else {
                unambiguous.false_pos += 1;
            }
        }
    }
    for (a, b) in &truth {
        if !predicted.iter().any(|(x, y, _, _)| x == a && y == b) {
            let kind = kind_of(&service_of[a]).unwrap_or("?");
            trace.entry(kind.to_owned()).or_default().false_neg += 1;
        }
    }

    println!("doctor corpus: {} scenarios, {} traces", scenarios.len(), report.traces);
    println!("| kind | edge precision | edge recall | trace precision | trace recall |");
    println!("|---|---|---|---|---|");
    for kind in ["split_trace", "split_trace (identical concurrent calls)", "detached_work", "orphan_spans"] {
        let (e, t) = (edge.get(kind), trace.get(kind));
        let f = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.3}"));
        println!(
            "| {kind} | {} | {} | {} | {} |",
            f(e.map(Score::precision)),
            f(e.map(Score::recall)),
            f(t.map(Score::precision)),
            f(t.map(Score::recall))
        );
    }
    println!("pairs offered as unambiguous: {} right, {} wrong", unambiguous.true_pos, unambiguous.false_pos);

    assert!(false_alarms.is_empty(), "no healthy scenario is reported broken: {false_alarms:#?}");
    for (kind, score) in &edge {
        assert_eq!(score.false_pos, 0, "{kind}: no healthy edge reported broken: {:#?}", report.findings);
        assert_eq!(score.false_neg, 0, "{kind}: every broken edge found: {:#?}", report.findings);
    }
    for kind in ["split_trace", "detached_work"] {
        let score = &trace[kind];
        assert!(score.recall() >= 0.95, "{kind}: trace-level recall {:.3}", score.recall());
    }
    // Identical concurrent calls: the edge is found (above); which trace continues which is a
    // guess, so none of those pairs may be offered as unambiguous (checked below).
    assert_eq!(unambiguous.false_pos, 0, "a pair offered as unambiguous is right");
}
