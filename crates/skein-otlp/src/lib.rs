//! OTLP trace data in and out of Skein's model.
//!
//! Owns decoding of `ExportTraceServiceRequest` bodies (protobuf and OTLP/JSON), their
//! validation against [`Limits`], and the lossless mapping of every OTLP field into
//! [`skein_model::Span`]; and the way back ([`to_traces_data`]) for the OTLP-JSON query API.
//!
//! It never touches sockets, files or HTTP: the receivers in `skein-server` hand it bytes.
//! The wire types come from the `opentelemetry-proto` crate, re-exported as [`proto`].
#![forbid(unsafe_code)]

mod decode;
mod encode;

pub use decode::{
    ConvertedBatch, DecodeError, Limits, ProtobufDecoder, decode_json, decode_protobuf,
    decode_protobuf_to_model, to_model,
};
pub use encode::{to_traces_data, traces_data_to_json};

/// The OTLP wire types used by Skein (re-exported from `opentelemetry-proto`).
pub mod proto {
    pub use opentelemetry_proto::tonic::collector::trace::v1 as collector;
    pub use opentelemetry_proto::tonic::common::v1 as common;
    pub use opentelemetry_proto::tonic::resource::v1 as resource;
    pub use opentelemetry_proto::tonic::trace::v1 as trace;
}
