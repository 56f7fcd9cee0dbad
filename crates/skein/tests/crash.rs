//! kill -9 at any moment loses no acknowledged span: a real `skein serve` on the embedded
//! engine is SIGKILLed repeatedly while a client sends OTLP batches (OTLP/JSON, OTLP/protobuf,
//! and OTLP/protobuf gzip- and zstd-compressed in turn: the WAL logs each differently); after
//! each restart every batch the server acknowledged is readable through the API.

mod support;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Skein {
    child: Child,
    otlp_http: String,
    http: String,
}

fn start(data: &Path) -> Skein {
    let (child, l) = skein_bench::spawn_listening(
        skein_bench::serve_command(Path::new(env!("CARGO_BIN_EXE_skein")), data)
            // Small heads so blocks are cut (and WAL segments deleted) while the test runs.
            .args(["--head-max-bytes", "20000"])
            .stderr(Stdio::null()),
    )
    .unwrap();
    Skein { otlp_http: l.otlp_http, http: l.http, child }
}

/// A batch of 5 spans of one new trace, by `n`: as OTLP/JSON, OTLP/protobuf, or OTLP/protobuf
/// compressed with gzip or zstd; with its content type and content encoding.
fn batch(round: u32, n: u32) -> (String, Vec<u8>, &'static str, &'static str) {
    use std::io::Write;
    let trace_id = format!("{round:08x}{n:024x}");
    let json = support::otlp_json_batch(&trace_id, "crash", n);
    if n.is_multiple_of(4) {
        return (trace_id, json.into_bytes(), "application/json", "identity");
    }
    let request = skein_otlp::decode_json(json.as_bytes()).unwrap();
    let protobuf = prost::Message::encode_to_vec(&request);
    let (body, coding) = match n % 4 {
        1 => (protobuf, "identity"),
        2 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(&protobuf).unwrap();
            (e.finish().unwrap(), "gzip")
        }
        _ => (zstd::bulk::compress(&protobuf, 3).unwrap(), "zstd"),
    };
    (trace_id, body, "application/x-protobuf", coding)
}

#[test]
fn sigkill_during_ingest_loses_no_acknowledged_span() {
    let data = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = reqwest::Client::new();
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..3u32 {
        let mut skein = start(data.path());
        // What was acknowledged before earlier kills is still there (a sample here; all at the end).
        for id in acknowledged.iter().step_by(acknowledged.len() / 50 + 1) {
            let status = rt.block_on(async {
                client.get(format!("{}/api/traces/{id}", skein.http)).send().await.unwrap().status()
            });
            assert_eq!(status, 200, "round {round}: acknowledged trace {id} lost");
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut n = 0;
        while Instant::now() < deadline {
            let (id, body, content_type, coding) = batch(round, n);
            n += 1;
            let ok = rt.block_on(async {
                client
                    .post(format!("{}/v1/traces", skein.otlp_http))
                    .header("content-type", content_type)
                    .header("content-encoding", coding)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            });
            if ok {
                acknowledged.push(id);
            }
        }
        skein.child.kill().unwrap(); // SIGKILL, no shutdown
        skein.child.wait().unwrap();
        assert!(n > 10, "round {round}: too few batches sent ({n})");
    }
    let mut skein = start(data.path());
    let mut missing = Vec::new();
    for id in &acknowledged {
        let (status, spans) = rt.block_on(async {
            let r = client.get(format!("{}/api/traces/{id}", skein.http)).send().await.unwrap();
            let status = r.status();
            let v: serde_json::Value = r.json().await.unwrap();
            (status, v["data"][0]["spans"].as_array().map_or(0, |s| s.len()))
        });
        if status != 200 || spans != 5 {
            missing.push((id.clone(), status.as_u16(), spans));
        }
    }
    skein.child.kill().unwrap();
    skein.child.wait().unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged traces lost or partial: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    let blocks = std::fs::read_dir(data.path().join("blocks")).unwrap().count();
    println!("{} acknowledged traces survived 3 SIGKILLs; {blocks} blocks on disk", acknowledged.len());
    assert!(blocks > 0, "the test should also exercise blocks");
}
