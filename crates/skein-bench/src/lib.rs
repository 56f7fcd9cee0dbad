//! `skein bench`: sends realistic OTLP traffic to a Skein server and measures it.
//!
//! By default it starts its own `skein serve` (the same binary) on a temporary data directory,
//! so it can read the server's CPU time and memory from `/proc` and its bytes on disk. With
//! `target` set it only sends and queries (the server-side figures are then absent).
//!
//! Phases: load (spans/s, export latency, server CPU and peak RSS) → graceful stop (the
//! engine writes its head into blocks) → bytes on disk per span → restart → trace-by-id,
//! search-by-attribute, service-list and operations latency at the stored size, then the RSS
//! and what the store says it holds in memory. The last line printed is one JSON object.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

mod realistic;
mod traffic;

pub use traffic::{Load, TrafficShape};

/// OTLP transport used for the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

/// How the load's requests are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// As OpenTelemetry SDKs send by default.
    #[default]
    None,
    /// As the OpenTelemetry Collector's OTLP exporters send by default (gzip, here at level 6;
    /// `Content-Encoding: gzip`, or `grpc-encoding: gzip`).
    Gzip,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The `skein` executable to start (normally the running one).
    pub skein_exe: PathBuf,
    /// Send to this server instead of starting one: its OTLP endpoint (`http://host:4317` for
    /// gRPC, `http://host:4318` for HTTP) and its query API.
    pub target: Option<Target>,
    pub protocol: Protocol,
    pub compression: Compression,
    /// Stop after this many spans…
    pub spans: u64,
    /// …or after this long, whichever comes first.
    pub duration: Option<Duration>,
    pub spans_per_request: usize,
    pub concurrency: usize,
    pub shape: TrafficShape,
    /// Queries per latency measurement.
    pub queries: usize,
    /// Extra arguments for the started `skein serve`.
    pub serve_args: Vec<String>,
    /// Run the started server on these CPUs only…
    pub server_cpus: Option<Vec<usize>>,
    /// …and the load generator on these: on a small machine the two otherwise compete for
    /// the same cores, which makes the server's CPU per span look worse than on its own.
    pub load_cpus: Option<Vec<usize>>,
    /// Send through a rotel collector (this `rotel-agent` binary) with its default batching.
    pub via_collector: Option<PathBuf>,
    /// After the run, send the same load to rotel (this `rotel-agent` binary) with its
    /// blackhole exporter and report its spans per CPU-second beside the server's.
    pub compare_rotel: Option<PathBuf>,
    /// A bearer token for OTLP and the query API (a Skein with token files).
    pub token: Option<String>,
    /// The CA (PEM) that signed a TLS Skein's certificate.
    pub ca_cert: Option<PathBuf>,
    pub progress: bool,
}

#[derive(Clone, Debug)]
pub struct Target {
    pub otlp: String,
    pub query: String,
}

/// The figures of a run.
#[derive(Debug, Default)]
pub struct Report {
    pub spans_sent: u64,
    pub spans_accepted: u64,
    pub requests_failed: u64,
    pub seconds: f64,
    pub spans_per_sec: f64,
    pub spans_per_core_sec: Option<f64>,
    /// Serial work of the server during the load (from its `skein_storage_serial_seconds`),
    /// by part, in seconds; empty when the store does not measure it.
    pub serial_seconds: Vec<(String, f64)>,
    /// Background work of the server during the load that runs as concurrent tasks (block
    /// writes, compactions; from its `skein_storage_background_seconds`), by part, in seconds.
    pub background_seconds: Vec<(String, f64)>,
    pub export_p50_ms: f64,
    pub export_p99_ms: f64,
    pub rss_mib: Option<f64>,
    /// The restarted server's RSS once the queries at the stored size are done, and what its
    /// store says it holds in memory for the data (`skein_storage_memory_bytes`), by part.
    pub rss_after_queries_mib: Option<f64>,
    pub store_memory_bytes: Vec<(String, f64)>,
    pub bytes_per_span: Option<f64>,
    pub trace_by_id_p50_ms: f64,
    pub trace_by_id_p99_ms: f64,
    pub search_p50_ms: f64,
    pub search_p99_ms: f64,
    /// Search for one `client.address` value (about 65,000 distinct ones).
    pub search_rare_p50_ms: f64,
    pub search_rare_p99_ms: f64,
    /// Search for a `client.address` value that no span has: every chunk whose postings do not
    /// rule the service and key out is asked (its Bloom filter, and the chunk when that says
    /// "maybe").
    pub search_absent_p50_ms: f64,
    pub search_absent_p99_ms: f64,
    /// The service list (`/api/services`) and one service's operations
    /// (`/api/services/{service}/operations`, each service in turn).
    pub services_p99_ms: f64,
    pub operations_p99_ms: f64,
    /// With `--storage clickhouse`: CPU seconds of the local processes that serve its port
    /// (the servers of the cluster, or chdb's) from the start of the load until every
    /// acknowledged span is inserted; none when ClickHouse is not local.
    pub clickhouse_cpu_seconds: Option<f64>,
    /// With `--storage clickhouse`: spans per second from the first send until ClickHouse
    /// has every acknowledged one.
    pub clickhouse_spans_per_sec: Option<f64>,
    /// The CPUs the server and the load generator were pinned to, if they were.
    pub server_cpus: Option<Vec<usize>>,
    pub load_cpus: Option<Vec<usize>>,
    /// With a collector in between: spans per second from the first send until the server
    /// had every span the collector accepted, and the collector's CPU seconds meanwhile.
    pub collector_spans_per_sec: Option<f64>,
    pub collector_cpu_seconds: Option<f64>,
    /// Spans the server received through the collector (all of them, when nothing was lost).
    pub collector_spans_delivered: Option<u64>,
    /// With `compare_rotel`: the same load into rotel's blackhole exporter.
    pub rotel_spans_per_sec: Option<f64>,
    pub rotel_spans_per_core_sec: Option<f64>,
}

