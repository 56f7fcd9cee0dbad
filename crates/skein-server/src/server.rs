//! Binding the listeners and running the three servers until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use skein_store::{MemoryStore, MemoryStoreConfig, SpanStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, StorageKind};
use crate::ingest::Ingest;
use crate::metrics::Metrics;

/// HTTP/2 flow-control window of one OTLP/gRPC request: a typical batch arrives without
/// waiting for a window update.
const GRPC_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// … and of one connection, shared by its concurrent requests.
const GRPC_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// Largest HTTP/2 frame a client may send.
const GRPC_MAX_FRAME: u32 = 1024 * 1024;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot listen on {addr} for {what}: {source}; is another process using it? pick another address with --{what}-addr"
    )]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the embedded storage in {dir}: {message}")]
    Storage { dir: std::path::PathBuf, message: String },
    #[error("cannot use ClickHouse storage: {0}")]
    Clickhouse(String),
    #[error("{what} server failed: {message}")]
    Serve { what: &'static str, message: String },
    #[error("cannot read a token file: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot use TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A server whose listeners are bound (so their real addresses are known, also with port 0)
/// but that does not serve yet.
#[derive(Debug)]
pub struct BoundServer {
    grpc: TcpListener,
    otlp_http: TcpListener,
    http: TcpListener,
    store: Arc<dyn SpanStore>,
    config: Config,
    auth: crate::auth::Auth,
    tls: Option<crate::tls::Tls>,
}

/// What SIGHUP re-reads: the token files and the TLS certificate and key.
#[derive(Clone, Debug)]
pub struct Reloader {
    auth: crate::auth::Auth,
    tls: Option<crate::tls::Tls>,
}

impl Reloader {
    /// Re-reads everything; what cannot be read keeps what is in force and is logged.
    pub fn reload(&self) {
        for e in self.auth.reload() {
            tracing::error!(error = %e, "token file not reloaded; its previous tokens stay in force");
        }
        let (ingest, query) = self.auth.counts();
        tracing::info!(ingest_tokens = ?ingest, query_tokens = ?query, "token files reloaded");
        if let Some(tls) = &self.tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in force")
                }
            }
        }
    }
}

/// Validates the configuration, opens the storage and binds every listener.
pub async fn bind(config: Config) -> Result<BoundServer, ServerError> {
    config.validate()?;
    let auth =
        crate::auth::Auth::load(config.ingest_token_file.as_deref(), config.query_token_file.as_deref())?;
    let tls = config.tls_files().map(|files| crate::tls::Tls::load(&files)).transpose()?;
    let listen = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { what, addr, source })
    };
    // Listeners first: a taken port fails before the storage is touched.
    let grpc = listen("otlp-grpc", config.otlp_grpc_addr).await?;
    let otlp_http = listen("otlp-http", config.otlp_http_addr).await?;
    let http = listen("http", config.http_addr).await?;
    let store: Arc<dyn SpanStore> = match config.storage {
        StorageKind::Memory => Arc::new(MemoryStore::new(MemoryStoreConfig {
            max_spans: config.memory_max_spans,
            retention_nanos: Some(config.retention.as_nanos().min(u64::MAX as u128) as u64),
        })),
        StorageKind::Embedded => open_engine(&config).await?,
        StorageKind::Clickhouse => open_clickhouse(&config).await?,
    };
    let server = BoundServer { grpc, otlp_http, http, store, config, auth, tls };
    server.warn_open_listeners();
    Ok(server)
}

async fn open_engine(config: &Config) -> Result<Arc<dyn SpanStore>, ServerError> {
    let engine_config = skein_engine::EngineConfig {
        head_max_bytes: config.head_max_bytes,
        index_memory_bytes: config.index_memory_bytes,
        wal_fsync: config.wal_fsync,
        retention: config.retention,
        ..skein_engine::EngineConfig::new(&config.data_dir)
    };
    let dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || skein_engine::Engine::open(engine_config))
        .await
        .map_err(|e| ServerError::Storage { dir: dir.clone(), message: e.to_string() })?;
    let (engine, report) =
        opened.map_err(|e| ServerError::Storage { dir: dir.clone(), message: e.to_string() })?;
    tracing::info!(
        dir = %dir.display(),
        blocks = report.blocks,
        wal_records_replayed = report.wal_records_replayed,
        "embedded storage open"
    );
    for t in &report.wal_truncations {
        tracing::warn!(segment = %t.segment.display(), at = t.at, dropped_bytes = t.dropped_bytes, reason = %t.reason, "wal tail truncated at recovery");
    }
    for c in &report.corrupt_blocks {
        tracing::error!(problem = %c, "corrupt block set aside");
    }
    Ok(Arc::new(engine))
}

