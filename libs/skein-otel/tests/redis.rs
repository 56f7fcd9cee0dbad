//! Redis spans against a real `redis-server` (installed by `scripts/test`), through both a
//! `MultiplexedConnection` and a `ConnectionManager`.

#![cfg(feature = "redis")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _};
use redis::AsyncCommands;
use skein_otel::FutureContextExt;
use skein_otel::redis::TracedConnection;
use skein_otel::testing::Recorder;

struct RedisServer {
    child: Child,
    port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Option<RedisServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = match Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("redis-server is not installed ({e}): scripts/test installs it");
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg}");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(RedisServer { child, port })
}

#[tokio::test]
async fn commands_and_pipelines_become_client_spans() {
    let Some(server) = start_redis() else { return };
    let recorder = Recorder::new();
    let provider = recorder.provider("cart");
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).unwrap();

    let multiplexed = client.get_multiplexed_async_connection().await.unwrap();
    let mut conn = TracedConnection::new(multiplexed)
        .with_server("127.0.0.1", server.port)
        .with_tracer_provider(&provider);
    let manager = redis::aio::ConnectionManager::new(client.clone()).await.unwrap();
    let mut managed = TracedConnection::new(manager).with_tracer_provider(&provider).with_arguments(true);

    let root = provider.tracer("cart").start("GET /cart");
    let cx = opentelemetry::Context::current_with_span(root);
    async {
        let _: () = conn.set("cart:42", "3 items").await.unwrap();
        let got: String = conn.get("cart:42").await.unwrap();
        assert_eq!(got, "3 items");
        let (a, b): (i64, i64) =
            redis::pipe().incr("hits", 1).incr("hits", 2).query_async(&mut conn).await.unwrap();
        assert_eq!((a, b), (1, 3));
        let err = redis::cmd("HGET").arg("cart:42").arg("f").query_async::<Option<String>>(&mut conn).await;
        assert!(err.is_err(), "HGET on a string is WRONGTYPE");
        let _: () = managed.set("session", "abc").await.unwrap();
    }
    .in_context(cx.clone())
    .await;
    cx.span().end();

    let check = recorder.check();
    check.assert_connected();
    let set = check.span("SET");
    assert_eq!(set.data.span_kind, SpanKind::Client);
    assert_eq!(set.attr("db.system.name").as_deref(), Some("redis"));
    assert_eq!(set.attr("db.operation.name").as_deref(), Some("SET"));
    assert_eq!(set.attr("db.query.text").as_deref(), Some("SET ? ?"), "argument values are not recorded");
    assert_eq!(set.attr("db.namespace").as_deref(), Some("0"));
    assert_eq!(set.attr("server.port"), Some(server.port.to_string()));
    check.assert_parent("GET /cart", "SET");
    let pipeline = check.span("PIPELINE");
    assert_eq!(pipeline.attr("db.operation.batch.size").as_deref(), Some("2"));
    assert_eq!(pipeline.attr("db.query.text").as_deref(), Some("INCRBY ? ?\nINCRBY ? ?"));
    let hget = check.span("HGET");
    assert!(matches!(hget.data.status, Status::Error { .. }));
    assert_eq!(hget.attr("error.type").as_deref(), Some("WRONGTYPE"));
    let opted_in = check.spans.iter().find(|s| s.attr("db.query.text").as_deref() == Some("SET session abc"));
    assert!(opted_in.is_some(), "with_arguments(true) records values (ConnectionManager works too)");
}
