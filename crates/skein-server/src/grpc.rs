//! OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use skein_otlp::proto::collector::ExportTraceServiceResponse;
use skein_store::OtlpRequest;
use tonic::Code;
use tonic::Status;
use tonic::server::NamedService;
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::{Auth, Role};
use crate::body::{self, BodyError, BodyLimits, Budget, Coding, Framing, Reservation};
use crate::ingest::{Ingest, IngestError};

/// The gRPC `TraceService`.
///
/// Written out instead of `opentelemetry-proto`'s generated server because that one decodes
/// every request into the generated message types first; this one hands the message bytes
/// to the ingest's [`skein_otlp::ProtobufDecoder`], which builds spans straight from them.
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
            let (parts, body) = request.into_parts();
            let mut reservation = this.budget.reservation();
            let (message, received) =
                match read_message(&parts.headers, body, this.limits, &mut reservation).await {
                    Ok(read) => read,
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
            let compressed = received.as_ref().and_then(|(coding, body)| coding.kept(body));
            let answer = export(&this.ingest, OtlpRequest { protobuf: &message, compressed }).await;
            drop(message);
            drop(reservation);
            Ok(match answer {
                Ok(response) => ok_response(&parts.headers, &response),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Stores one request message's spans; the OTLP response, or the status to answer.
async fn export(ingest: &Ingest, message: OtlpRequest<'_>) -> Result<ExportTraceServiceResponse, Status> {
    let answer = match ingest.export_received(message, "grpc").await {
        Ok(response) => Ok(response),
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
}

/// A successful unary answer: the response message, uncompressed, then the trailers with
/// `grpc-status: 0`. Written here rather than by tonic's unary server, which takes the request
/// as a framed body and would copy the message twice more.
fn ok_response(
    request: &http::HeaderMap,
    response: &ExportTraceServiceResponse,
) -> http::Response<tonic::body::Body> {
    let mut framed = BytesMut::with_capacity(PREFIX + response.encoded_len());
    framed.put_u8(0);
    framed.put_u32(response.encoded_len() as u32);
    response.encode(&mut framed).expect("the buffer has room for the message");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let mut answer = http::Response::new(tonic::body::Body::new(Unary {
        message: Some(framed.freeze()),
        trailers: Some(trailers),
    }));
    let content_type = match request.get(http::header::CONTENT_TYPE) {
        Some(t) if t.as_bytes().starts_with(b"application/grpc") => t.clone(),
        _ => http::HeaderValue::from_static("application/grpc"),
    };
    answer.headers_mut().insert(http::header::CONTENT_TYPE, content_type);
    answer
}

/// The body of a unary answer: one data frame, then the trailers.
struct Unary {
    message: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(http_body::Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

/// Reads the one message of a unary call and decompresses it, with the message as it came when
/// it came compressed; on failure, the status to answer and the reason to count.
async fn read_message<B>(
    headers: &http::HeaderMap,
    body: B,
    limits: BodyLimits,
    reservation: &mut Reservation,
) -> Result<(Bytes, Option<(Coding, Bytes)>), (Status, &'static str)>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let framed_limits = BodyLimits { max_bytes: limits.max_bytes.saturating_add(PREFIX), ..limits };
    let raw = body::collect(body, Framing::Grpc, framed_limits, reservation).await.map_err(body_status)?;
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
        return Ok((message, None));
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
    let received = message.clone();
    let message = body::decompress(coding, message, limits, reservation).await.map_err(body_status)?;
    Ok((message, Some((coding, received))))
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

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use skein_otlp::proto::collector::ExportTracePartialSuccess;

    use super::*;

    #[tokio::test]
    async fn a_successful_answer_is_the_framed_message_then_status_ok() {
        let response = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "two spans had no trace id".into(),
            }),
        };
        let mut request = http::HeaderMap::new();
        request.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc+proto"));
        let answer = ok_response(&request, &response);
        assert_eq!(answer.status(), http::StatusCode::OK);
        assert_eq!(answer.headers()[http::header::CONTENT_TYPE], "application/grpc+proto");
        let body = answer.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        let bytes = body.to_bytes();
        assert_eq!(bytes[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize, bytes.len() - 5);
        assert_eq!(ExportTraceServiceResponse::decode(&bytes[5..]).unwrap(), response);

        let plain = ok_response(&http::HeaderMap::new(), &ExportTraceServiceResponse::default());
        assert_eq!(plain.headers()[http::header::CONTENT_TYPE], "application/grpc");
        let body = plain.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&body.to_bytes()[..], &[0, 0, 0, 0, 0]);
    }
}