impl Report {
    /// The server's serial work as a share of its CPU time during the load.
    pub fn serial_share(&self) -> Option<f64> {
        if self.serial_seconds.is_empty() {
            return None;
        }
        let cpu = self.spans_accepted as f64 / self.spans_per_core_sec?;
        Some((self.serial_seconds.iter().map(|(_, s)| s).sum::<f64>() / cpu.max(1e-9)).min(1.0))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "spans_sent": self.spans_sent,
            "spans_accepted": self.spans_accepted,
            "requests_failed": self.requests_failed,
            "seconds": round(self.seconds),
            "spans_per_sec": round(self.spans_per_sec),
            "spans_per_core_sec": self.spans_per_core_sec.map(round),
            "serial_share": self.serial_share().map(|s| (s * 1e4).round() / 1e4),
            "background_seconds": self.background_seconds.iter().map(|(p, s)| (p.clone(), round(*s))).collect::<std::collections::BTreeMap<_, _>>(),
            "implied_speedup_16_cores": self.serial_share().map(|s| round(amdahl(s, 16.0))),
            "implied_speedup_64_cores": self.serial_share().map(|s| round(amdahl(s, 64.0))),
            "server_cpus": self.server_cpus,
            "load_cpus": self.load_cpus,
            "export_p50_ms": round(self.export_p50_ms),
            "export_p99_ms": round(self.export_p99_ms),
            "rss_mib": self.rss_mib.map(round),
            "rss_after_queries_mib": self.rss_after_queries_mib.map(round),
            "store_memory_mib": self.store_memory_bytes.iter().map(|(p, b)| (p.clone(), serde_json::json!(round(b / 1048576.0)))).collect::<serde_json::Map<String, serde_json::Value>>(),
            "bytes_per_span": self.bytes_per_span.map(round),
            "trace_by_id_p50_ms": round(self.trace_by_id_p50_ms),
            "trace_by_id_p99_ms": round(self.trace_by_id_p99_ms),
            "search_p50_ms": round(self.search_p50_ms),
            "search_p99_ms": round(self.search_p99_ms),
            "search_rare_p50_ms": round(self.search_rare_p50_ms),
            "search_rare_p99_ms": round(self.search_rare_p99_ms),
            "search_absent_p50_ms": round(self.search_absent_p50_ms),
            "search_absent_p99_ms": round(self.search_absent_p99_ms),
            "services_p99_ms": round(self.services_p99_ms),
            "operations_p99_ms": round(self.operations_p99_ms),
            "clickhouse_cpu_seconds": self.clickhouse_cpu_seconds.map(round),
            "clickhouse_spans_per_sec": self.clickhouse_spans_per_sec.map(round),
            "collector_spans_per_sec": self.collector_spans_per_sec.map(round),
            "collector_cpu_seconds": self.collector_cpu_seconds.map(round),
            "collector_spans_delivered": self.collector_spans_delivered,
            "rotel_spans_per_sec": self.rotel_spans_per_sec.map(round),
            "rotel_spans_per_core_sec": self.rotel_spans_per_core_sec.map(round),
        })
    }

    /// The human summary printed before the JSON line.
    pub fn summary(&self) -> String {
        let opt = |v: Option<f64>, unit: &str| {
            v.map_or("n/a (external target)".to_owned(), |v| format!("{v:.1}{unit}"))
        };
        let cpus = |c: &Option<Vec<usize>>| {
            c.as_ref()
                .map_or("any".to_owned(), |c| c.iter().map(usize::to_string).collect::<Vec<_>>().join(","))
        };
        let pinned = if self.server_cpus.is_some() || self.load_cpus.is_some() {
            format!(
                "\ncpus               server on {}, load generator on {}",
                cpus(&self.server_cpus),
                cpus(&self.load_cpus)
            )
        } else {
            String::new()
        };
        format!(
            "spans accepted     {} of {} ({} failed requests) in {:.1}s\n\
             ingest             {:.0} spans/s, {} per core-second of server CPU\n\
             export latency     p50 {:.2} ms, p99 {:.2} ms\n\
             server peak RSS    {}\n\
             disk per span      {}\n\
             trace by id        p50 {:.2} ms, p99 {:.2} ms\n\
             search (attribute) p50 {:.2} ms, p99 {:.2} ms\n\
             search (client.address) p50 {:.2} ms, p99 {:.2} ms\n\
             search (absent value) p50 {:.2} ms, p99 {:.2} ms\n\
             services list      p99 {:.2} ms, operations p99 {:.2} ms{}{}{}{}{}{}{}",
            self.spans_accepted,
            self.spans_sent,
            self.requests_failed,
            self.seconds,
            self.spans_per_sec,
            opt(self.spans_per_core_sec, " spans"),
            self.export_p50_ms,
            self.export_p99_ms,
            opt(self.rss_mib, " MiB"),
            opt(self.bytes_per_span, " bytes"),
            self.trace_by_id_p50_ms,
            self.trace_by_id_p99_ms,
            self.search_p50_ms,
            self.search_p99_ms,
            self.search_rare_p50_ms,
            self.search_rare_p99_ms,
            self.search_absent_p50_ms,
            self.search_absent_p99_ms,
            self.services_p99_ms,
            self.operations_p99_ms,
            self.rss_after_queries_mib.map_or(String::new(), |rss| format!(
                "\nafter the queries RSS {rss:.1} MiB; the store holds {}",
                if self.store_memory_bytes.is_empty() {
                    "no memory figures".to_owned()
                } else {
                    self.store_memory_bytes
                        .iter()
                        .map(|(p, b)| format!("{p} {:.1} MiB", b / 1048576.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            self.serial_share().map_or(String::new(), |share| format!(
                "\nserial work        {:.2} µs per span, {:.1} % of server CPU ({}): implied speed-up {:.1}x on 16 cores, {:.1}x on 64",
                self.serial_seconds.iter().map(|(_, s)| s).sum::<f64>() * 1e6 / self.spans_accepted.max(1) as f64,
                share * 100.0,
                self.serial_seconds.iter().map(|(p, s)| format!("{p} {s:.2} s")).collect::<Vec<_>>().join(", "),
                amdahl(share, 16.0),
                amdahl(share, 64.0),
            )),
            if self.background_seconds.is_empty() {
                String::new()
            } else {
                format!(
                    "\nbackground work    {} (concurrent tasks, outside chunk encoding; not serial)",
                    self.background_seconds.iter().map(|(p, s)| format!("{p} {s:.2} s")).collect::<Vec<_>>().join(", ")
                )
            },
            self.clickhouse_cpu_seconds.map_or(String::new(), |cpu| format!(
                "\nclickhouse         {:.0} spans/s into ClickHouse, {cpu:.1} s of its CPU ({:.0} spans per ClickHouse core-second)",
                self.clickhouse_spans_per_sec.unwrap_or(0.0),
                self.spans_accepted as f64 / cpu.max(0.01)
            )),
            self.collector_spans_per_sec.map_or(String::new(), |rate| format!(
                "\ncollector          {} of {} spans delivered through rotel, {rate:.0} spans/s end to end, {:.1} s of its CPU",
                self.collector_spans_delivered.unwrap_or(0),
                self.spans_accepted,
                self.collector_cpu_seconds.unwrap_or(0.0)
            )),
            self.rotel_spans_per_core_sec.map_or(String::new(), |per_core| format!(
                "\nrotel blackhole    {:.0} spans/s, {per_core:.0} spans per core-second (the server stores {:.2}x that per core-second)",
                self.rotel_spans_per_sec.unwrap_or(0.0),
                self.spans_per_core_sec.unwrap_or(0.0) / per_core.max(0.001)
            )),
            pinned,
        )
    }
}

/// Restricts every thread of process `pid` to `cpus` (threads it starts later inherit it).
/// Linux only.
#[cfg(not(target_os = "linux"))]
pub fn pin_process(_pid: u32, _cpus: &[usize]) -> anyhow::Result<()> {
    bail!("pinning to CPUs (--server-cpus, --load-cpus) is only supported on Linux")
}

/// Restricts every thread of process `pid` to `cpus` (threads it starts later inherit it).
#[cfg(target_os = "linux")]
pub fn pin_process(pid: u32, cpus: &[usize]) -> anyhow::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("CPU {cpu} is out of range"))?;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of process {pid}"))?;
    for task in tasks {
        let tid: i32 = task?.file_name().to_string_lossy().parse().context("a thread id")?;
        match sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) => {}
            Err(nix::errno::Errno::ESRCH) => {} // the thread ended meanwhile
            Err(e) => return Err(e).with_context(|| format!("pinning thread {tid} to CPUs {cpus:?}")),
        }
    }
    Ok(())
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Amdahl's law: the speed-up on `cores` of work whose `serial` share runs on one core.
pub fn amdahl(serial: f64, cores: f64) -> f64 {
    1.0 / (serial + (1.0 - serial) / cores)
}

/// The server's serial work so far, by part, from its `/metrics`
/// (`skein_storage_serial_seconds_total{part="…"}`); empty when it reports none.
async fn serial_seconds(query: &str, client: &reqwest::Client) -> Vec<(String, f64)> {
    metric_by_part(query, client, "skein_storage_serial_seconds_total").await
}

/// The values of the server's metric `name` by its `part` label, from its `/metrics`; empty
/// when it reports none.
async fn metric_by_part(query: &str, client: &reqwest::Client, name: &str) -> Vec<(String, f64)> {
    let Ok(response) = client.get(format!("{query}/metrics")).send().await else { return Vec::new() };
    let Ok(text) = response.text().await else { return Vec::new() };
    let prefix = format!("{name}{{part=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let (part, rest) = l.split_once('"')?;
            Some((part.to_owned(), rest.rsplit_once(' ')?.1.parse::<f64>().ok()?))
        })
        .collect()
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    if sorted_ms.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ms.len() as f64 - 1.0) * p).round() as usize;
    sorted_ms[i]
}

