//! SQL spans for sqlx: the Rust `otelsql`.
//!
//! [`TracedPool`] wraps a `sqlx::Pool` and is itself a sqlx `Executor`, so queries run on it
//! unchanged: `sqlx::query("SELECT …").bind(id).fetch_one(&pool)`. Each query gets a CLIENT
//! span named `{operation} {table}` with `db.system.name`, `db.query.text` (the parameterized
//! text; literal strings and numbers written into the SQL are replaced by `?`, bound values are
//! never recorded), `db.operation.name`, `db.collection.name` when the statement names one
//! table, `db.namespace`, `server.address`/`server.port` (when set), and `error.type` on failure.
//!
//! ```
//! # async fn f() -> Result<(), sqlx::Error> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let pool = skein_otel::sqlx::TracedPool::new(pool).with_namespace("shop");
//! let n: i64 = sqlx::query_scalar("SELECT 1 + ?").bind(1).fetch_one(&pool).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use futures_core::Stream;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::FutureExt as _;
use opentelemetry::trace::{FutureExt as _, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use sqlx::{Database, Either, Execute, Executor, Pool, SqlStr};

use crate::semconv::*;

/// A `sqlx::Pool` that makes a span for every query run on it. Cloning is cheap (it clones
/// the pool handle).
pub struct TracedPool<DB: Database> {
    pool: Pool<DB>,
    namespace: Option<String>,
    server: Option<(String, Option<u16>)>,
    tracer: std::sync::Arc<opentelemetry::global::BoxedTracer>,
}

impl<DB: Database> Clone for TracedPool<DB> {
    fn clone(&self) -> Self {
        TracedPool {
            pool: self.pool.clone(),
            namespace: self.namespace.clone(),
            server: self.server.clone(),
            tracer: self.tracer.clone(),
        }
    }
}

impl<DB: Database> fmt::Debug for TracedPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedPool").field("pool", &self.pool).field("namespace", &self.namespace).finish()
    }
}

impl<DB: Database> TracedPool<DB> {
    /// Wraps `pool`, tracing with the global provider (create it after [`crate::init`]).
    pub fn new(pool: Pool<DB>) -> Self {
        TracedPool { pool, namespace: None, server: None, tracer: std::sync::Arc::new(crate::tracer()) }
    }

    /// `db.namespace`: the database (or schema, or file) name.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// `server.address` and `server.port` of the database server.
    pub fn with_server(mut self, address: impl Into<String>, port: Option<u16>) -> Self {
        self.server = Some((address.into(), port));
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

    /// The wrapped pool (queries run on it directly are not traced).
    pub fn inner(&self) -> &Pool<DB> {
        &self.pool
    }

    fn start(&self, sql: &str) -> Context {
        let summary = summarize(sql);
        let mut attributes = Vec::with_capacity(7);
        attributes.push(KeyValue::new(DB_SYSTEM_NAME, system_name(DB::NAME)));
        attributes.push(KeyValue::new(DB_QUERY_TEXT, sanitize(sql)));
        if let Some(op) = &summary.operation {
            attributes.push(KeyValue::new(DB_OPERATION_NAME, op.clone()));
        }
        if let Some(table) = &summary.collection {
            attributes.push(KeyValue::new(DB_COLLECTION_NAME, table.clone()));
        }
        if let Some(ns) = &self.namespace {
            attributes.push(KeyValue::new(DB_NAMESPACE, ns.clone()));
        }
        if let Some((addr, port)) = &self.server {
            attributes.push(KeyValue::new(SERVER_ADDRESS, addr.clone()));
            if let Some(p) = port {
                attributes.push(KeyValue::new(SERVER_PORT, *p as i64));
            }
        }
        let name = match (&summary.operation, &summary.collection) {
            (Some(op), Some(t)) => format!("{op} {t}"),
            (Some(op), None) => op.clone(),
            _ => system_name(DB::NAME).to_owned(),
        };
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

fn system_name(db: &str) -> &'static str {
    match db {
        "SQLite" => "sqlite",
        "PostgreSQL" => "postgresql",
        "MySQL" => "mysql",
        _ => "other_sql",
    }
}

fn record_error(cx: &Context, e: &sqlx::Error) {
    let span = cx.span();
    let kind = match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()).unwrap_or_else(|| "database".into()),
        sqlx::Error::RowNotFound => "row_not_found".into(),
        sqlx::Error::PoolTimedOut => "pool_timed_out".into(),
        sqlx::Error::Io(_) => "io".into(),
        _ => "_OTHER".into(),
    };
    span.set_attribute(KeyValue::new(ERROR_TYPE, kind));
    span.set_status(Status::error(e.to_string()));
}

