//! OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, gzip accepted.

use std::io::Read;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use skein_store::Access;

use crate::ingest::{Ingest, IngestError};

#[derive(Clone, Debug)]
struct HttpReceiver {
    ingest: Ingest,
    max_request_bytes: usize,
}

/// The OTLP/HTTP routes.
pub(crate) fn router(ingest: Ingest, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpReceiver { ingest, max_request_bytes })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Encoding {
    Protobuf,
    Json,
}

/// `google.rpc.Status`, the body of OTLP/HTTP error answers.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

struct Failure {
    status: StatusCode,
    encoding: Encoding,
    message: String,
    retry_after: Option<u32>,
}

impl Failure {
    fn new(status: StatusCode, encoding: Encoding, message: impl Into<String>) -> Self {
        Failure { status, encoding, message: message.into(), retry_after: None }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = match self.status {
            StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => tonic::Code::InvalidArgument,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        } as i32;
        let status = RpcStatus { code, message: self.message };
        let mut response = encode(self.encoding, self.status, status.encode_to_vec(), || {
            serde_json::json!({"code": code, "message": status.message}).to_string()
        });
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn encode(
    encoding: Encoding,
    status: StatusCode,
    protobuf: Vec<u8>,
    json: impl FnOnce() -> String,
) -> Response {
    match encoding {
        Encoding::Protobuf => {
            (status, [(header::CONTENT_TYPE, "application/x-protobuf")], protobuf).into_response()
        }
        Encoding::Json => (status, [(header::CONTENT_TYPE, "application/json")], json()).into_response(),
    }
}

async fn export(State(rx): State<HttpReceiver>, headers: HeaderMap, body: Body) -> Response {
    let response = match handle(&rx, &headers, body).await {
        Ok(r) => r,
        Err(f) => {
            tracing::debug!(status = %f.status, message = %f.message, "otlp/http request refused");
            f.into_response()
        }
    };
    rx.ingest.metrics().request("/v1/traces", response.status().as_u16());
    response
}

async fn handle(rx: &HttpReceiver, headers: &HeaderMap, body: Body) -> Result<Response, Failure> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let encoding = match mime.as_str() {
        "application/x-protobuf" | "application/protobuf" => Encoding::Protobuf,
        "application/json" => Encoding::Json,
        _ => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Encoding::Json,
                format!(
                    "unsupported Content-Type {content_type:?}: send application/x-protobuf or application/json"
                ),
            ));
        }
    };
    let limit = rx.max_request_bytes;
    let too_large = |what: &str| {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            encoding,
            format!(
                "request body{what} is over the limit of {limit} bytes; send smaller batches or raise --max-request-bytes"
            ),
        )
    };
    let raw: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| too_large(""))?;
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let body: Bytes = match content_encoding.as_str() {
        "" | "identity" => raw,
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            let mut decoder = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
            decoder.read_to_end(&mut out).map_err(|e| {
                Failure::new(StatusCode::BAD_REQUEST, encoding, format!("malformed gzip body: {e}"))
            })?;
            if out.len() > limit {
                return Err(too_large(" after gzip decompression"));
            }
            out.into()
        }
        other => {
            return Err(Failure::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                encoding,
                format!("unsupported Content-Encoding {other:?}: send gzip or no encoding"),
            ));
        }
    };
    let answer = match encoding {
        Encoding::Protobuf => rx.ingest.export_protobuf(&body, "http").await,
        Encoding::Json => {
            let request = skein_otlp::decode_json(&body)
                .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, encoding, e.to_string()))?;
            rx.ingest.export(request, "http").await
        }
    };
    match answer {
        Ok(answer) => {
            Ok(encode(encoding, StatusCode::OK, answer.encode_to_vec(), || {
                match &answer.partial_success {
                // A full success is the empty message, `{}` in OTLP/JSON.
                None => "{}".to_owned(),
                // OTLP/JSON carries int64 as a string.
            Some(p) => serde_json::json!({
                "partialSuccess": {"rejectedSpans": p.rejected_spans.to_string(), "errorMessage": p.error_message}
            })
            .to_string(),
            }
            }))
        }
        Err(e @ (IngestError::Invalid(_) | IngestError::Malformed(_))) => {
            Err(Failure::new(StatusCode::BAD_REQUEST, encoding, e.to_string()))
        }
        Err(IngestError::Store(e)) => {
            let status = StatusCode::from_u16(e.http_status(Access::Write)).expect("a valid status");
            Err(Failure { status, encoding, message: e.to_string(), retry_after: e.retry_after_secs() })
        }
    }
}