async fn open_clickhouse(config: &Config) -> Result<Arc<dyn SpanStore>, ServerError> {
    let ch = &config.clickhouse;
    let password = match &ch.password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    ServerError::Clickhouse(format!(
                        "cannot read --clickhouse-password-file {}: {e}",
                        path.display()
                    ))
                })?
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
        ),
        None => None,
    };
    let store_config = skein_clickhouse::ClickhouseConfig {
        database: ch.database.clone(),
        user: ch.user.clone().or_else(|| password.as_ref().map(|_| "default".to_owned())),
        password,
        cluster: ch.cluster.clone(),
        wal_fsync: config.wal_fsync,
        retention: config.retention,
        ..skein_clickhouse::ClickhouseConfig::new(&ch.url, config.data_dir.join("clickhouse-buffer"))
    };
    let store = skein_clickhouse::ClickhouseStore::open(store_config)
        .await
        .map_err(|e| ServerError::Clickhouse(e.to_string()))?;
    tracing::info!(
        url = %ch.url,
        database = %ch.database,
        cluster = ch.cluster.as_deref().unwrap_or("-"),
        buffered_spans = store.buffered_spans(),
        "clickhouse storage open"
    );
    Ok(Arc::new(store))
}

impl BoundServer {
    /// The token sets; [`crate::auth::Auth::reload`] on it re-reads the files (SIGHUP).
    pub fn auth(&self) -> crate::auth::Auth {
        self.auth.clone()
    }

    /// What to call on SIGHUP.
    pub fn reloader(&self) -> Reloader {
        Reloader { auth: self.auth.clone(), tls: self.tls.clone() }
    }

    /// A listener that other machines can reach, with no token file for it, is open to anyone
    /// there: say so, naming the port and the flag that closes it.
    fn warn_open_listeners(&self) {
        use crate::auth::Role;
        let listeners = [
            ("OTLP/gRPC", self.otlp_grpc_addr(), Role::Ingest, "--ingest-token-file"),
            ("OTLP/HTTP", self.otlp_http_addr(), Role::Ingest, "--ingest-token-file"),
            ("query API and UI", self.http_addr(), Role::Query, "--query-token-file"),
        ];
        for (what, addr, role, flag) in listeners {
            if !addr.ip().is_loopback() && !self.auth.required(role) {
                tracing::warn!(
                    "the {what} listener on {addr} is reachable from other machines and needs no token: anyone who \
                     can connect to port {} can use it; set {flag} to require one",
                    addr.port()
                );
            }
        }
    }

