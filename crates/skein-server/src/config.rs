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

/// Default `--max-request-bytes`: 64 MiB. A collector's default batch of 8,192 realistic spans
/// is 4–5 MB of protobuf; this leaves room for batches of large spans and bigger batch settings.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Default `--head-max-bytes`: 2.25 MiB, about 5,300 realistic spans logged as the OTLP
/// requests they came in (about 443 bytes each; the 2 MiB of the builds that logged every batch
/// encoded, at about 382 bytes a span, held as many).
pub const DEFAULT_HEAD_MAX_BYTES: usize = 2304 * 1024;

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
    /// The embedded engine cuts its in-memory head into a block at this many bytes of spans as
    /// its WAL logs them (an OTLP/protobuf request's bytes, or the batch encoded).
    pub head_max_bytes: usize,
    /// Bytes of the embedded engine's block indexes that grow with the data (postings, trace
    /// filters, column dictionaries) kept in memory; beyond, they are read from disk as needed.
    pub index_memory_bytes: u64,
    /// Largest OTLP request body, before and after decompression.
    pub max_request_bytes: usize,
    /// Largest decompressed/compressed ratio of a request body (above 1 MiB decompressed).
    pub max_decompression_ratio: usize,
    /// Request bytes (compressed and decompressed) all requests being read and stored may
    /// hold at once; beyond it requests are refused as overloaded.
    pub max_inflight_request_bytes: usize,
    pub limits: Limits,
    pub clickhouse: ClickhouseSettings,
    /// Tokens that may send OTLP (one per line); without it, anyone who can connect may.
    pub ingest_token_file: Option<PathBuf>,
    /// Tokens that may read (query API, UI, `/metrics`); without it, anyone may.
    pub query_token_file: Option<PathBuf>,
    /// TLS on every listener: the certificate chain and key (PEM), and the CA OTLP clients'
    /// certificates must be signed by.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// With a number: `/metrics` also has the RED series of the stored spans, with at most this
    /// many span names per service (the rest counted as `_other`).
    pub span_metrics: Option<usize>,
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
            head_max_bytes: DEFAULT_HEAD_MAX_BYTES,
            index_memory_bytes: skein_engine::DEFAULT_INDEX_MEMORY_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_decompression_ratio: 100,
            max_inflight_request_bytes: 4 * DEFAULT_MAX_REQUEST_BYTES,
            limits: Limits::default(),
            clickhouse: ClickhouseSettings::default(),
            ingest_token_file: None,
            query_token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            span_metrics: None,
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
    #[error("--max-decompression-ratio must be at least 2")]
    TinyRatio,
    #[error(
        "--max-inflight-request-bytes ({inflight}) must be at least twice --max-request-bytes plus 1 MiB ({needed}), or a request of the largest size could never be read"
    )]
    TinyInflight { inflight: usize, needed: usize },
    #[error("--tls-cert and --tls-key go together: give both, or neither")]
    HalfTls,
    #[error("--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)")]
    ClientCaWithoutTls,
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_max_spans == 0 {
            return Err(ConfigError::ZeroMemorySpans);
        }
        if self.max_request_bytes < 1024 {
            return Err(ConfigError::TinyRequestLimit);
        }
        if self.max_decompression_ratio < 2 {
            return Err(ConfigError::TinyRatio);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::HalfTls);
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::ClientCaWithoutTls);
        }
        let needed = self.max_request_bytes.saturating_mul(2).saturating_add(1 << 20);
        if self.max_inflight_request_bytes < needed {
            return Err(ConfigError::TinyInflight { inflight: self.max_inflight_request_bytes, needed });
        }
        Ok(())
    }
}

impl Config {
    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}
