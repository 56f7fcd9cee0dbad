//! Starting a real server on loopback ports chosen by the OS.

#![allow(dead_code)]

use std::net::SocketAddr;

use skein_server::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    /// The embedded storage's directory, deleted when the server is dropped.
    pub data_dir: tempfile::TempDir,
    pub grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// What SIGHUP would call.
    pub reloader: skein_server::Reloader,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(Config::default()).await
    }

    pub async fn start_with(mut config: Config) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        config.data_dir = data_dir.path().to_owned();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        config.otlp_grpc_addr = any;
        config.otlp_http_addr = any;
        config.http_addr = any;
        let server = skein_server::bind(config).await.expect("server binds");
        let (grpc, otlp_http, http) = (server.otlp_grpc_addr(), server.otlp_http_addr(), server.http_addr());
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async move {
                    let _ = rx.await;
                })
                .await
                .expect("server runs");
        });
        TestServer { data_dir, grpc, otlp_http, http, stop: Some(tx), task: Some(task), reloader }
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn otlp_http_url(&self) -> String {
        format!("http://{}/v1/traces", self.otlp_http)
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = reqwest::get(self.api(path)).await.expect("query API answers");
        let status = response.status().as_u16();
        (status, response.json().await.expect("query API answers JSON"))
    }

    /// POSTs an OTLP/JSON request body to the OTLP/HTTP receiver.
    pub async fn post_otlp_json(&self, body: String) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.otlp_http_url())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the OTLP/HTTP receiver answers")
    }

    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.api(path)).await.unwrap().text().await.unwrap()
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// The value of a `name{labels} value` line of the Prometheus text, or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// The `message` of a protobuf `google.rpc.Status` body (OTLP/HTTP error answers), or "".
pub fn rpc_status_message(body: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    <RpcStatus as prost::Message>::decode(body).map(|s| s.message).unwrap_or_default()
}