    pub fn otlp_grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound socket has an address")
    }

    pub fn otlp_http_addr(&self) -> SocketAddr {
        self.otlp_http.local_addr().expect("bound socket has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound socket has an address")
    }

    /// The line `skein serve` prints once it listens.
    pub fn listening_line(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "listening otlp-grpc={scheme}://{} otlp-http={scheme}://{} http={scheme}://{}",
            self.otlp_grpc_addr(),
            self.otlp_http_addr(),
            self.http_addr()
        )
    }

    /// Serves until `shutdown` completes, then stops accepting, finishes in-flight requests
    /// and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let metrics = Metrics::with_span_metrics(Arc::clone(&self.store), self.config.span_metrics);
        let activity = skein_query::doctor::report::IngestActivity::starting_now();
        let ingest = Ingest::new(Arc::clone(&self.store), self.config.limits.clone(), metrics.clone())
            .with_activity(activity.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopped = move |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let body_limits = crate::body::BodyLimits {
            max_bytes: self.config.max_request_bytes,
            max_ratio: self.config.max_decompression_ratio,
        };
        let budget = crate::body::Budget::new(self.config.max_inflight_request_bytes);
        let grpc_service =
            crate::grpc::service(ingest.clone(), body_limits, budget.clone(), self.auth.clone());
        // HTTP/2 sized for OTLP batches (hundreds of KiB each): with the defaults (64 KiB
        // windows, 16 KiB frames) a request arrives in dozens of frames and waits for window
        // updates on the way.
        let grpc_server = tonic::transport::Server::builder()
            .initial_stream_window_size(GRPC_STREAM_WINDOW)
            .initial_connection_window_size(GRPC_CONNECTION_WINDOW)
            .max_frame_size(GRPC_MAX_FRAME)
            .add_service(grpc_service);
        let otlp_http_app = crate::otlp_http::router(ingest.clone(), body_limits, budget, self.auth.clone());
        let http_app = crate::http_api::router(Arc::clone(&self.store), metrics, activity, self.auth.clone());
        // The same servers over plain TCP or TLS: only the listeners differ.
        let (grpc, otlp_http, http): (Serving, Serving, Serving) = match &self.tls {
            None => (
                serve_grpc(grpc_server, tokio_stream_listener(self.grpc), stopped(stop_rx.clone())),
                serve_axum(self.otlp_http.tap_io(no_delay), otlp_http_app, stopped(stop_rx.clone())),
                serve_axum(self.http.tap_io(no_delay), http_app, stopped(stop_rx.clone())),
            ),
            Some(tls) => (
                serve_grpc(
                    grpc_server,
                    crate::tls::grpc_incoming(self.grpc, tls.otlp.clone()),
                    stopped(stop_rx.clone()),
                ),
                serve_axum(
                    crate::tls::TlsListener::new(self.otlp_http, tls.otlp.clone()).map_err(bind_io)?,
                    otlp_http_app,
                    stopped(stop_rx.clone()),
                ),
                serve_axum(
                    crate::tls::TlsListener::new(self.http, tls.http.clone()).map_err(bind_io)?,
                    http_app,
                    stopped(stop_rx.clone()),
                ),
            ),
        };

        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        let store = Arc::clone(&self.store);
        let (g, o, h) = tokio::join!(grpc, otlp_http, http);
        // No request is in flight any more: move buffered spans to their long-term form, so
        // the next start does not need to replay them.
        if let Err(e) = store.flush().await {
            tracing::warn!(error = %e, "flushing storage at shutdown failed; the WAL still has the spans");
        }
        g.map_err(|message| ServerError::Serve { what: "otlp-grpc", message })?;
        o.map_err(|message| ServerError::Serve { what: "otlp-http", message })?;
        h.map_err(|message| ServerError::Serve { what: "http", message })?;
        Ok(())
    }
}

/// Turns Nagle's algorithm off on an accepted connection: an answer goes out in several small
/// writes (headers, message, trailers), and Nagle would hold the later ones until the client
/// acknowledges the first, which clients delay by up to 40 ms.
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot turn Nagle's algorithm off");
    }
}

/// The accepted connections of `listener` (for tonic), with [`no_delay`].
fn tokio_stream_listener(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let mut tcp = accepted?;
        no_delay(&mut tcp);
        Ok(tcp)
    })
}

fn bind_io(e: std::io::Error) -> ServerError {
    ServerError::Serve { what: "tls listener", message: e.to_string() }
}

/// One server, running until its shutdown signal.
type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

fn serve_axum<L>(listener: L, app: axum::Router, stop: impl Future<Output = ()> + Send + 'static) -> Serving
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    Box::pin(async move {
        axum::serve(listener, app).with_graceful_shutdown(stop).await.map_err(|e| e.to_string())
    })
}

fn serve_grpc<S, IO>(
    server: tonic::transport::server::Router,
    incoming: S,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Serving
where
    S: tokio_stream::Stream<Item = Result<IO, std::io::Error>> + Send + 'static,
    IO: tonic::transport::server::Connected
        + tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + Unpin
        + Send
        + 'static,
{
    Box::pin(
        async move { server.serve_with_incoming_shutdown(incoming, stop).await.map_err(|e| e.to_string()) },
    )
}