/// The addresses in the line `skein serve` prints when it listens:
/// `listening otlp-grpc=URL otlp-http=URL http=URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub otlp_grpc: String,
    pub otlp_http: String,
    pub http: String,
}

/// Parses the `listening …` line; `None` when it is not one.
pub fn parse_listening(line: &str) -> Option<Listening> {
    let rest = line.trim().strip_prefix("listening ")?;
    let field = |name: &str| {
        rest.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).map(str::to_owned)
    };
    Some(Listening { otlp_grpc: field("otlp-grpc")?, otlp_http: field("otlp-http")?, http: field("http")? })
}

/// `skein serve` on ports the OS picks (read them from its `listening` line) and `data_dir`.
pub fn serve_command(exe: &Path, data_dir: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([
        "serve",
        "--otlp-grpc-addr",
        "127.0.0.1:0",
        "--otlp-http-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(data_dir);
    cmd
}

/// Spawns `cmd` (a [`serve_command`], with any further arguments), reads the `listening` line
/// it prints first, and returns the child with the addresses it listens on.
pub fn spawn_listening(cmd: &mut Command) -> anyhow::Result<(Child, Listening)> {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("server stdout")?).read_line(&mut line)?;
    match parse_listening(&line) {
        Some(listening) => Ok((child, listening)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the server did not print its listening line (got {line:?})")
        }
    }
}

/// Waits (up to 15 minutes) until the server's `/metrics` says no block awaits compaction, so
/// bytes on disk are measured after compaction.
async fn wait_for_compaction(http: &str, client: &reqwest::Client) {
    let started = Instant::now();
    let mut said = false;
    while started.elapsed() < Duration::from_secs(900) {
        let pending = match client.get(format!("{http}/metrics")).send().await {
            Ok(r) => r.text().await.ok().and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("skein_storage_blocks_awaiting_compaction "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            }),
            Err(_) => None,
        };
        match pending {
            Some(0) | None => break,
            Some(n) => {
                if !said {
                    eprintln!("waiting for compaction ({n} blocks to merge)…");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    if said {
        eprintln!("compaction done in {:.1}s", started.elapsed().as_secs_f64());
    }
}

/// A `skein serve` child process.
struct Server {
    child: Child,
    otlp_grpc: String,
    otlp_http: String,
    http: String,
}

impl Server {
    fn start(exe: &Path, data_dir: &Path, extra: &[String]) -> anyhow::Result<Server> {
        let (child, l) = spawn_listening(
            serve_command(exe, data_dir).args(extra).env("SKEIN_LOG", "warn").stderr(Stdio::inherit()),
        )
        .with_context(|| format!("starting {} serve", exe.display()))?;
        Ok(Server { otlp_grpc: l.otlp_grpc, otlp_http: l.otlp_http, http: l.http, child })
    }

    /// User + system CPU seconds of the process so far.
    fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.child.id())
    }

    fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 =
            status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// SIGTERM, then wait: the server flushes its head into blocks on the way out.
    fn stop(mut self) -> anyhow::Result<()> {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                bail!("the server did not stop within 120 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// CPU seconds (user + system) of the local processes that listen on TCP `port`: the
/// ClickHouse servers of the target (a cluster's shards, on loopback addresses of their own,
/// share the entry server's port; for chdb, the process that serves it). `None` when no local
/// process listens there (a remote ClickHouse): then no figure is better than one of the
/// wrong processes.
fn clickhouse_cpu_seconds(port: u16) -> Option<f64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let mut total = None;
    for p in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        let listens = fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                let target = target.to_string_lossy();
                target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
                    .is_some_and(|inode| inodes.contains(&inode))
            })
        });
        if listens && let Some(cpu) = process_cpu_seconds(pid) {
            *total.get_or_insert(0.0) += cpu;
        }
    }
    total
}

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp` (or `tcp6`) table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            (local_port == port && *f.get(3)? == LISTEN).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// `--storage clickhouse` among the server's arguments: the ClickHouse it uses.
#[derive(Clone, Debug)]
struct ClickhouseTarget {
    url: String,
    database: String,
    cluster: Option<String>,
    /// The bench chose the database (and drops it at the end).
    own_database: bool,
}

impl ClickhouseTarget {
    fn of(args: &[String]) -> Option<ClickhouseTarget> {
        let value = |flag: &str| {
            args.iter().enumerate().find_map(|(i, a)| {
                a.strip_prefix(&format!("{flag}="))
                    .map(str::to_owned)
                    .or_else(|| (a == flag).then(|| args.get(i + 1).cloned()).flatten())
            })
        };
        if value("--storage").as_deref() != Some("clickhouse") {
            return None;
        }
        Some(ClickhouseTarget {
            url: value("--clickhouse-url").unwrap_or_else(|| "http://127.0.0.1:8123".into()),
            database: value("--clickhouse-database").unwrap_or_else(|| "skein".into()),
            cluster: value("--clickhouse-cluster"),
            own_database: false,
        })
    }

    async fn servers(&self) -> anyhow::Result<Vec<skein_clickhouse::Client>> {
        let entry = skein_clickhouse::Client::new(&self.url, None, None).map_err(anyhow::Error::msg)?;
        Ok(match &self.cluster {
            Some(c) => skein_clickhouse::schema::Topology::of_cluster(&entry, c)
                .await?
                .shards
                .into_iter()
                .flat_map(|s| s.replicas.into_iter().take(1))
                .collect(),
            None => vec![entry],
        })
    }

    /// A number `sql` (which returns one as text) answers, summed over the shards (one
    /// replica each).
    async fn sum_over_shards(&self, sql: &str) -> anyhow::Result<u64> {
        let mut total = 0;
        for server in self.servers().await? {
            let out = server.query(sql, &[]).await?;
            total += String::from_utf8_lossy(&out).trim().parse::<u64>().unwrap_or(0);
        }
        Ok(total)
    }

    /// Bytes of the database's active parts (as far as ClickHouse has merged them).
    async fn bytes_on_disk(&self) -> anyhow::Result<u64> {
        self.sum_over_shards(&format!(
            "SELECT toString(sum(bytes_on_disk)) FROM system.parts WHERE database = {} AND active",
            skein_clickhouse::sql::quote(&self.database)
        ))
        .await
    }

    /// Waits (up to 5 minutes) until no server merges parts of the database, as the engine's
    /// bench waits for compaction: queries are then timed on the stored data, not against the
    /// merges that follow a bulk load on the same cores. Returns how long it waited.
    async fn wait_for_merges(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let sql = format!(
            "SELECT toString(count()) FROM system.merges WHERE database = {}",
            skein_clickhouse::sql::quote(&self.database)
        );
        let mut quiet = 0;
        while quiet < 2 && t.elapsed() < Duration::from_secs(300) {
            quiet = if self.sum_over_shards(&sql).await? == 0 { quiet + 1 } else { 0 };
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(t.elapsed())
    }

    /// Spans in ClickHouse: the calls the RED pre-aggregates count (a small table, and the
    /// last one each insert writes, so its spans are in every other table already).
    async fn spans_stored(&self) -> anyhow::Result<u64> {
        let red = if self.cluster.is_some() { "red_local" } else { "red" };
        self.sum_over_shards(&format!("SELECT toString(sum(calls)) FROM {}.{red}", self.database)).await
    }

    async fn drop_database(&self) -> anyhow::Result<()> {
        for server in self.servers().await? {
            server.query(&format!("DROP DATABASE IF EXISTS {}", self.database), &[]).await?;
        }
        Ok(())
    }
}

/// A rotel agent between the load and the server, with its default batching.
struct Collector {
    child: Child,
    _dir: tempfile::TempDir,
    endpoint: String,
}

impl Collector {
    /// rotel forwarding to the server at `server_otlp`.
    fn start(agent: &Path, protocol: Protocol, server_otlp: &str) -> anyhow::Result<Collector> {
        let p = if protocol == Protocol::Grpc { "grpc" } else { "http" };
        Self::spawn(
            agent,
            protocol,
            &["--exporter", "otlp", "--otlp-exporter-endpoint", server_otlp, "--otlp-exporter-protocol", p],
        )
    }

    /// rotel with its blackhole exporter: it receives and drops.
    fn blackhole(agent: &Path, protocol: Protocol) -> anyhow::Result<Collector> {
        Self::spawn(agent, protocol, &["--exporter", "blackhole"])
    }

    fn spawn(agent: &Path, protocol: Protocol, exporter: &[&str]) -> anyhow::Result<Collector> {
        let free = || -> anyhow::Result<u16> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        };
        let (grpc, http) = (free()?, free()?);
        let dir = tempfile::tempdir()?;
        let child = Command::new(agent)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(exporter)
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.path().join("rotel.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the collector {}", agent.display()))?;
        let port = if protocol == Protocol::Grpc { grpc } else { http };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("the collector {} did not listen on port {port} within 20 s", agent.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Collector { child, _dir: dir, endpoint: format!("http://127.0.0.1:{port}") })
    }

    fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.child.id())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid` so far.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU seconds of a `/proc/<pid>/stat` line.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0) // USER_HZ is 100 on Linux
}

