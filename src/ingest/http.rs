//! The OTLP/HTTP receiver: `POST /v1/traces`, `/v1/metrics`, `/v1/logs`, in
//! binary protobuf or JSON, optionally gzip-compressed.
//!
//! Status codes follow the OTLP/HTTP specification: 200 with a partial
//! success for items rejected one by one, 400 with a `google.rpc.Status` for
//! a body that cannot be decoded, 413 above the size cap (checked on the
//! body as sent and again while decompressing, so a small gzip bomb is cut
//! off at the cap), 415 for other content types or encodings, 429 with
//! `Retry-After` when the memory budget is full. Replies use the request's
//! content type.

use std::io::Read as _;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use super::{ExportRequest, IngestError, Ingester};
use crate::internal_events::{IngestRefused, Transport};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// `google.rpc.Status`, the body of OTLP/HTTP error replies.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// gRPC code numbers used in `RpcStatus` replies.
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const INTERNAL: i32 = 13;
const UNAVAILABLE: i32 = 14;
const UNAUTHENTICATED: i32 = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

#[derive(Clone)]
struct HttpState {
    ingester: Ingester,
    max_body: usize,
    /// The bearer token senders must present, when one is configured.
    token: Option<crate::auth::Token>,
}

/// The OTLP/HTTP routes.
pub fn router(ingester: Ingester, max_body: usize, token: Option<crate::auth::Token>) -> Router {
    Router::new()
        .route("/v1/traces", post(export::<ExportTraceServiceRequest>))
        .route("/v1/metrics", post(export::<ExportMetricsServiceRequest>))
        .route("/v1/logs", post(export::<ExportLogsServiceRequest>))
        // The cap is enforced below, after decompression as well.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpState {
            ingester,
            max_body,
            token,
        })
}

/// A refusal: status, reason label and message.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    retry_after: Option<Duration>,
    /// Counted already, by the ingester.
    counted: bool,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
            counted: false,
        }
    }

    fn from_ingest(e: IngestError) -> Self {
        let reason = e.reason();
        let refusal = match e {
            IngestError::Full { retry_after, .. } | IngestError::Busy { retry_after } => Self {
                retry_after: Some(retry_after),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, reason, e.to_string())
            },
            IngestError::Unavailable { retry_after, .. } => Self {
                retry_after: Some(retry_after),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, reason, e.to_string())
            },
            IngestError::TooLarge(_) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, reason, e.to_string())
            }
            IngestError::Internal { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, reason, e.to_string())
            }
        };
        Self {
            counted: true,
            ..refusal
        }
    }

    fn rpc_code(&self) -> i32 {
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => RESOURCE_EXHAUSTED,
            StatusCode::SERVICE_UNAVAILABLE => UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR => INTERNAL,
            StatusCode::UNAUTHORIZED => UNAUTHENTICATED,
            _ => INVALID_ARGUMENT,
        }
    }

    fn into_response(self, encoding: Option<Encoding>) -> Response {
        let status = RpcStatus {
            code: self.rpc_code(),
            message: self.message,
        };
        let mut response = match encoding {
            Some(e) => encode(e, &status),
            // The content type itself was wrong: answer in plain text.
            None => status.message.into_response(),
        };
        *response.status_mut() = self.status;
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"otlp\""),
            );
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&secs).expect("digits are a valid header value"),
            );
        }
        response
    }
}

