//! TLS on every listener, with rustls (`ring`): `--tls-cert` and `--tls-key` (PEM) for all
//! three listeners, re-read on SIGHUP; `--tls-client-ca` makes the OTLP listeners require a
//! client certificate signed by that CA (mTLS).
//!
//! Each listener gets an accept loop that hands finished handshakes to the server (axum or
//! tonic). A connection whose first byte is not a TLS handshake record gets a plain-text
//! `400` saying the port speaks TLS and is closed, so a client that forgot `https://` sees why
//! at once instead of hanging.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The TLS settings of `skein serve`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require OTLP clients to present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {path}: {message}")]
    File { flag: &'static str, path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_error(flag: &'static str, path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { flag, path: path.display().to_string(), message: message.to_string() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring: no C toolchain beyond a C compiler needed to build it (aws-lc-rs wants cmake).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(flag, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(flag, path, e))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn load_key_pair(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = read_certs("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error("--tls-key", &files.key, e))?;
    let signing =
        provider().key_provider.load_private_key(key).map_err(|e| file_error("--tls-key", &files.key, e))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        TlsError::Config(format!(
            "--tls-key {} does not belong to --tls-cert {}: {e}",
            files.key.display(),
            files.cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}

/// The certificate in force; swapped by [`Tls::reload`].
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

/// The server configurations of the listeners, sharing one certificate.
#[derive(Clone, Debug)]
pub struct Tls {
    files: TlsFiles,
    store: Arc<CertStore>,
    /// OTLP listeners (with client certificates when `--tls-client-ca` is set).
    pub(crate) otlp: Arc<ServerConfig>,
    /// The query API and UI.
    pub(crate) http: Arc<ServerConfig>,
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let store = Arc::new(CertStore { current: RwLock::new(load_key_pair(files)?) });
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))
        };
        let mut http = builder()?.with_no_client_auth().with_cert_resolver(store.clone());
        http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let otlp_builder = match &files.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs("--tls-client-ca", ca)? {
                    roots.add(cert).map_err(|e| file_error("--tls-client-ca", ca, e))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| file_error("--tls-client-ca", ca, e))?;
                builder()?.with_client_cert_verifier(verifier)
            }
            None => builder()?.with_no_client_auth(),
        };
        let mut otlp = otlp_builder.with_cert_resolver(store.clone());
        otlp.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { files: files.clone(), store, otlp: Arc::new(otlp), http: Arc::new(http) })
    }

    /// Re-reads the certificate and key; on error the one in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = load_key_pair(&self.files)?;
        *self.store.current.write().expect("certificate lock") = key;
        Ok(())
    }
}

/// Connections that finished their TLS handshake, with the peer's address.
pub(crate) type Accepted = (TlsStream<TcpStream>, SocketAddr);

/// Accepts on `listener`, shakes hands with `config` on a task per connection, and delivers
/// the secured connections; stops when the receiver is dropped.
pub(crate) fn accept_loop(listener: TcpListener, config: Arc<ServerConfig>) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel::<Accepted>(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                if let Some(stream) = handshake(tcp, peer, &acceptor).await {
                    let _ = tx.send((stream, peer)).await;
                }
            });
        }
    });
    rx
}

/// The TLS record type of a handshake: the first byte a TLS client sends.
const TLS_HANDSHAKE: u8 = 0x16;

async fn handshake(
    mut tcp: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => {
            // Plain text on a TLS port: say so, in words an HTTP client shows, and close.
            let body = "this port speaks TLS: use https:// (or a TLS-enabled OTLP exporter)\n";
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(answer.as_bytes()).await;
            let _ = tcp.shutdown().await;
            tracing::debug!(%peer, "plain-text connection to a TLS port refused");
            return None;
        }
        _ => return None,
    }
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// An axum listener over [`accept_loop`].
pub(crate) struct TlsListener {
    rx: mpsc::Receiver<Accepted>,
    addr: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        Ok(TlsListener { rx: accept_loop(listener, config), addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(accepted) => accepted,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// A TLS connection as tonic wants one (it asks each connection for its peer).
pub(crate) struct GrpcTlsStream(pub(crate) TlsStream<TcpStream>);

impl tonic::transport::server::Connected for GrpcTlsStream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for GrpcTlsStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GrpcTlsStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The secured connections of `listener`, as tonic's incoming stream.
pub(crate) fn grpc_incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> impl tokio_stream::Stream<Item = Result<GrpcTlsStream, std::io::Error>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(accept_loop(listener, config))
        .map(|(s, _)| Ok(GrpcTlsStream(s)))
}
