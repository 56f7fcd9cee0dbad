//! The ClickHouse store: Skein's [`SpanStore`](skein_store::SpanStore) for more than one
//! machine. Any number of `skein serve` nodes share one ClickHouse server or a sharded cluster.
//!
//! - Writes are durable before they are acknowledged: each batch is appended to a local
//!   write-ahead log (the *buffer*, in `--data-dir`), kept in memory for queries, and moved to
//!   ClickHouse in large inserts by a background task. A batch leaves the buffer only after
//!   ClickHouse has accepted it; when ClickHouse is down the buffer grows up to its bound,
//!   then writes are refused as overload (the OTLP throttling answer).
//! - Reads merge ClickHouse and this node's buffer, and drop duplicate spans (a batch may
//!   reach ClickHouse twice when a node dies between the insert and the buffer's cleanup).
//! - With a cluster, a trace's rows live on one shard (sharding key from the trace id), and
//!   a trace read goes to that shard only.
//!
//! `docs/clickhouse.md` documents the schema and its reasons.
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod schema;
pub mod sql;
mod store;

pub use client::{ChError, Client};
pub use schema::SCHEMA_VERSION;
pub use store::{ClickhouseConfig, ClickhouseStore, OpenError};
