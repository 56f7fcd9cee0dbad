//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prost::Message;
use skein_otlp::proto::collector::ExportTraceServiceResponse;
use tonic::Code;
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::ingest::{Ingest, IngestError};

/// The gRPC `TraceService`, accepting gzip and refusing messages over `max_request_bytes`
/// (measured after decompression, so a gzip bomb is refused).
///
/// Written out instead of `opentelemetry-proto`'s generated server because that one decodes
/// every request into the generated message types first; this one hands the message bytes
/// to [`skein_otlp::decode_protobuf_to_model`], which builds spans straight from them.
#[derive(Clone, Debug)]
pub(crate) struct TraceService {
    ingest: Ingest,
    max_request_bytes: usize,
}

pub(crate) fn service(ingest: Ingest, max_request_bytes: usize) -> TraceService {
    TraceService { ingest, max_request_bytes }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const ENDPOINT: &str = "grpc TraceService/Export";

impl NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> tower_service::Service<http::Request<B>> for TraceService
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != EXPORT_PATH {
            let message = format!("no method {} here; OTLP traces go to {EXPORT_PATH}", request.uri().path());
            return Box::pin(async move { Ok(Status::unimplemented(message).into_http()) });
        }
        let mut gzip = EnabledCompressionEncodings::default();
        gzip.enable(CompressionEncoding::Gzip);
        let mut grpc = Grpc::new(ExportCodec)
            .apply_compression_config(gzip, gzip)
            .apply_max_message_size_config(Some(self.max_request_bytes), None);
        let export = Export { ingest: self.ingest.clone() };
        Box::pin(async move { Ok(grpc.unary(export, request).await) })
    }
}

/// One `Export` call: the request message's bytes in, the OTLP response out.
struct Export {
    ingest: Ingest,
}

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Result<Response<ExportTraceServiceResponse>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let result = ingest.export_protobuf(request.get_ref(), "grpc").await;
            let answer = match result {
                Ok(response) => Ok(Response::new(response)),
                Err(e @ (IngestError::Invalid(_) | IngestError::Malformed(_))) => {
                    Err(Status::invalid_argument(e.to_string()))
                }
                Err(IngestError::Store(e)) => Err(Status::new(Code::from_i32(e.grpc_code()), e.to_string())),
            };
            let status = match &answer {
                Ok(_) => 200,
                Err(s) => grpc_to_http(s.code()),
            };
            ingest.metrics().request(ENDPOINT, status);
            answer
        })
    }
}

/// Requests arrive as the message's bytes (split off tonic's buffer, not copied); responses
/// are encoded with prost.
#[derive(Clone, Copy, Debug, Default)]
struct ExportCodec;

impl Codec for ExportCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ExportCodec;
    type Decoder = ExportCodec;

    fn encoder(&mut self) -> ExportCodec {
        ExportCodec
    }

    fn decoder(&mut self) -> ExportCodec {
        ExportCodec
    }
}

impl Encoder for ExportCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: ExportTraceServiceResponse, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf).map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

impl Decoder for ExportCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// The HTTP status that corresponds to a gRPC code, for the request counter.
fn grpc_to_http(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::Ok => 200,
        tonic::Code::InvalidArgument => 400,
        tonic::Code::ResourceExhausted => 429,
        tonic::Code::Unavailable => 503,
        _ => 500,
    }
}
