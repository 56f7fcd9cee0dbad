//! Redis spans: the Rust `redisotel`.
//!
//! [`TracedConnection`] wraps any `redis::aio::ConnectionLike` (a `MultiplexedConnection`, a
//! `ConnectionManager`, …) and is one itself, so commands run on it unchanged. Each command
//! gets a CLIENT span named after it (`GET`, `HSET`), each pipeline one span named `PIPELINE`,
//! with `db.system.name=redis`, `db.operation.name`, `db.namespace` (the database index),
//! `server.address`/`server.port` when set, and `db.query.text`: the command with its
//! arguments replaced by `?`, unless [`TracedConnection::with_arguments`] opts in to values.
//!
//! ```no_run
//! # async fn f() -> redis::RedisResult<()> {
//! use redis::AsyncCommands;
//! let client = redis::Client::open("redis://127.0.0.1:6379/")?;
//! let conn = client.get_multiplexed_async_connection().await?;
//! let mut conn = skein_otel::redis::TracedConnection::new(conn).with_server("127.0.0.1", 6379);
//! let _: () = conn.set("cart:42", "3 items").await?;
//! # Ok(()) }
//! ```

use opentelemetry::trace::{FutureExt as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::semconv::*;

const DB_OPERATION_BATCH_SIZE: &str = "db.operation.batch.size";

/// A Redis connection that makes a span for every command and pipeline.
#[derive(Clone)]
pub struct TracedConnection<C> {
    inner: C,
    server: Option<(String, u16)>,
    with_arguments: bool,
    tracer: std::sync::Arc<opentelemetry::global::BoxedTracer>,
}

impl<C> std::fmt::Debug for TracedConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedConnection").field("server", &self.server).finish_non_exhaustive()
    }
}

impl<C: ConnectionLike> TracedConnection<C> {
    /// Wraps `inner`, tracing with the global provider (create it after [`crate::init`]).
    pub fn new(inner: C) -> Self {
        TracedConnection {
            inner,
            server: None,
            with_arguments: false,
            tracer: std::sync::Arc::new(crate::tracer()),
        }
    }

    /// `server.address` and `server.port`.
    pub fn with_server(mut self, address: impl Into<String>, port: u16) -> Self {
        self.server = Some((address.into(), port));
        self
    }

    /// Records argument values in `db.query.text` (off by default: they may be personal data).
    pub fn with_arguments(mut self, yes: bool) -> Self {
        self.with_arguments = yes;
        self
    }

    /// Traces with this provider instead of the global one.
    pub fn with_tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::trace::TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        self.tracer = std::sync::Arc::new(crate::tracer_from(provider));
        self
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }

    fn text(&self, cmd: &Cmd) -> (String, String) {
        let mut args = cmd.args_iter();
        let name = match args.next() {
            Some(redis::Arg::Simple(n)) => String::from_utf8_lossy(n).to_ascii_uppercase(),
            _ => "UNKNOWN".to_owned(),
        };
        let mut text = name.clone();
        for arg in args {
            text.push(' ');
            match arg {
                redis::Arg::Simple(v) if self.with_arguments => text.push_str(&String::from_utf8_lossy(v)),
                redis::Arg::Cursor => text.push_str("<cursor>"),
                _ => text.push('?'),
            }
        }
        (name, text)
    }

    fn start(&self, name: String, operation: String, text: String, batch: Option<usize>) -> Context {
        let mut attributes = vec![
            KeyValue::new(DB_SYSTEM_NAME, "redis"),
            KeyValue::new(DB_OPERATION_NAME, operation),
            KeyValue::new(DB_QUERY_TEXT, text),
            KeyValue::new(DB_NAMESPACE, self.inner.get_db().to_string()),
        ];
        if let Some(n) = batch {
            attributes.push(KeyValue::new(DB_OPERATION_BATCH_SIZE, n as i64));
        }
        if let Some((addr, port)) = &self.server {
            attributes.push(KeyValue::new(SERVER_ADDRESS, addr.clone()));
            attributes.push(KeyValue::new(SERVER_PORT, *port as i64));
        }
        let parent = Context::current();
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&*self.tracer, &parent);
        parent.with_span(span)
    }
}

/// Ends the span, marking it failed for a transport error or a server error reply (which
/// redis returns inside `Ok` as `Value::ServerError`, for a command or any pipeline element).
fn finish<'v>(cx: &Context, result: Result<impl IntoIterator<Item = &'v Value>, &redis::RedisError>) {
    let span = cx.span();
    match result {
        Err(e) => {
            span.set_attribute(KeyValue::new(ERROR_TYPE, e.code().unwrap_or("_OTHER").to_owned()));
            span.set_status(Status::error(e.to_string()));
        }
        Ok(values) => {
            if let Some(e) = values.into_iter().find_map(|v| match v {
                Value::ServerError(e) => Some(e),
                _ => None,
            }) {
                span.set_attribute(KeyValue::new(ERROR_TYPE, e.code().to_owned()));
                span.set_status(Status::error(e.to_string()));
            }
        }
    }
    span.end();
}

impl<C: ConnectionLike + Send + Sync> ConnectionLike for TracedConnection<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let (name, text) = self.text(cmd);
        let cx = self.start(name.clone(), name, text, None);
        let fut = self.inner.req_packed_command(cmd).with_context(cx.clone());
        Box::pin(async move {
            let result = fut.await;
            finish(&cx, result.as_ref().map(std::iter::once));
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let texts: Vec<(String, String)> = pipeline.cmd_iter().map(|c| self.text(c)).collect();
        let text = texts.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n");
        let cx = self.start("PIPELINE".into(), "PIPELINE".into(), text, Some(texts.len()));
        let fut = self.inner.req_packed_commands(pipeline, offset, count).with_context(cx.clone());
        Box::pin(async move {
            let result = fut.await;
            finish(&cx, result.as_ref().map(|values| values.iter()));
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}
