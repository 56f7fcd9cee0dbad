//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use skein_otlp::proto::collector::ExportTraceServiceResponse;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{Auth, Role};
use crate::body::{self, BodyError, BodyLimits, Budget, Coding, Reservation};
use crate::ingest::{Ingest, IngestError};

/// The gRPC `TraceService`.
///
/// Written out instead of `opentelemetry-proto`'s generated server because that one decodes
/// every request into the generated message types first; this one hands the message bytes
/// to [`skein_otlp::decode_protobuf_to_model`], which builds spans straight from them.
///
/// The request message is read and decompressed here, not by tonic, so that gRPC gets the
/// same codings (gzip, zstd, snappy), size and ratio bounds and in-flight budget as OTLP/HTTP
/// ([`crate::body`]), and so that a request too large to ever accept is answered
/// `INVALID_ARGUMENT`, which no exporter retries, rather than tonic's `RESOURCE_EXHAUSTED`,
/// which the Python SDK and rotel retry with the same bytes until they give up.
#[derive(Clone, Debug)]
pub(crate) struct TraceService {
    ingest: Ingest,
    limits: BodyLimits,
    budget: Budget,
    auth: Auth,
}

pub(crate) fn service(ingest: Ingest, limits: BodyLimits, budget: Budget, auth: Auth) -> TraceService {
    TraceService { ingest, limits, budget, auth }
}

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const ENDPOINT: &str = "grpc TraceService/Export";
/// A gRPC message's prefix: a compressed flag and a 4-byte length.
const PREFIX: usize = 5;

impl NamedService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> tower_service::Service<http::Request<B>> for TraceService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send + 'static,
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
        let token = request.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !self.auth.allows(Role::Ingest, Auth::bearer(token)) {
            self.ingest.metrics().request_refused("grpc", "unauthenticated");
            self.ingest.metrics().request(ENDPOINT, 401);
            let message = "missing or invalid bearer token: send the metadata `authorization: Bearer <token>` with a token of --ingest-token-file";
            return Box::pin(async move { Ok(Status::unauthenticated(message).into_http()) });
        }
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let mut reservation = this.budget.reservation();
            let message = match read_message(&parts.headers, body, this.limits, &mut reservation).await {
                Ok(message) => message,
                Err((status, reason)) => {
                    this.ingest.metrics().request_refused("grpc", reason);
                    this.ingest.metrics().request(ENDPOINT, grpc_to_http(status.code()));
                    let mut response = status.into_http();
                    if reason == "unsupported_encoding" {
                        response.headers_mut().insert(
                            "grpc-accept-encoding",
                            http::HeaderValue::from_static(Coding::GRPC_NAMES),
                        );
                    }
                    return Ok(response);
                }
            };
            // Hand tonic the decompressed message as an uncompressed one.
            parts.headers.remove("grpc-encoding");
            let mut framed = BytesMut::with_capacity(PREFIX + message.len());
            framed.put_u8(0);
            framed.put_u32(message.len() as u32);
            framed.extend_from_slice(&message);
            drop(message);
            let request = http::Request::from_parts(parts, http_body_util::Full::new(framed.freeze()));
            let mut grpc = Grpc::new(ExportCodec).apply_max_message_size_config(Some(usize::MAX), None);
            let export = Export { ingest: this.ingest.clone(), _reservation: reservation };
            Ok(grpc.unary(export, request).await)
        })
    }
}

/// Reads the one message of a unary call and decompresses it; on failure, the status to answer
/// and the reason to count.
async fn read_message<B>(
    headers: &http::HeaderMap,
    body: B,
    limits: BodyLimits,
    reservation: &mut Reservation,
) -> Result<Bytes, (Status, &'static str)>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let framed_limits = BodyLimits { max_bytes: limits.max_bytes.saturating_add(PREFIX), ..limits };
    let raw = body::collect(body, framed_limits, reservation).await.map_err(body_status)?;
    let malformed = |message: String| (Status::invalid_argument(message), "malformed");
    if raw.len() < PREFIX {
        return Err(malformed(format!("truncated gRPC message: {} bytes", raw.len())));
    }
    let compressed = raw[0] & 1 == 1;
    let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
    if raw.len() != PREFIX + len {
        return Err(malformed(format!(
            "a unary call carries one message: the prefix says {len} bytes, the body has {}",
            raw.len() - PREFIX
        )));
    }
    let message = raw.slice(PREFIX..);
    if message.len() > limits.max_bytes {
        return Err(body_status(BodyError::TooLarge { limit: limits.max_bytes, after: String::new() }));
    }
    if !compressed {
        return Ok(message);
    }
    let name = headers.get("grpc-encoding").and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_owned();
    if name.is_empty() || name == "identity" {
        return Err(malformed(
            "the message is flagged compressed but grpc-encoding names no compression".into(),
        ));
    }
    let Some(coding) = Coding::from_grpc(&name) else {
        return Err((
            Status::unimplemented(format!(
                "unsupported grpc-encoding {name:?}: send one of {}",
                Coding::GRPC_NAMES
            )),
            "unsupported_encoding",
        ));
    };
    body::decompress(coding, message, limits, reservation).await.map_err(body_status)
}

/// The status for a body that could not be read: only overload is retryable (with a delay);
/// a body too large or expanding too much is `INVALID_ARGUMENT`, refused the same way every
/// time, and logged because the sender must change something.
fn body_status(e: BodyError) -> (Status, &'static str) {
    let reason = e.reason();
    let status = match &e {
        BodyError::TooLarge { .. } | BodyError::Ratio { .. } => {
            tracing::warn!(protocol = "grpc", error = %e, "otlp request refused");
            Status::invalid_argument(e.to_string())
        }
        BodyError::Malformed { .. } | BodyError::Read(_) => Status::invalid_argument(e.to_string()),
        BodyError::Overloaded { retry_after, .. } => {
            retryable(Code::ResourceExhausted, e.to_string(), Some(*retry_after))
        }
    };
    (status, reason)
}

/// A status carrying `google.rpc.RetryInfo` when a delay is known, as the OTLP specification
/// asks of throttling answers.
fn retryable(code: Code, message: String, retry_after_secs: Option<u32>) -> Status {
    match retry_after_secs {
        Some(secs) => Status::with_error_details(
            code,
            message,
            ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(u64::from(secs)))),
        ),
        None => Status::new(code, message),
    }
}

/// One `Export` call: the request message's bytes in, the OTLP response out.
struct Export {
    ingest: Ingest,
    /// The request's share of the in-flight budget, released when the call is answered.
    _reservation: Reservation,
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
                Err(e @ IngestError::Malformed(_)) => {
                    ingest.metrics().request_refused("grpc", "malformed");
                    Err(Status::invalid_argument(e.to_string()))
                }
                Err(e @ IngestError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
                Err(IngestError::Store(e)) => {
                    Err(retryable(Code::from_i32(e.grpc_code()), e.to_string(), e.retry_after_secs()))
                }
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
        tonic::Code::Unimplemented => 501,
        _ => 500,
    }
}