fn encode<M: prost::Message + serde::Serialize>(encoding: Encoding, message: &M) -> Response {
    let body = match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).expect("OTLP messages serialize to JSON"),
    };
    ([(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

async fn export<R: ExportRequest>(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(token) = &state.token {
        let presented = headers.get(header::AUTHORIZATION);
        if !presented.is_some_and(|v| token.matches_header(v.as_bytes())) {
            let message = if presented.is_some() {
                "the bearer token is not this receiver's token"
            } else {
                "a token is required: send Authorization: Bearer <token> (OTEL_EXPORTER_OTLP_HEADERS)"
            };
            let refusal = Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", message);
            return refuse::<R>(&state, refusal, content_type(&headers).ok());
        }
    }
    let encoding = match content_type(&headers) {
        Ok(e) => e,
        Err(refusal) => {
            return refuse::<R>(&state, refusal, None);
        }
    };
    match receive::<R>(&state, &headers, body, encoding).await {
        Ok(response) => encode(encoding, &response),
        Err(refusal) => refuse::<R>(&state, refusal, Some(encoding)),
    }
}

fn refuse<R: ExportRequest>(
    state: &HttpState,
    refusal: Refusal,
    encoding: Option<Encoding>,
) -> Response {
    // The ingester's refusals are counted where they happen.
    if !refusal.counted {
        IngestRefused {
            signal: R::SIGNAL,
            transport: Transport::Http,
            reason: refusal.reason,
        }
        .emit(state.ingester.metrics());
    }
    refusal.into_response(encoding)
}

async fn receive<R: ExportRequest>(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<R::Response, Refusal> {
    state
        .ingester
        .check_capacity(R::SIGNAL, Transport::Http)
        .map_err(Refusal::from_ingest)?;
    // The body, its decoded form and its rows exist for this many requests
    // at once; the others wait before their bodies are read.
    let turn = state.ingester.turn().await;
    let gzip = content_encoding_is_gzip(headers)?;
    let max = state.max_body;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body exceeds the limit of {max} bytes"),
        )
    };
    let raw = match Limited::new(body, max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading body: {e}"),
            ));
        }
    };
    let bytes = if gzip {
        gunzip(&raw, max).map_err(|e| e.unwrap_or_else(too_large))?
    } else {
        raw
    };
    let request = decode::<R>(&bytes, encoding)
        .map_err(|message| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message))?;
    drop(bytes);
    let prepared = state
        .ingester
        .prepare(&request, Transport::Http)
        .map_err(Refusal::from_ingest)?;
    // Only the rows (in the budget) wait for the disk.
    drop(request);
    drop(turn);
    prepared
        .commit(&state.ingester)
        .await
        .map_err(Refusal::from_ingest)
}

/// Inflates a gzip body, reading at most one byte past the cap so that a
/// bomb costs no more than the cap. `Err(None)` means the cap was exceeded.
fn gunzip(raw: &Bytes, max: usize) -> Result<Bytes, Option<Refusal>> {
    let mut out = Vec::with_capacity((raw.len() * 4).min(max));
    let decoder = flate2::read::MultiGzDecoder::new(&raw[..]);
    decoder
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Some(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid gzip body: {e}"),
            ))
        })?;
    if out.len() > max {
        return Err(None);
    }
    Ok(out.into())
}

fn decode<R: ExportRequest>(bytes: &[u8], encoding: Encoding) -> Result<R, String> {
    match encoding {
        Encoding::Protobuf => {
            R::decode(bytes).map_err(|e| format!("invalid protobuf {}: {e}", R::SIGNAL.name()))
        }
        Encoding::Json => serde_json::from_slice(bytes)
            .map_err(|e| format!("invalid OTLP/JSON {}: {e}", R::SIGNAL.name())),
    }
}

fn content_type(headers: &HeaderMap) -> Result<Encoding, Refusal> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Parameters such as `; charset=utf-8` do not change the encoding.
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case(PROTOBUF) {
        Ok(Encoding::Protobuf)
    } else if essence.eq_ignore_ascii_case(JSON) {
        Ok(Encoding::Json)
    } else {
        Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("unsupported content type {value:?}: use {PROTOBUF} or {JSON}"),
        ))
    }
}

fn content_encoding_is_gzip(headers: &HeaderMap) -> Result<bool, Refusal> {
    match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().map(str::trim))
    {
        None => Ok(false),
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") || v.is_empty() => Ok(false),
        Some(Ok(v)) if v.eq_ignore_ascii_case("gzip") => Ok(true),
        Some(v) => Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "unsupported content encoding {:?}: use gzip or none",
                v.unwrap_or("?")
            ),
        )),
    }
}