/// Spans the server at `query` has received, from its `/metrics`.
async fn spans_received(query: &str, client: &reqwest::Client) -> anyhow::Result<u64> {
    let text = client.get(format!("{query}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("skein_spans_received_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// Runs the benchmark; prints progress to stderr.
/// What one exporter task sent: latencies (ms), spans sent, spans accepted, failed requests,
/// and some of the traces it sent.
type ExporterTotals = (Vec<f64>, u64, u64, u64, Vec<traffic::Sent>);

/// Sends `config.spans` spans (or for `config.duration`) with `config.concurrency` exporters,
/// `config.spans_per_request` per request.
fn send_load(
    sender: &Arc<traffic::Sender>,
    config: &BenchConfig,
    started: Instant,
    bar: &indicatif::ProgressBar,
) -> Vec<tokio::task::JoinHandle<ExporterTotals>> {
    let next = Arc::new(AtomicU64::new(0));
    let stop_at = config.duration.map(|d| started + d);
    let mut tasks = Vec::new();
    for _ in 0..config.concurrency.max(1) {
        let sender = Arc::clone(sender);
        let next = Arc::clone(&next);
        let bar = bar.clone();
        let per = config.spans_per_request as u64;
        let total = config.spans;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut sent, mut accepted, mut failed) = (0u64, 0u64, 0u64);
            let mut ids = Vec::new();
            loop {
                let first = next.fetch_add(per, Ordering::Relaxed);
                if first >= total || stop_at.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                let n = per.min(total - first) as usize;
                let (request, trace_ids) = sender.shape.request(n);
                let t = Instant::now();
                // Like an OTLP exporter, retry a refused request (throttling while a store's
                // buffer is full) with a growing delay, a bounded number of times.
                let mut ok = sender.send(request.clone()).await;
                let mut attempt = 0u32;
                while !ok && attempt < 40 {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt.min(8)))).await;
                    ok = sender.send(request.clone()).await;
                }
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                sent += n as u64;
                if ok {
                    accepted += n as u64;
                    if ids.len() < 10_000 {
                        ids.extend(trace_ids.into_iter().take(4));
                    }
                } else {
                    failed += 1;
                }
                bar.inc(n as u64);
            }
            (latencies, sent, accepted, failed, ids)
        }));
    }
    tasks
}

