//! OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, compressed with any
//! coding the OpenTelemetry Collector's HTTP exporters can send.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prost::Message;
use skein_store::{Access, OtlpRequest};

use crate::auth::{Auth, Role};
use crate::body::{self, BodyError, BodyLimits, Budget, Coding};
use crate::ingest::{Ingest, IngestError};

#[derive(Clone, Debug)]
struct HttpReceiver {
    ingest: Ingest,
    limits: BodyLimits,
    budget: Budget,
    auth: Auth,
}

/// The OTLP/HTTP routes.
pub(crate) fn router(ingest: Ingest, limits: BodyLimits, budget: Budget, auth: Auth) -> Router {
    Router::new()
        .route("/v1/traces", post(export))
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpReceiver { ingest, limits, budget, auth })
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
            StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            _ => tonic::Code::Internal,
        } as i32;
        let status = RpcStatus { code, message: self.message };
        let mut response = encode(self.encoding, self.status, status.encode_to_vec(), || {
            serde_json::json!({"code": code, "message": status.message}).to_string()
        });
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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

/// The answer to a body that could not be read, counted and, when the sender must act
/// (a request too large to ever accept), logged.
fn body_failure(ingest: &Ingest, encoding: Encoding, e: BodyError) -> Failure {
    ingest.metrics().request_refused("http", e.reason());
    let status = match &e {
        BodyError::TooLarge { .. } | BodyError::Ratio { .. } => {
            tracing::warn!(protocol = "http", error = %e, "otlp request refused");
            StatusCode::PAYLOAD_TOO_LARGE
        }
        BodyError::Malformed { .. } | BodyError::Read(_) => StatusCode::BAD_REQUEST,
        BodyError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    let retry_after = match &e {
        BodyError::Overloaded { retry_after, .. } => Some(*retry_after),
        _ => None,
    };
    Failure { status, encoding, message: e.to_string(), retry_after }
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
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !rx.auth.allows(Role::Ingest, Auth::bearer(token)) {
        rx.ingest.metrics().request_refused("http", "unauthenticated");
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/json"));
        return Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            if json { Encoding::Json } else { Encoding::Protobuf },
            "missing or invalid bearer token: send `Authorization: Bearer <token>` with a token of --ingest-token-file",
        ));
    }
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
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let Some(coding) = Coding::from_http(&content_encoding) else {
        rx.ingest.metrics().request_refused("http", "unsupported_encoding");
        return Err(Failure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            encoding,
            format!(
                "unsupported Content-Encoding {content_encoding:?}: send one of {} or none",
                Coding::HTTP_NAMES
            ),
        ));
    };
    // Held until the answer is written: the body's bytes count against the in-flight budget.
    let mut reservation = rx.budget.reservation();
    let read = async {
        let raw = body::collect(body, body::Framing::Plain, rx.limits, &mut reservation).await?;
        // The body as it came is kept beside its decompressed bytes: the store may log it.
        let received = raw.clone();
        Ok((body::decompress(coding, raw, rx.limits, &mut reservation).await?, received))
    };
    let (body, received): (Bytes, Bytes) = read.await.map_err(|e| body_failure(&rx.ingest, encoding, e))?;
    let answer = match encoding {
        Encoding::Protobuf => {
            let request = OtlpRequest { protobuf: &body, compressed: coding.kept(&received) };
            rx.ingest.export_received(request, "http").await
        }
        Encoding::Json => {
            let request = skein_otlp::decode_json(&body).map_err(|e| {
                rx.ingest.metrics().request_refused("http", "malformed");
                Failure::new(StatusCode::BAD_REQUEST, encoding, e.to_string())
            })?;
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
        Err(e @ IngestError::Malformed(_)) => {
            rx.ingest.metrics().request_refused("http", "malformed");
            Err(Failure::new(StatusCode::BAD_REQUEST, encoding, e.to_string()))
        }
        Err(e @ IngestError::Invalid(_)) => {
            Err(Failure::new(StatusCode::BAD_REQUEST, encoding, e.to_string()))
        }
        Err(IngestError::Store(e)) => {
            let status = StatusCode::from_u16(e.http_status(Access::Write)).expect("a valid status");
            Err(Failure { status, encoding, message: e.to_string(), retry_after: e.retry_after_secs() })
        }
    }
}