/// The first keyword and the single table a statement names, when it is that simple.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    operation: Option<String>,
    collection: Option<String>,
}

fn summarize(sql: &str) -> Summary {
    let words: Vec<&str> = sql.split_whitespace().collect();
    let Some(first) = words.first() else { return Summary::default() };
    let operation = first.trim_matches(|c: char| !c.is_ascii_alphabetic()).to_ascii_uppercase();
    if operation.is_empty() {
        return Summary::default();
    }
    if operation == "WITH" {
        // A common table expression: the operation is the statement after the CTEs (the first
        // keyword outside parentheses); it reads several relations, so no single collection.
        return Summary {
            operation: Some(statement_after_ctes(&words).unwrap_or(operation)),
            collection: None,
        };
    }
    // The word after `kw`, skipping `IF [NOT] EXISTS`.
    let after = |kw: &str| {
        let i = words.iter().position(|w| w.eq_ignore_ascii_case(kw))?;
        words[i + 1..]
            .iter()
            .find(|w| !["IF", "NOT", "EXISTS"].iter().any(|k| w.eq_ignore_ascii_case(k)))
            .map(|t| t.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.')).to_owned())
    };
    let collection = match operation.as_str() {
        "SELECT" | "DELETE" => {
            // Joins and sub-selects name several tables: then none is "the" collection.
            let tables = words
                .iter()
                .filter(|w| w.eq_ignore_ascii_case("from") || w.eq_ignore_ascii_case("join"))
                .count();
            if tables == 1 { after("FROM") } else { None }
        }
        "INSERT" | "REPLACE" => after("INTO"),
        "UPDATE" => words.get(1).map(|t| t.to_string()),
        "CREATE" | "DROP" | "ALTER" => after("TABLE"),
        _ => None,
    };
    Summary { operation: Some(operation), collection: collection.filter(|c| !c.is_empty() && c != "(") }
}

/// The main statement's keyword of `WITH … AS (…) SELECT …`: the first of SELECT, INSERT,
/// UPDATE, DELETE, REPLACE or MERGE at parenthesis depth 0.
fn statement_after_ctes(words: &[&str]) -> Option<String> {
    let mut depth = 0i32;
    for w in words {
        let starts_at = depth + w.chars().take_while(|&c| c == '(').count() as i32;
        let keyword = w.trim_matches(|c: char| !c.is_ascii_alphabetic()).to_ascii_uppercase();
        if starts_at == 0
            && ["SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"].contains(&keyword.as_str())
        {
            return Some(keyword);
        }
        depth += w.matches('(').count() as i32 - w.matches(')').count() as i32;
    }
    None
}

/// Replaces literal strings and numbers in SQL text with `?`, keeping placeholders (`?`,
/// `$1`, `:name`) and identifiers (`t1`, `"col"`).
pub fn sanitize(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut prev: Option<char> = None;
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                // A string literal; '' inside is an escaped quote.
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                        }
                        Some('\'') | None => break,
                        Some(_) => {}
                    }
                }
                out.push('?');
                prev = Some('?');
            }
            c if c.is_ascii_digit()
                && !prev
                    .is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '$' || p == '"' || p == '.') =>
            {
                while chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '.') {
                    chars.next();
                }
                out.push('?');
                prev = Some('?');
            }
            c => {
                out.push(c);
                prev = Some(c);
            }
        }
    }
    out
}

/// The SQL and arguments of a query, taken out so the text is known before it runs.
struct Peeked<DB: Database> {
    sql: SqlStr,
    arguments: Option<DB::Arguments>,
    persistent: bool,
}

impl<DB: Database> Execute<'_, DB> for Peeked<DB> {
    fn sql(self) -> SqlStr {
        self.sql
    }

    fn statement(&self) -> Option<&DB::Statement> {
        None
    }

    fn take_arguments(&mut self) -> Result<Option<DB::Arguments>, sqlx::error::BoxDynError> {
        Ok(self.arguments.take())
    }

    fn persistent(&self) -> bool {
        self.persistent
    }
}