/// The same load sent to rotel (`agent`, a `rotel-agent` binary) with its blackhole exporter:
/// a collector that receives and drops, the floor of what receiving OTLP costs. Returns its
/// spans/s and spans per CPU-second (rotel pinned to `cpus` when given).
async fn rotel_blackhole(
    config: &BenchConfig,
    agent: &Path,
    cpus: Option<&[usize]>,
) -> anyhow::Result<(f64, f64)> {
    let rotel = Collector::blackhole(agent, config.protocol)?;
    if let Some(cpus) = cpus {
        pin_process(rotel.child.id(), cpus)?;
    }
    let sender = Arc::new(
        traffic::Sender::new(
            config.protocol,
            config.compression,
            &rotel.endpoint,
            config.shape.clone(),
            None,
            None,
        )
        .await?,
    );
    let cpu_before = rotel.cpu_seconds().unwrap_or(0.0);
    let started = Instant::now();
    let mut accepted = 0;
    for t in send_load(&sender, config, started, &indicatif::ProgressBar::hidden()) {
        accepted += t.await?.2;
    }
    let seconds = started.elapsed().as_secs_f64();
    // What rotel still had to process when the last request was answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = rotel.cpu_seconds().unwrap_or(0.0) - cpu_before;
    Ok((accepted as f64 / seconds.max(0.001), accepted as f64 / cpu.max(0.001)))
}

