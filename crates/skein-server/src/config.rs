//! Server configuration (filled by the binary's flags and `SKEIN_*` variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use skein_otlp::Limits;

/// Which storage backend keeps the spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageKind {
    /// The embedded engine in `data_dir`: WAL, head, immutable blocks.
    Embedded,
    /// Bounded memory; everything is lost on restart.
    Memory,
    /// A ClickHouse server or cluster, behind a local buffer in `data_dir`.
    Clickhouse,
}

/// Where and how to reach ClickHouse (`--storage clickhouse`).
#[derive(Clone, Debug)]
pub struct ClickhouseSettings {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// Shard over this cluster of the server's `remote_servers`.
    pub cluster: Option<String>,
}

impl Default for ClickhouseSettings {
    fn default() -> Self {
        ClickhouseSettings {
            url: "http://127.0.0.1:8123".into(),
            database: "skein".into(),
            user: None,
            password_file: None,
            cluster: None,
        }
    }
}

/// Everything `skein serve` can be told.
#[derive(Clone, Debug)]
pub struct Config {
    pub otlp_grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub storage: StorageKind,
    pub data_dir: PathBuf,
    /// Spans older than this are dropped.
    pub retention: Duration,
    /// Bound of the memory store.
    pub memory_max_spans: usize,
    /// When the embedded engine's WAL fsyncs.
    pub wal_fsync: skein_wal::FsyncPolicy,
    /// The embedded engine cuts its in-memory head into a block at this many encoded bytes.
    pub head_max_bytes: usize,
    /// Largest OTLP request body, before and after gunzip.
    pub max_request_bytes: usize,
    pub limits: Limits,
    pub clickhouse: ClickhouseSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            otlp_grpc_addr: ([127, 0, 0, 1], 4317).into(),
            otlp_http_addr: ([127, 0, 0, 1], 4318).into(),
            http_addr: ([127, 0, 0, 1], 16686).into(),
            storage: StorageKind::Embedded,
            data_dir: PathBuf::from("./skein-data"),
            retention: Duration::from_secs(72 * 3600),
            memory_max_spans: 1_000_000,
            wal_fsync: skein_wal::FsyncPolicy::Interval(Duration::from_millis(100)),
            head_max_bytes: 2 * 1024 * 1024,
            max_request_bytes: 4 * 1024 * 1024,
            limits: Limits::default(),
            clickhouse: ClickhouseSettings::default(),
        }
    }
}

/// A configuration that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--memory-max-spans must be at least 1")]
    ZeroMemorySpans,
    #[error("--max-request-bytes must be at least 1024")]
    TinyRequestLimit,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_max_spans == 0 {
            return Err(ConfigError::ZeroMemorySpans);
        }
        if self.max_request_bytes < 1024 {
            return Err(ConfigError::TinyRequestLimit);
        }
        Ok(())
    }
}
