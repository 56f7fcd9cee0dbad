//! `skein`: the single binary. Parses arguments and wires `skein-server`; no logic lives here.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use skein_server::{Config, StorageKind};

mod demo;
mod doctor;

/// mimalloc: the server allocates and frees many small strings per span on several threads,
/// where it is faster than the system allocator and fragments less. Its v2 line (the `v2`
/// feature): on the bench load it used less CPU per span than v3 (180k against 175k spans per
/// core-second) and held 70 MiB instead of 110 MiB at peak, as spans are allocated by the
/// receivers and freed by the block writer on another thread.
///
/// Built with `no_thp`: mimalloc otherwise asks the kernel for transparent huge pages
/// (`MADV_HUGEPAGE`) on its segments, and where THP defragmentation is `madvise` (the common
/// default) each first touch of a 2 MiB page then compacts memory synchronously. The doctor's
/// first report after a start (1M spans, ~350 MiB of fresh memory) took 2.4–2.9 s with it, over
/// half of that in the kernel, and 1.05–1.11 s without; ingest per core-second is unchanged.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "skein", version, about = "End-to-end distributed tracing for Rust services")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive OTLP traces, store them and serve the query API.
    Serve(Box<ServeArgs>),
    /// Send realistic OTLP load to a Skein server and measure it (prints a JSON line last).
    Bench(BenchArgs),
    /// Run Skein with a small instrumented shop (frontend, checkout, cart, SQLite, Redis) and
    /// traffic, to see what traces look like, whole or broken (`--break`).
    Demo(demo::DemoArgs),
    /// Ask a running Skein where trace chains break (split traces, detached work, orphans);
    /// exits 1 when it finds a broken chain, 2 when it cannot ask, 3 when traces were too
    /// recent to judge.
    Doctor(doctor::DoctorArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchProtocol {
    Grpc,
    Http,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchLoad {
    /// OpenTelemetry-demo-like: 8 services with 2–3 instances and 16–17 resource attributes
    /// each, 5–39 spans per trace, ~11 attributes per span with high-cardinality values,
    /// log-normal durations, 5 % errors with exception events, Kafka spans with links.
    Realistic,
    /// The older load: one 14-span checkout trace over 6 services (easier to store; kept to
    /// compare with earlier figures).
    Checkout,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchCompression {
    None,
    Gzip,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Spans to send in total.
    #[arg(long, default_value_t = 200_000)]
    spans: u64,
    /// Stop sending after this long even if fewer spans were sent (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// OTLP transport.
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: BenchProtocol,
    /// How requests are compressed: none (as SDKs send by default) or gzip (as the
    /// OpenTelemetry Collector's exporters send by default).
    #[arg(long, value_enum, default_value = "none")]
    compression: BenchCompression,
    /// Spans per export request.
    #[arg(long, default_value_t = 500)]
    spans_per_request: usize,
    /// Concurrent exporters.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The traffic to send.
    #[arg(long, value_enum, default_value = "realistic")]
    load: BenchLoad,
    /// Attributes per span (`--load checkout`).
    #[arg(long, default_value_t = 11)]
    attributes: usize,
    /// Every span draws its own user, order, cart and session values instead of sharing its
    /// request's (`--load checkout`; a storage worst case: no real trace looks like this).
    #[arg(long)]
    per_span_values: bool,
    /// Queries per latency figure (trace by id, search by attribute).
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Target an existing server instead of starting one: its OTLP endpoint
    /// (http://host:4317 for grpc, http://host:4318 for http). Server-side figures are then absent.
    #[arg(long, requires = "query_url")]
    target: Option<String>,
    /// The query API of --target (http://host:16686).
    #[arg(long)]
    query_url: Option<String>,
    /// Extra arguments for the started `skein serve`, e.g. --serve-arg=--wal-fsync=always.
    #[arg(long = "serve-arg", allow_hyphen_values = true)]
    serve_args: Vec<String>,
    /// Run the started server on these CPUs only (e.g. 0 or 0,1; Linux). With --load-cpus on
    /// other CPUs, the load generator does not compete with the server for its cores.
    #[arg(long, value_delimiter = ',')]
    server_cpus: Option<Vec<usize>>,
    /// Run the load generator on these CPUs only (e.g. 1).
    #[arg(long, value_delimiter = ',')]
    load_cpus: Option<Vec<usize>>,
    /// Send through a collector: the path of a rotel-agent binary (`pip install rotel` puts it
    /// in the package's directory). The bench starts it with its default batching between the
    /// load and the server, and reports spans/s until the server has every span.
    #[arg(long, value_name = "ROTEL_AGENT")]
    via_collector: Option<std::path::PathBuf>,
    /// After the run, send the same load to rotel with its blackhole exporter (it receives and
    /// drops) and print its spans per CPU-second beside the server's: the path of a
    /// rotel-agent binary. With --server-cpus, rotel is pinned to the same CPUs.
    #[arg(long, value_name = "ROTEL_AGENT")]
    compare_rotel: Option<std::path::PathBuf>,
    /// A file whose first token (one per line, `#` comments) is sent as `Authorization: Bearer`
    /// with OTLP and queries, for a Skein with --ingest-token-file/--query-token-file.
    #[arg(long, env = "SKEIN_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) that signed a TLS Skein's certificate (for https:// targets).
    #[arg(long, env = "SKEIN_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Storage {
    Embedded,
    Memory,
    Clickhouse,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WalFsync {
    Always,
    Interval,
    Never,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address of the OTLP/gRPC receiver.
    #[arg(long, env = "SKEIN_OTLP_GRPC_ADDR", default_value = "127.0.0.1:4317")]
    otlp_grpc_addr: SocketAddr,
    /// Address of the OTLP/HTTP receiver (POST /v1/traces).
    #[arg(long, env = "SKEIN_OTLP_HTTP_ADDR", default_value = "127.0.0.1:4318")]
    otlp_http_addr: SocketAddr,
    /// Address of the query API, UI, /healthz, /readyz and /metrics.
    #[arg(long, env = "SKEIN_HTTP_ADDR", default_value = "127.0.0.1:16686")]
    http_addr: SocketAddr,
    /// Storage backend: `embedded` (on disk in --data-dir), `memory` (lost on restart) or
    /// `clickhouse` (a ClickHouse server or cluster; --data-dir holds the local buffer).
    #[arg(long, env = "SKEIN_STORAGE", value_enum, default_value = "embedded")]
    storage: Storage,
    /// Directory of the embedded storage, or of the ClickHouse store's local buffer.
    #[arg(long, env = "SKEIN_DATA_DIR", default_value = "./skein-data")]
    data_dir: PathBuf,
    /// How long spans are kept (e.g. 72h, 7d, 30m).
    #[arg(long, env = "SKEIN_RETENTION", default_value = "72h", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// When the write-ahead log fsyncs: `always` (survives power loss), `interval` (every
    /// 100 ms; survives kill -9), `never` (the OS decides; survives kill -9).
    #[arg(long, env = "SKEIN_WAL_FSYNC", value_enum, default_value = "interval")]
    wal_fsync: WalFsync,
    /// The embedded engine writes its in-memory head to a block at this many bytes (small
    /// heads are written while still in the CPU's caches; see docs/ingest.md).
    #[arg(long, env = "SKEIN_HEAD_MAX_BYTES", default_value_t = skein_server::DEFAULT_HEAD_MAX_BYTES)]
    head_max_bytes: usize,
    /// Bytes of the embedded engine's block indexes that grow with the data (postings, trace
    /// filters, column dictionaries) it keeps in memory, all blocks together; beyond, a search
    /// reads a block's postings from disk again (see docs/format/block.md).
    #[arg(long, env = "SKEIN_INDEX_MEMORY_BYTES", default_value_t = skein_server::DEFAULT_INDEX_MEMORY_BYTES)]
    index_memory_bytes: u64,
    /// Most spans the memory store keeps; the oldest traces are evicted first.
    #[arg(long, env = "SKEIN_MEMORY_MAX_SPANS", default_value_t = 1_000_000)]
    memory_max_spans: usize,
    /// Largest OTLP request body in bytes, before and after decompression.
    #[arg(long, env = "SKEIN_MAX_REQUEST_BYTES", default_value_t = skein_server::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Largest ratio of a request body's decompressed to compressed size (checked once the
    /// body is over 1 MiB decompressed); beyond it the body is refused as a decompression bomb.
    #[arg(long, env = "SKEIN_MAX_DECOMPRESSION_RATIO", default_value_t = 100)]
    max_decompression_ratio: usize,
    /// Request bytes (compressed and decompressed) that all requests being read and stored may
    /// hold at once; past it requests wait up to 2 s, then are refused as overloaded.
    #[arg(long, env = "SKEIN_MAX_INFLIGHT_REQUEST_BYTES", default_value_t = 4 * skein_server::DEFAULT_MAX_REQUEST_BYTES)]
    max_inflight_request_bytes: usize,
    /// Expose the RED series of the stored spans on /metrics (calls and a duration histogram
    /// per service, span name, kind and status, named as the OpenTelemetry Collector's
    /// spanmetrics connector names them), for Prometheus users.
    #[arg(long, env = "SKEIN_SPAN_METRICS")]
    span_metrics: bool,
    /// With --span-metrics: span names per service that get series of their own; the others
    /// are counted as span_name="_other".
    #[arg(long, env = "SKEIN_SPAN_METRICS_MAX_OPERATIONS", default_value_t = 200)]
    span_metrics_max_operations: usize,
    /// Deepest nesting of an attribute value (arrays and kvlists).
    #[arg(long, env = "SKEIN_MAX_ATTRIBUTE_DEPTH", default_value_t = 8)]
    max_attribute_depth: usize,
    /// Longest attribute key or string/bytes value, in bytes.
    #[arg(long, env = "SKEIN_MAX_ATTRIBUTE_VALUE_BYTES", default_value_t = 64 * 1024)]
    max_attribute_value_bytes: usize,
    /// Most attributes on one span, event, link, resource or scope.
    #[arg(long, env = "SKEIN_MAX_ATTRIBUTES", default_value_t = 1024)]
    max_attributes: usize,
    /// ClickHouse's HTTP interface (with --storage clickhouse).
    #[arg(long, env = "SKEIN_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// The ClickHouse database Skein creates and uses.
    #[arg(long, env = "SKEIN_CLICKHOUSE_DATABASE", default_value = "skein")]
    clickhouse_database: String,
    /// ClickHouse user (default: ClickHouse's `default`).
    #[arg(long, env = "SKEIN_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    /// File whose first line is the ClickHouse user's password.
    #[arg(long, env = "SKEIN_CLICKHOUSE_PASSWORD_FILE")]
    clickhouse_password_file: Option<PathBuf>,
    /// Shard over this cluster of the ClickHouse server's `remote_servers` (one server
    /// when not given).
    #[arg(long, env = "SKEIN_CLICKHOUSE_CLUSTER")]
    clickhouse_cluster: Option<String>,
    /// Tokens that may send OTLP, one per line (`#` comments); OTLP then needs
    /// `authorization: Bearer <token>`. Re-read on SIGHUP.
    #[arg(long, env = "SKEIN_INGEST_TOKEN_FILE")]
    ingest_token_file: Option<PathBuf>,
    /// Tokens that may read (query API, UI, /metrics), one per line; re-read on SIGHUP.
    #[arg(long, env = "SKEIN_QUERY_TOKEN_FILE")]
    query_token_file: Option<PathBuf>,
    /// TLS on every listener: the certificate chain (PEM); re-read on SIGHUP.
    #[arg(long, env = "SKEIN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM); re-read on SIGHUP.
    #[arg(long, env = "SKEIN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require OTLP clients to present a certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "SKEIN_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

impl ServeArgs {
    fn into_config(self) -> Config {
        Config {
            otlp_grpc_addr: self.otlp_grpc_addr,
            otlp_http_addr: self.otlp_http_addr,
            http_addr: self.http_addr,
            storage: match self.storage {
                Storage::Embedded => StorageKind::Embedded,
                Storage::Memory => StorageKind::Memory,
                Storage::Clickhouse => StorageKind::Clickhouse,
            },
            data_dir: self.data_dir,
            retention: self.retention,
            memory_max_spans: self.memory_max_spans,
            wal_fsync: match self.wal_fsync {
                WalFsync::Always => skein_server::FsyncPolicy::Always,
                WalFsync::Interval => skein_server::FsyncPolicy::Interval(Duration::from_millis(100)),
                WalFsync::Never => skein_server::FsyncPolicy::Never,
            },
            head_max_bytes: self.head_max_bytes,
            index_memory_bytes: self.index_memory_bytes,
            max_request_bytes: self.max_request_bytes,
            max_decompression_ratio: self.max_decompression_ratio,
            max_inflight_request_bytes: self.max_inflight_request_bytes,
            limits: skein_server::Limits {
                max_attribute_depth: self.max_attribute_depth,
                max_attribute_value_bytes: self.max_attribute_value_bytes,
                max_attributes: self.max_attributes,
            },
            clickhouse: skein_server::ClickhouseSettings {
                url: self.clickhouse_url,
                database: self.clickhouse_database,
                user: self.clickhouse_user,
                password_file: self.clickhouse_password_file,
                cluster: self.clickhouse_cluster,
            },
            ingest_token_file: self.ingest_token_file,
            query_token_file: self.query_token_file,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_client_ca: self.tls_client_ca,
            span_metrics: self.span_metrics.then_some(self.span_metrics_max_operations),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter =
        || tracing_subscriber::EnvFilter::try_from_env("SKEIN_LOG").unwrap_or_else(|_| "info".into());
    if let Command::Demo(_) = cli.command {
        // The shop's log lines carry the trace and span id of the span they are written in.
        tracing_subscriber::fmt()
            .event_format(skein_otel::logs::TraceIdFormat::new(tracing_subscriber::fmt::format()))
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).init();
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args.into_config())),
        Command::Bench(args) => runtime.block_on(bench(args)),
        Command::Doctor(args) => match runtime.block_on(doctor::run(args)) {
            Ok(verdict) => match verdict.exit_code() {
                0 => Ok(()),
                code => std::process::exit(code),
            },
            Err(e) => {
                eprintln!("skein doctor: {e:#}");
                std::process::exit(2)
            }
        },
        Command::Demo(args) => runtime.block_on(async {
            let shutdown = shutdown_signal().context("installing signal handlers")?;
            demo::run(args, shutdown).await
        }),
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let config = skein_bench::BenchConfig {
        skein_exe: std::env::current_exe().context("finding the skein executable")?,
        target: args
            .target
            .map(|otlp| skein_bench::Target { otlp, query: args.query_url.unwrap_or_default() }),
        protocol: match args.protocol {
            BenchProtocol::Grpc => skein_bench::Protocol::Grpc,
            BenchProtocol::Http => skein_bench::Protocol::Http,
        },
        compression: match args.compression {
            BenchCompression::None => skein_bench::Compression::None,
            BenchCompression::Gzip => skein_bench::Compression::Gzip,
        },
        spans: args.spans,
        duration: args.duration,
        spans_per_request: args.spans_per_request.max(1),
        concurrency: args.concurrency.max(1),
        shape: skein_bench::TrafficShape {
            load: match args.load {
                BenchLoad::Realistic => skein_bench::Load::Realistic,
                BenchLoad::Checkout => skein_bench::Load::Checkout,
            },
            attributes_per_span: args.attributes,
            per_span_values: args.per_span_values,
            ..Default::default()
        },
        queries: args.queries,
        serve_args: args.serve_args,
        server_cpus: args.server_cpus,
        load_cpus: args.load_cpus,
        via_collector: args.via_collector,
        compare_rotel: args.compare_rotel,
        token: args.token_file.as_deref().map(skein_bench::read_token_file).transpose()?,
        ca_cert: args.ca_cert,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = skein_bench::run(config).await?;
    println!("{}", report.summary());
    println!("{}", report.to_json());
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = skein_server::bind(config).await.context("starting skein serve")?;
    // Signal handlers are registered before the `listening` line, so a supervisor that stops
    // the server as soon as it is up still gets a clean shutdown.
    let shutdown = shutdown_signal().context("installing signal handlers")?;
    reload_on_sighup(server.reloader()).context("installing the SIGHUP handler")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", server.listening_line()).context("writing to stdout")?;
    stdout.flush().ok();
    drop(stdout);
    server.run(shutdown).await.context("serving")?;
    Ok(())
}

/// Re-reads the token files and the TLS certificate on every SIGHUP, so a token can be
/// revoked and a certificate renewed without a restart.
#[cfg(unix)]
fn reload_on_sighup(reloader: skein_server::Reloader) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reloader.reload();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn reload_on_sighup(_reloader: skein_server::Reloader) -> std::io::Result<()> {
    Ok(())
}

/// A future that completes on Ctrl-C (SIGINT) or SIGTERM; the handlers are installed now.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