fn peek<'q, DB: Database, E: Execute<'q, DB>>(mut query: E) -> Result<Peeked<DB>, sqlx::Error> {
    let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
    let persistent = query.persistent();
    Ok(Peeked { sql: query.sql(), arguments, persistent })
}

/// Ends the span when the row stream ends or is dropped.
struct SpanStream<'e, T> {
    inner: BoxStream<'e, Result<T, sqlx::Error>>,
    cx: Option<Context>,
}

impl<T> Stream for SpanStream<'_, T> {
    type Item = Result<T, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let _guard = self.cx.as_ref().map(|cx| cx.clone().attach());
        let item = std::task::ready!(self.inner.as_mut().poll_next(task));
        match &item {
            Some(Err(e)) => {
                if let Some(cx) = self.cx.take() {
                    record_error(&cx, e);
                    cx.span().end();
                }
            }
            None => {
                if let Some(cx) = self.cx.take() {
                    cx.span().end();
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(item)
    }
}

impl<T> Drop for SpanStream<'_, T> {
    fn drop(&mut self) {
        if let Some(cx) = self.cx.take() {
            cx.span().end();
        }
    }
}

impl<'c, DB: Database> Executor<'c> for &'c TracedPool<DB>
where
    for<'p> &'p Pool<DB>: Executor<'p, Database = DB>,
{
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let peeked = match peek(query) {
            Ok(p) => p,
            Err(e) => return Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        let cx = self.start(peeked.sql.as_str());
        let inner = {
            let _guard = cx.clone().attach();
            self.pool.fetch_many(peeked)
        };
        Box::pin(SpanStream { inner, cx: Some(cx) })
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let peeked = match peek(query) {
            Ok(p) => p,
            Err(e) => return async move { Err(e) }.boxed(),
        };
        let cx = self.start(peeked.sql.as_str());
        let fut = self.pool.fetch_optional(peeked).with_context(cx.clone());
        async move {
            let result = fut.await;
            if let Err(e) = &result {
                record_error(&cx, e);
            }
            cx.span().end();
            result
        }
        .boxed()
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, Result<DB::Statement, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<DB>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool.describe(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_hides_literals_but_keeps_placeholders_and_identifiers() {
        assert_eq!(
            sanitize("SELECT * FROM t1 WHERE name = 'O''Brien' AND age > 42 AND id = ? AND x = $2"),
            "SELECT * FROM t1 WHERE name = ? AND age > ? AND id = ? AND x = $2"
        );
        assert_eq!(
            sanitize("INSERT INTO orders (id, total) VALUES (7, 19.99)"),
            "INSERT INTO orders (id, total) VALUES (?, ?)"
        );
        assert_eq!(sanitize("SELECT \"col2\" FROM a.b2"), "SELECT \"col2\" FROM a.b2");
    }

    #[test]
    fn summarize_finds_operation_and_single_table() {
        let s = |sql| summarize(sql);
        assert_eq!(
            s("select id from orders where id = ?"),
            Summary { operation: Some("SELECT".into()), collection: Some("orders".into()) }
        );
        assert_eq!(s("INSERT INTO cart_items (a) VALUES (?)").collection.as_deref(), Some("cart_items"));
        assert_eq!(s("UPDATE stock SET n = n - 1").collection.as_deref(), Some("stock"));
        assert_eq!(s("SELECT * FROM a JOIN b ON a.id = b.id").collection, None);
        assert_eq!(s("CREATE TABLE IF NOT EXISTS x (id INT)").collection.as_deref(), Some("x"));
        assert_eq!(
            s(
                "WITH RECURSIVE spin(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM spin WHERE n < 10) SELECT id FROM t"
            ),
            Summary { operation: Some("SELECT".into()), collection: None }
        );
        assert_eq!(
            s(
                "with recent as ( select * from orders ) delete from orders where id in (select id from recent)"
            ),
            Summary { operation: Some("DELETE".into()), collection: None }
        );
        assert_eq!(s("WITH broken AS (SELECT").operation.as_deref(), Some("WITH"));
    }
}
