//! TLS on every listener (rustls): HTTPS for the query API and OTLP/HTTP, OTLP/gRPC over TLS
//! with client certificates required (mTLS), a clear answer to plain text on a TLS port, and a
//! certificate renewed by a reload (what SIGHUP does) without a restart.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::TestServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use skein_server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A certificate for 127.0.0.1 (server) or a client, signed by this CA: (cert PEM, key PEM).
    fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts `ca`, presents `identity` when given, and offers `alpn`.
fn connector(ca: &Ca, identity: Option<&(String, String)>, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

use rustls::pki_types::pem::PemObject;

/// One HTTP/1.1 request over TLS; the whole answer as text.
async fn https(addr: SocketAddr, tls: &tokio_rustls::TlsConnector, request: &str) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut stream = tls.connect(ServerName::IpAddress(addr.ip().into()), tcp).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn grpc_client(
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
) -> Result<TraceServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let stream = tls.connect(ServerName::IpAddress(addr.ip().into()), tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(TraceServiceClient::new(channel))
}

#[tokio::test]
async fn every_listener_speaks_tls_and_otlp_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (cert, key) = server_ca.issue("skein");
    let files = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let server = TestServer::start_with(Config {
        tls_cert: Some(files("cert.pem", &cert)),
        tls_key: Some(files("key.pem", &key)),
        tls_client_ca: Some(files("client-ca.pem", &client_ca.cert.pem())),
        ..Config::default()
    })
    .await;

    // The query API over HTTPS (no client certificate needed there).
    let plain_client = connector(&server_ca, None, &[b"http/1.1"]);
    let answer = https(
        server.http,
        &plain_client,
        "GET /healthz HTTP/1.1\r\nhost: skein\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");

    // Plain text to a TLS port: a clear answer at once, never a hang.
    let plain = reqwest::get(format!("http://{}/healthz", server.http)).await.unwrap();
    assert_eq!(plain.status(), 400);
    assert!(plain.text().await.unwrap().contains("this port speaks TLS"));

    // OTLP/HTTP: without a client certificate the handshake fails; with one, spans are stored.
    let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"tls"}}]},"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"op","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000001000000"}]}]}]}"#;
    let post = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: skein\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let refused = https(server.otlp_http, &plain_client, &post).await;
    assert!(
        refused.is_err() || refused.as_ref().unwrap().is_empty(),
        "no answer without a client certificate: {refused:?}"
    );
    let identity = client_ca.issue("an exporter");
    let mtls = connector(&server_ca, Some(&identity), &[b"http/1.1"]);
    let answer = https(server.otlp_http, &mtls, &post).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // OTLP/gRPC over TLS with the client certificate; refused without one.
    let mut client =
        grpc_client(server.grpc, connector(&server_ca, Some(&identity), &[b"h2"])).await.unwrap();
    client.export(ExportTraceServiceRequest::default()).await.unwrap();
    let without = match grpc_client(server.grpc, connector(&server_ca, None, &[b"h2"])).await {
        Ok(mut c) => c.export(ExportTraceServiceRequest::default()).await.is_err(),
        Err(_) => true,
    };
    assert!(without, "gRPC without a client certificate is refused");

    // A renewed certificate (from another CA) is served after a reload, with no restart.
    let next_ca = Ca::new("next CA");
    let (cert2, key2) = next_ca.issue("skein renewed");
    let trusts_next = connector(&next_ca, None, &[b"http/1.1"]);
    let get = "GET /healthz HTTP/1.1\r\nhost: skein\r\nconnection: close\r\n\r\n";
    assert!(https(server.http, &trusts_next, get).await.is_err(), "still the first certificate");
    std::fs::write(dir.path().join("cert.pem"), cert2).unwrap();
    std::fs::write(dir.path().join("key.pem"), key2).unwrap();
    server.reloader.reload();
    let answer = https(server.http, &trusts_next, get).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn half_a_tls_configuration_is_refused() {
    let err = skein_server::bind(Config { tls_cert: Some("cert.pem".into()), ..Config::default() })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "--tls-cert and --tls-key go together: give both, or neither");
    let dir = tempfile::tempdir().unwrap();
    let missing = skein_server::bind(Config {
        tls_cert: Some(dir.path().join("none.pem")),
        tls_key: Some(dir.path().join("none.key")),
        data_dir: dir.path().join("data"),
        ..Config::default()
    })
    .await
    .unwrap_err();
    assert!(missing.to_string().starts_with("cannot use TLS: --tls-cert "), "{missing}");
}
