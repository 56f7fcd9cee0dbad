//! The composition root of Skein: configuration, the OTLP receivers (tonic gRPC, axum HTTP),
//! the query/UI HTTP server, metrics and shutdown.
//!
//! This is the only crate with process-wide state (listeners, the store handle, metrics).
//! The receivers hand decoded requests to [`ingest::Ingest`]; they never see files.
#![forbid(unsafe_code)]

pub mod auth;
mod body;
mod config;
mod grpc;
mod http_api;
pub mod ingest;
mod login;
pub mod metrics;
mod otlp_http;
mod server;
pub mod tls;
mod ui;

pub use config::{
    ClickhouseSettings, Config, ConfigError, DEFAULT_HEAD_MAX_BYTES, DEFAULT_MAX_REQUEST_BYTES, StorageKind,
};
pub use server::{BoundServer, Reloader, ServerError, bind};
pub use skein_engine::DEFAULT_INDEX_MEMORY_BYTES;
pub use skein_otlp::Limits;
pub use skein_wal::FsyncPolicy;
