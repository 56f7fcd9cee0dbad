//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use skein_otlp::proto::collector::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use skein_store::StoreError;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::ingest::{Ingest, IngestError};

#[derive(Debug)]
struct Receiver {
    ingest: Ingest,
}

/// The gRPC service, accepting gzip and refusing messages over `max_request_bytes`
/// (measured after decompression, so a gzip bomb is refused).
pub(crate) fn service(ingest: Ingest, max_request_bytes: usize) -> TraceServiceServer<impl TraceService> {
    TraceServiceServer::new(Receiver { ingest })
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip)
        .max_decoding_message_size(max_request_bytes)
}

const ENDPOINT: &str = "grpc TraceService/Export";

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let result = self.ingest.export(request.into_inner(), "grpc").await;
        let answer = match result {
            Ok(response) => Ok(Response::new(response)),
            Err(e @ IngestError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(IngestError::Store(e @ StoreError::Overloaded(_))) => {
                Err(Status::resource_exhausted(e.to_string()))
            }
            Err(IngestError::Store(e @ StoreError::Unavailable(_))) => {
                Err(Status::unavailable(e.to_string()))
            }
            Err(IngestError::Store(e @ StoreError::Internal(_))) => Err(Status::internal(e.to_string())),
        };
        let status = match &answer {
            Ok(_) => 200,
            Err(s) => grpc_to_http(s.code()),
        };
        self.ingest.metrics().request(ENDPOINT, status);
        answer
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