pub async fn run(config: BenchConfig) -> anyhow::Result<Report> {
    if config.target.is_some() && config.server_cpus.is_some() {
        bail!("--server-cpus pins the server the bench starts; with --target, pin your server yourself");
    }
    if let Some(cpus) = &config.load_cpus {
        pin_process(std::process::id(), cpus)?;
    }
    let data = tempfile::tempdir().context("creating a temporary data directory")?;
    let mut serve_args = config.serve_args.clone();
    let clickhouse = match ClickhouseTarget::of(&serve_args) {
        // A database of its own, dropped at the end, so the bytes counted are this run's.
        Some(t) if !serve_args.iter().any(|a| a.starts_with("--clickhouse-database")) => {
            let database = format!("skein_bench_{}", std::process::id());
            serve_args.push(format!("--clickhouse-database={database}"));
            Some(ClickhouseTarget { database, own_database: true, ..t })
        }
        other => other,
    };
    let start = || -> anyhow::Result<Server> {
        let server = Server::start(&config.skein_exe, data.path(), &serve_args)?;
        if let Some(cpus) = &config.server_cpus {
            pin_process(server.child.id(), cpus)?;
        }
        Ok(server)
    };
    let mut server = match &config.target {
        Some(_) => None,
        None => Some(start()?),
    };
    let (otlp, query) = match (&config.target, &server) {
        (Some(t), _) => (t.otlp.clone(), t.query.clone()),
        (None, Some(s)) => (
            if config.protocol == Protocol::Grpc { s.otlp_grpc.clone() } else { s.otlp_http.clone() },
            s.http.clone(),
        ),
        (None, None) => unreachable!("a server was started"),
    };

    let client = authed_client(config.token.as_deref(), config.ca_cert.as_deref())?;
    // With a collector, the load goes to it and it forwards to the server.
    let collector = match &config.via_collector {
        Some(agent) => Some(Collector::start(agent, config.protocol, &otlp)?),
        None => None,
    };
    let received_before = match &collector {
        Some(_) => spans_received(&query, &client).await?,
        None => 0,
    };
    let otlp = collector.as_ref().map_or(otlp, |c| c.endpoint.clone());
    let collector_cpu_before = collector.as_ref().and_then(Collector::cpu_seconds);

    // Load.
    let sender = traffic::Sender::new(
        config.protocol,
        config.compression,
        &otlp,
        config.shape.clone(),
        config.token.as_deref(),
        config.ca_cert.as_deref(),
    )
    .await?;
    let sender = Arc::new(sender);
    let bar = if config.progress {
        let b = indicatif::ProgressBar::new(config.spans);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} spans  {per_sec}  eta {eta}")
                .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let serial_before = serial_seconds(&query, &client).await;
    let background_before = metric_by_part(&query, &client, "skein_storage_background_seconds_total").await;
    let cpu_before = server.as_ref().and_then(Server::cpu_seconds);
    let ch_port = clickhouse
        .as_ref()
        .and_then(|c| reqwest::Url::parse(&c.url).ok())
        .and_then(|u| u.port_or_known_default());
    let ch_cpu_before = ch_port.and_then(clickhouse_cpu_seconds);
    let started = Instant::now();
    let peak_rss = Arc::new(AtomicU64::new(0));
    let tasks = send_load(&sender, &config, started, &bar);
    let sampler = server.as_ref().map(|s| s.child.id()).map(|pid| {
        let peak = Arc::clone(&peak_rss);
        tokio::spawn(async move {
            loop {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kb) = status
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let mut latencies = Vec::new();
    let mut report = Report {
        server_cpus: config.server_cpus.clone(),
        load_cpus: config.load_cpus.clone(),
        ..Report::default()
    };
    let mut ids = Vec::new();
    for t in tasks {
        let (l, s, a, f, i) = t.await?;
        latencies.extend(l);
        report.spans_sent += s;
        report.spans_accepted += a;
        report.requests_failed += f;
        ids.extend(i);
    }
    report.seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if let Some(s) = &sampler {
        s.abort();
    }
    report.spans_per_sec = report.spans_accepted as f64 / report.seconds;
    if let (Some(before), Some(after)) = (cpu_before, server.as_ref().and_then(Server::cpu_seconds)) {
        let cpu = (after - before).max(0.01);
        report.spans_per_core_sec = Some(report.spans_accepted as f64 / cpu);
    }
    let since = |before: &[(String, f64)], after: Vec<(String, f64)>| -> Vec<(String, f64)> {
        after
            .into_iter()
            .map(|(part, after)| {
                let before = before.iter().find(|(p, _)| *p == part).map_or(0.0, |(_, s)| *s);
                (part, (after - before).max(0.0))
            })
            .collect()
    };
    report.serial_seconds = since(&serial_before, serial_seconds(&query, &client).await);
    report.background_seconds = since(
        &background_before,
        metric_by_part(&query, &client, "skein_storage_background_seconds_total").await,
    );

    if let Some(s) = &server {
        let peak_kb = peak_rss.load(Ordering::Relaxed).max(s.rss_mib().map_or(0, |m| (m * 1024.0) as u64));
        report.rss_mib = Some(peak_kb as f64 / 1024.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    report.export_p50_ms = percentile(&latencies, 0.50);
    report.export_p99_ms = percentile(&latencies, 0.99);
    eprintln!("load done: {} spans accepted in {:.1}s", report.spans_accepted, report.seconds);
    if let Some(c) = &collector {
        // The collector acknowledges what it has buffered: wait until the server has it all
        // (or nothing more arrives for 10 s, when the collector dropped some).
        let (mut last, mut last_change) = (0, Instant::now());
        loop {
            let delivered = spans_received(&query, &client).await?.saturating_sub(received_before);
            if delivered != last {
                (last, last_change) = (delivered, Instant::now());
            }
            if delivered >= report.spans_accepted || last_change.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seconds = started.elapsed().as_secs_f64() - if last < report.spans_accepted { 10.0 } else { 0.0 };
        report.collector_spans_delivered = Some(last);
        report.collector_spans_per_sec = Some(last as f64 / seconds.max(0.001));
        report.collector_cpu_seconds =
            collector_cpu_before.and_then(|before| Some(c.cpu_seconds()? - before));
        eprintln!("through the collector: {last} of {} spans delivered", report.spans_accepted);
    }
    drop(collector);

    // Disk: let compaction catch up, stop gracefully (head → blocks), measure, restart on the
    // same data, and let compaction catch up again before the queries.
    if let Some(ch) = &clickhouse {
        // Every acknowledged span leaves the nodes' buffers for ClickHouse: time that too.
        let t = Instant::now();
        while ch.spans_stored().await? < report.spans_accepted && t.elapsed() < Duration::from_secs(1800) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let all = report.seconds + t.elapsed().as_secs_f64();
        eprintln!(
            "in clickhouse: {} spans {:.1}s after the load ended ({:.0} spans/s from the first send to the last insert)",
            ch.spans_stored().await?,
            t.elapsed().as_secs_f64(),
            report.spans_accepted as f64 / all
        );
        report.clickhouse_spans_per_sec = Some(report.spans_accepted as f64 / all);
        report.clickhouse_cpu_seconds =
            ch_port.and_then(clickhouse_cpu_seconds).zip(ch_cpu_before).map(|(after, before)| after - before);
        let waited = ch.wait_for_merges().await?;
        eprintln!("clickhouse merges done {:.1}s after the last insert", waited.as_secs_f64());
    }
    let query = if let Some(s) = server.take() {
        wait_for_compaction(&s.http, &client).await;
        s.stop()?;
        if report.spans_accepted > 0 {
            let bytes = match &clickhouse {
                Some(ch) => ch.bytes_on_disk().await?,
                None => dir_bytes(data.path()),
            };
            report.bytes_per_span = Some(bytes as f64 / report.spans_accepted as f64);
        }
        let s = start()?;
        // The head written on the way out may complete a run of blocks to merge: queries are
        // timed at rest, once that compaction is done too.
        wait_for_compaction(&s.http, &client).await;
        let q = s.http.clone();
        server = Some(s);
        q
    } else {
        query
    };

    // Queries at the stored size.
    let mut by_id = Vec::new();
    for id in ids.iter().step_by((ids.len() / config.queries.max(1)).max(1)).take(config.queries) {
        let id = &id.trace_id;
        let t = Instant::now();
        let r = client.get(format!("{query}/api/traces/{id}")).send().await?;
        let status = r.status();
        r.bytes().await?;
        by_id.push(t.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!("trace {id} was acknowledged but GET /api/traces/{id} answered {status}");
        }
    }
    // tags={"http.response.status_code":"500"}, URL-encoded, in each service in turn (in the
    // realistic load only the frontend's spans carry it: elsewhere it matches nothing).
    let services = config.shape.services();
    let search = timed_gets(&client, (0..config.queries).map(|i| {
        let service = services[i % services.len()];
        format!(
            "{query}/api/traces?service={service}&tags=%7B%22http.response.status_code%22%3A%22500%22%7D&lookback=2h&limit=20"
        )
    }))
    .await?;
    // The client address of a request that was sent: a high-cardinality value (one per
    // request in the realistic load, about 65,000 in the checkout load).
    let rare = timed_gets(&client, (0..config.queries).map(|i| {
        let address = &ids[(i * 7919) % ids.len().max(1)].client_address;
        format!("{query}/api/traces?service=frontend&tags=%7B%22client.address%22%3A%22{address}%22%7D&lookback=2h&limit=20")
    }))
    .await?;
    // A client address no request has (the load's are dotted numbers): nothing matches.
    let absent = timed_gets(&client, (0..config.queries).map(|i| {
        format!("{query}/api/traces?service=frontend&tags=%7B%22client.address%22%3A%22absent-{i}%22%7D&lookback=2h&limit=20")
    }))
    .await?;
    let service_list =
        timed_gets(&client, (0..config.queries).map(|_| format!("{query}/api/services"))).await?;
    let operations = timed_gets(
        &client,
        (0..config.queries)
            .map(|i| format!("{query}/api/services/{}/operations", services[i % services.len()])),
    )
    .await?;
    report.services_p99_ms = percentile(&service_list, 0.99);
    report.operations_p99_ms = percentile(&operations, 0.99);
    by_id.sort_by(|a, b| a.total_cmp(b));
    report.trace_by_id_p50_ms = percentile(&by_id, 0.5);
    report.trace_by_id_p99_ms = percentile(&by_id, 0.99);
    report.search_p50_ms = percentile(&search, 0.5);
    report.search_p99_ms = percentile(&search, 0.99);
    report.search_rare_p50_ms = percentile(&rare, 0.5);
    report.search_rare_p99_ms = percentile(&rare, 0.99);
    report.search_absent_p50_ms = percentile(&absent, 0.5);
    report.search_absent_p99_ms = percentile(&absent, 0.99);
    if let Some(s) = &server {
        report.rss_after_queries_mib = s.rss_mib();
        report.store_memory_bytes = metric_by_part(&query, &client, "skein_storage_memory_bytes").await;
    }
    drop(server);
    if let Some(ch) = &clickhouse
        && ch.own_database
    {
        ch.drop_database().await?;
    }
    if let Some(agent) = &config.compare_rotel {
        // The server is stopped: rotel gets the same CPUs to itself.
        let (rate, per_core) = rotel_blackhole(&config, agent, config.server_cpus.as_deref()).await?;
        report.rotel_spans_per_sec = Some(rate);
        report.rotel_spans_per_core_sec = Some(per_core);
    }
    Ok(report)
}

/// GETs each URL in turn; the latencies in milliseconds, sorted. Any answer but success
/// is an error.
async fn timed_gets(
    client: &reqwest::Client,
    urls: impl Iterator<Item = String>,
) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::new();
    for url in urls {
        let t = Instant::now();
        let r = client.get(&url).send().await?;
        let status = r.status();
        r.bytes().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms)
}

pub(crate) async fn send_grpc(
    client: &mut TraceServiceClient<tonic::transport::Channel>,
    req: ExportTraceServiceRequest,
    token: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> bool {
    let mut request = tonic::Request::new(req);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", token.clone());
    }
    client.export(request).await.is_ok()
}

/// An HTTP client that sends `Authorization: Bearer <token>` when a token is given, and trusts
/// the CA of `ca_cert` (PEM) for `https://` servers.
pub fn authed_client(token: Option<&str>, ca_cert: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("the token is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder().default_headers(headers);
    if let Some(path) = ca_cert {
        let pem =
            std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", path.display()))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// The first token of a token file (one per line, `#` comments), for the clients.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .with_context(|| format!("{} holds no token", path.display()))
}

pub(crate) async fn send_http(
    client: &reqwest::Client,
    url: &str,
    req: ExportTraceServiceRequest,
    compression: Compression,
) -> bool {
    let body = req.encode_to_vec();
    let mut post = client.post(url).header("content-type", "application/x-protobuf");
    let body = match compression {
        Compression::None => body,
        Compression::Gzip => {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::default(),
            );
            e.write_all(&body).expect("writing to memory");
            post = post.header("content-encoding", "gzip");
            e.finish().expect("writing to memory")
        }
    };
    post.body(body).send().await.map(|r| r.status().is_success()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_sockets_listening_on_a_port() {
        // /proc/net/tcp: a listener on 127.0.0.1:8123 (0x1FBB), one on 127.0.0.2:8123, a
        // connection to 8123 (state 01) and a listener on another port.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1FBB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0
   1: 0200007F:1FBB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 100 0 0 10 0
   2: 0100007F:9C40 0100007F:1FBB 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 20 4 30 10 -1
   3: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 8123), [1111, 2222]);
        assert_eq!(listening_inodes(table, 8080), [4444]);
        assert!(listening_inodes(table, 9000).is_empty());
    }

    #[test]
    fn parses_the_listening_line() {
        let l = parse_listening(
            "listening otlp-grpc=http://127.0.0.1:4317 otlp-http=http://127.0.0.1:4318 http=http://127.0.0.1:16686\n",
        );
        assert_eq!(
            l,
            Some(Listening {
                otlp_grpc: "http://127.0.0.1:4317".into(),
                otlp_http: "http://127.0.0.1:4318".into(),
                http: "http://127.0.0.1:16686".into()
            })
        );
        assert_eq!(parse_listening("error: cannot listen"), None);
        assert_eq!(parse_listening("listening http=x"), None);
    }

    #[test]
    fn serial_share_and_implied_speed_ups() {
        // No serial work: linear; all serial: none.
        assert_eq!(amdahl(0.0, 16.0), 16.0);
        assert_eq!(amdahl(1.0, 64.0), 1.0);
        // 12x on 16 cores needs at most 2.2 % serial work.
        assert!(amdahl(0.022, 16.0) >= 12.0 && amdahl(0.023, 16.0) < 12.0);
        let report = Report {
            spans_accepted: 1_000_000,
            spans_per_core_sec: Some(200_000.0), // 5 s of server CPU
            serial_seconds: vec![("head_lock".into(), 0.5), ("wal_writer".into(), 0.5)],
            ..Report::default()
        };
        assert!((report.serial_share().unwrap() - 0.2).abs() < 1e-9);
        assert!(
            report.summary().contains("serial work        1.00 µs per span, 20.0 % of server CPU"),
            "{}",
            report.summary()
        );
        assert_eq!(Report::default().serial_share(), None, "a store that does not measure it");
    }

    #[test]
    fn percentiles_pick_from_sorted_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod pin_tests {
    use super::*;

    #[test]
    fn pins_every_thread_of_a_process() {
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        pin_process(child.id(), &[0]).unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let set = nix::sched::sched_getaffinity(pid).unwrap();
        let cpus: Vec<usize> = (0..nix::sched::CpuSet::count()).filter(|c| set.is_set(*c).unwrap()).collect();
        assert_eq!(cpus, [0]);
        assert!(pin_process(child.id(), &[usize::MAX]).is_err(), "a CPU out of range is refused");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
