//! OTLP export of Homeostat's rationale spans: what an OpenTelemetry SDK's
//! batch span processor and OTLP exporter do, for spans Homeostat builds
//! itself as `ResourceSpans` messages.
//!
//! [`Exporter::send`] never blocks the engine: spans go into a bounded queue
//! (dropped and counted when it is full) that one background task batches by
//! size or delay, groups by resource and sends over OTLP/HTTP (protobuf or
//! JSON, via reqwest) or OTLP/gRPC (the opentelemetry-proto tonic client),
//! retrying what the OTLP specification calls retryable. Configuration is
//! [`ExportConfig`], from the config file and then the standard `OTEL_*`
//! environment variables ([`ExportConfig::with_env`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::codec::CompressionEncoding;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

/// Attempts per batch, the first included, before it is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// The first backoff; each further one doubles, with jitter.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts: a server asking (`Retry-After`) for a
/// longer one gets the batch given up rather than the queue held.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

const GRPC_TLS_NOT_BUILT_IN: &str = "TLS for OTLP/gRPC is not built into Homeostat: use http/protobuf for an https:// endpoint, or http:// (e.g. a local OpenTelemetry Collector)";

/// The OTLP transport, named as the `OTEL_EXPORTER_OTLP_PROTOCOL` spec spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum Protocol {
    /// OTLP/gRPC.
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/HTTP with OTLP/JSON bodies.
    #[serde(rename = "http/json")]
    HttpJson,
}

/// Compression of export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// Where and how rationale spans are exported; the defaults are the SDK's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Where spans go; none (the default) disables export. For the HTTP
    /// protocols, a URL with a path other than `/` is the traces endpoint
    /// itself (`http://collector:4318/custom/traces`); otherwise `/v1/traces`
    /// is appended (`http://collector:4318` posts to `.../v1/traces`). For
    /// grpc, `http://host:4317`. `https://` works with the HTTP protocols
    /// (certificates checked against the system's roots), not with grpc.
    pub endpoint: Option<String>,
    /// `grpc`, `http/protobuf` (default) or `http/json`.
    pub protocol: Protocol,
    /// Headers (gRPC metadata) sent with every request, e.g. credentials:
    /// `headers = [["authorization", "Bearer ..."]]`.
    pub headers: Vec<(String, String)>,
    /// Time one export request may take.
    #[serde(with = "crate::serde_duration")]
    pub timeout: Duration,
    /// `none` (default) or `gzip`.
    pub compression: Compression,
    /// Spans waiting for export at most; spans sent while it is full are
    /// dropped and counted, the sender never waits.
    pub max_queue_size: usize,
    /// Spans per export request at most; at most `max_queue_size`.
    pub max_batch_size: usize,
    /// Longest time a span waits for its batch to fill before it is sent.
    #[serde(with = "crate::serde_duration")]
    pub schedule_delay: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: Protocol::HttpProtobuf,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            compression: Compression::None,
            max_queue_size: 2048,
            max_batch_size: 512,
            schedule_delay: Duration::from_secs(1),
        }
    }
}

/// Why an export configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExportConfigError {
    /// An `OTEL_*` variable holds a value that cannot be used.
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: &'static str,
        value: String,
        message: String,
    },
    /// A setting of the configuration file cannot be used.
    #[error("invalid export setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ExportConfig {
    /// Applies the standard OTLP exporter and batch span processor variables
    /// over this configuration (the environment wins, as it configures SDKs)
    /// and validates the result. An empty variable counts as unset. The
    /// traces-specific variable of a pair wins over the generic one; a
    /// headers variable replaces the configured headers as a whole. One
    /// departure from the spec: a traces endpoint without a path gets
    /// `/v1/traces` (the config-file rule) where the spec would post to `/`.
    pub fn with_env(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ExportConfigError> {
        let get = |var: &'static str| {
            lookup(var)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (var, v))
        };
        let either = |specific, generic| get(specific).or_else(|| get(generic));
        if let Some((var, value)) = get("OTEL_SDK_DISABLED") {
            match value.trim().to_ascii_lowercase().as_str() {
                "true" => {
                    self.endpoint = None;
                    return Ok(self);
                }
                "false" => {}
                _ => return Err(env_error(var, &value, "expected true or false")),
            }
        }
        if let Some((var, value)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            self.protocol = parse_name(var, &value)?;
        }
        // The signal-specific URL is used as is; the generic one is a base
        // that the traces path is appended to, for HTTP only.
        let endpoint = match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some((var, value)) => Some((var, value.trim().to_owned())),
            None => get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|(var, value)| match self.protocol {
                Protocol::Grpc => (var, value.trim().to_owned()),
                _ => (
                    var,
                    format!("{}/v1/traces", value.trim().trim_end_matches('/')),
                ),
            }),
        };
        if let Some((var, value)) = endpoint {
            check_endpoint(&value).map_err(|m| env_error(var, &value, &m))?;
            self.endpoint = Some(value);
        }
        if let Some((var, value)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ) {
            self.headers = parse_headers(&value).map_err(|message| ExportConfigError::Env {
                var,
                // Headers usually carry credentials: not repeated in errors.
                value: "<redacted>".into(),
                message,
            })?;
        }
        if let Some((var, value)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            self.timeout = Duration::from_millis(positive(var, &value)? as u64);
        }
        if let Some((var, value)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ) {
            self.compression = parse_name(var, &value)?;
        }
        if let Some((var, value)) = get("OTEL_BSP_MAX_QUEUE_SIZE") {
            self.max_queue_size = positive(var, &value)?;
        }
        if let Some((var, value)) = get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            self.max_batch_size = positive(var, &value)?;
        }
        if let Some((var, value)) = get("OTEL_BSP_SCHEDULE_DELAY") {
            let ms: u64 = value
                .trim()
                .parse()
                .map_err(|_| env_error(var, &value, "expected milliseconds"))?;
            self.schedule_delay = Duration::from_millis(ms);
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks what no type can: an `http://` endpoint, valid header names
    /// and values, non-zero sizes and timeout, a batch no larger than the queue.
    pub fn validate(&self) -> Result<(), ExportConfigError> {
        let invalid = |key, message: String| Err(ExportConfigError::Invalid { key, message });
        if let Some(endpoint) = &self.endpoint {
            if let Err(m) = check_endpoint(endpoint) {
                return invalid("endpoint", format!("{endpoint:?}: {m}"));
            }
            if self.protocol == Protocol::Grpc && endpoint.starts_with("https:") {
                return invalid("endpoint", format!("{endpoint:?}: {GRPC_TLS_NOT_BUILT_IN}"));
            }
        }
        for (name, value) in &self.headers {
            if let Err(m) = check_header(name, value) {
                return invalid("headers", m);
            }
        }
        if self.timeout.is_zero() {
            return invalid("timeout", "must be longer than 0s".into());
        }
        if self.max_queue_size == 0 || self.max_batch_size == 0 {
            return invalid(
                "max_queue_size",
                "queue and batch sizes must be at least 1".into(),
            );
        }
        if self.max_batch_size > self.max_queue_size {
            return invalid(
                "max_batch_size",
                format!(
                    "{} exceeds max_queue_size ({})",
                    self.max_batch_size, self.max_queue_size
                ),
            );
        }
        Ok(())
    }
}

fn env_error(var: &'static str, value: &str, message: &str) -> ExportConfigError {
    ExportConfigError::Env {
        var,
        value: value.to_owned(),
        message: message.to_owned(),
    }
}

/// A protocol or compression by the name the config file uses.
fn parse_name<T: serde::de::DeserializeOwned>(
    var: &'static str,
    value: &str,
) -> Result<T, ExportConfigError> {
    use serde::de::IntoDeserializer as _;
    T::deserialize(value.trim().into_deserializer())
        .map_err(|e: serde::de::value::Error| env_error(var, value, &e.to_string()))
}

fn positive(var: &'static str, value: &str) -> Result<usize, ExportConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(env_error(var, value, "expected a whole number above 0")),
    }
}

fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" if url.host().is_some() => Ok(()),
        "http" => Err("no host".into()),
        "https" if url.host().is_some() => Ok(()),
        other => Err(format!("unsupported scheme {other:?}: use http://")),
    }
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok(())
}

/// `k=v,k2=v2` with percent-encoded values, as W3C baggage writes them.
fn parse_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, value) = entry
            .split_once('=')
            .ok_or_else(|| "an entry has no `=`".to_owned())?;
        let name = name.trim().to_owned();
        let value = percent_decode(value.trim())
            .ok_or_else(|| format!("the value of {name:?} is not valid percent-encoded UTF-8"))?;
        check_header(&name, &value)?;
        headers.push((name, value));
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The URL requests go to: for HTTP, `/v1/traces` unless a path is given.
fn target_url(endpoint: &str, protocol: Protocol) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) if protocol != Protocol::Grpc && url.path() == "/" => {
            url.set_path("/v1/traces");
            url.to_string()
        }
        _ => endpoint.to_owned(),
    }
}

/// What the exporter has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Spans the endpoint accepted.
    pub spans_exported: u64,
    /// Spans not queued: the queue was full or the exporter had stopped.
    pub spans_dropped: u64,
    /// Spans given up on: after the last attempt, on a non-retryable error,
    /// rejected in a partial success, or unsent when shutdown ran out of time.
    pub spans_failed: u64,
    /// Repeated attempts after a retryable failure (a batch retried twice counts 2).
    pub batches_retried: u64,
    /// Spans waiting in the queue now.
    pub queued: usize,
}

#[derive(Debug, Default)]
struct Shared {
    /// Spans in the queue, not yet taken by the task.
    queued: AtomicUsize,
    max_queue: usize,
    /// Whether spans are being dropped, to log once per episode.
    dropping: AtomicBool,
    exported: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

enum Message {
    Spans(ResourceSpans, usize),
    Flush(oneshot::Sender<()>),
}

/// A cheap handle on the export task; export is disabled when the
/// configuration has no endpoint.
#[derive(Debug, Clone)]
pub struct Exporter {
    queue: Option<mpsc::Sender<Message>>,
    shared: Arc<Shared>,
    /// Cancelled when the task has ended.
    finished: CancellationToken,
}

impl Exporter {
    /// Spawns the export task on the current tokio runtime (panics outside
    /// one). An invalid configuration is logged and disables export: call
    /// [`ExportConfig::validate`] first to fail at start-up instead. When
    /// `shutdown` is cancelled, the task exports what is queued, within one
    /// `timeout` and without retries, and ends.
    pub fn start(config: ExportConfig, shutdown: CancellationToken) -> Exporter {
        let finished = CancellationToken::new();
        let shared = Arc::new(Shared {
            max_queue: config.max_queue_size,
            ..Shared::default()
        });
        let disabled = |shared, finished: CancellationToken| {
            finished.cancel();
            Exporter {
                queue: None,
                shared,
                finished,
            }
        };
        let Some(endpoint) = &config.endpoint else {
            return disabled(shared, finished);
        };
        let url = target_url(endpoint, config.protocol);
        let transport = config
            .validate()
            .map_err(|e| e.to_string())
            .and_then(|()| Transport::new(&config, &url));
        let transport = match transport {
            Ok(t) => t,
            Err(error) => {
                tracing::error!(%error, "span export disabled");
                return disabled(shared, finished);
            }
        };
        tracing::info!(endpoint = %url, protocol = ?config.protocol, "exporting rationale spans");
        // Bounded in spans by `send`; every message holds at least one span.
        // (tokio caps a channel's capacity; its blocks are allocated lazily.)
        let (queue, rx) = mpsc::channel(config.max_queue_size.min(1 << 24));
        let worker = Worker {
            rx,
            transport,
            shared: shared.clone(),
            shutdown,
            url,
            config,
            pending: VecDeque::new(),
            pending_spans: 0,
            in_flight: 0,
            deadline: None,
            _finished: finished.clone().drop_guard(),
        };
        tokio::spawn(worker.run());
        Exporter {
            queue: Some(queue),
            shared,
            finished,
        }
    }

    /// Queues spans without waiting. False when they were dropped: they do
    /// not fit in the queue (`max_queue_size` spans), the exporter has
    /// stopped, or export is disabled (only the first two are counted).
    pub fn send(&self, spans: ResourceSpans) -> bool {
        let Some(queue) = &self.queue else {
            return false;
        };
        let n = span_count(&spans);
        if n == 0 {
            return true;
        }
        let shared = &self.shared;
        let reserved = shared
            .queued
            .fetch_update(Relaxed, Relaxed, |q| {
                (q + n <= shared.max_queue).then_some(q + n)
            })
            .is_ok();
        if reserved && queue.try_send(Message::Spans(spans, n)).is_ok() {
            shared.dropping.store(false, Relaxed);
            return true;
        }
        if reserved {
            shared.queued.fetch_sub(n, Relaxed);
        }
        shared.dropped.fetch_add(n as u64, Relaxed);
        if !shared.dropping.swap(true, Relaxed) {
            tracing::warn!(
                spans = n,
                "span export queue full or stopped: dropping spans"
            );
        }
        false
    }

    /// Resolves once everything sent before the call has been exported or
    /// given up on (after shutdown: once the task has ended).
    pub async fn flush(&self) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, answered) = oneshot::channel();
        if queue.send(Message::Flush(done)).await.is_err() || answered.await.is_err() {
            self.finished.cancelled().await;
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ExportStats {
        let s = &self.shared;
        ExportStats {
            spans_exported: s.exported.load(Relaxed),
            spans_dropped: s.dropped.load(Relaxed),
            spans_failed: s.failed.load(Relaxed),
            batches_retried: s.retried.load(Relaxed),
            queued: s.queued.load(Relaxed),
        }
    }
}

fn span_count(rs: &ResourceSpans) -> usize {
    rs.scope_spans.iter().map(|s| s.spans.len()).sum()
}

/// Splits `rs` into pieces of at most `max` spans, each with the resource.
fn split(rs: ResourceSpans, max: usize) -> Vec<(ResourceSpans, usize)> {
    let ResourceSpans {
        resource,
        scope_spans,
        schema_url,
    } = rs;
    let empty = || ResourceSpans {
        resource: resource.clone(),
        scope_spans: Vec::new(),
        schema_url: schema_url.clone(),
    };
    let (mut pieces, mut current, mut count) = (Vec::new(), empty(), 0);
    for mut scope in scope_spans {
        while !scope.spans.is_empty() {
            if count == max {
                pieces.push((std::mem::replace(&mut current, empty()), count));
                count = 0;
            }
            let take = scope.spans.len().min(max - count);
            let rest = scope.spans.split_off(take);
            current.scope_spans.push(ScopeSpans {
                scope: scope.scope.clone(),
                spans: std::mem::replace(&mut scope.spans, rest),
                schema_url: scope.schema_url.clone(),
            });
            count += take;
        }
    }
    if count > 0 {
        pieces.push((current, count));
    }
    pieces
}

/// One request per resource and scope: pieces of the same origin merged.
fn group(pieces: Vec<ResourceSpans>) -> Vec<ResourceSpans> {
    let mut out: Vec<ResourceSpans> = Vec::new();
    for rs in pieces {
        let same =
            |o: &&mut ResourceSpans| o.resource == rs.resource && o.schema_url == rs.schema_url;
        let Some(target) = out.iter_mut().find(same) else {
            out.push(rs);
            continue;
        };
        for scope in rs.scope_spans {
            match target
                .scope_spans
                .iter_mut()
                .find(|s| s.scope == scope.scope && s.schema_url == scope.schema_url)
            {
                Some(s) => s.spans.extend(scope.spans),
                None => target.scope_spans.push(scope),
            }
        }
    }
    out
}

/// The result of one export attempt.
enum Attempt {
    Accepted {
        rejected: u64,
        message: String,
    },
    Retryable {
        reason: String,
        after: Option<Duration>,
    },
    Rejected(String),
}

enum Transport {
    Http {
        client: reqwest::Client,
        url: String,
        headers: HeaderMap,
        json: bool,
        gzip: bool,
    },
    Grpc {
        client: TraceServiceClient<Channel>,
        metadata: MetadataMap,
    },
}

impl Transport {
    fn new(config: &ExportConfig, url: &str) -> Result<Self, String> {
        let gzip = config.compression == Compression::Gzip;
        if config.protocol == Protocol::Grpc {
            let channel = Endpoint::from_shared(url.to_owned())
                .map_err(|e| format!("invalid gRPC endpoint {url}: {e}"))?
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                .connect_lazy();
            let mut client = TraceServiceClient::new(channel);
            if gzip {
                client = client.send_compressed(CompressionEncoding::Gzip);
            }
            let mut metadata = MetadataMap::new();
            for (name, value) in &config.headers {
                let key = AsciiMetadataKey::from_bytes(name.as_bytes());
                let value = AsciiMetadataValue::try_from(value.as_str());
                match (key, value) {
                    (Ok(k), Ok(v)) => {
                        metadata.append(k, v);
                    }
                    _ => return Err(format!("header {name:?} is not valid gRPC metadata")),
                }
            }
            return Ok(Transport::Grpc { client, metadata });
        }
        let json = config.protocol == Protocol::HttpJson;
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            headers.append(
                name,
                HeaderValue::from_str(value).map_err(|e| e.to_string())?,
            );
        }
        let content_type = if json {
            "application/json"
        } else {
            "application/x-protobuf"
        };
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        crate::act::host::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Transport::Http {
            client,
            url: url.to_owned(),
            headers,
            json,
            gzip,
        })
    }

    /// The HTTP body, encoded once for every attempt.
    fn body(&self, request: &ExportTraceServiceRequest) -> Bytes {
        let Transport::Http { json, gzip, .. } = self else {
            return Bytes::new();
        };
        let raw = if *json {
            serde_json::to_vec(request).expect("OTLP messages serialize to JSON")
        } else {
            request.encode_to_vec()
        };
        if !*gzip {
            return raw.into();
        }
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&raw).expect("writing to a Vec cannot fail");
        e.finish().expect("writing to a Vec cannot fail").into()
    }

    async fn send(&self, request: &ExportTraceServiceRequest, body: &Bytes) -> Attempt {
        match self {
            Transport::Http {
                client,
                url,
                headers,
                ..
            } => {
                let sent = client
                    .post(url)
                    .headers(headers.clone())
                    .body(body.clone())
                    .send();
                match sent.await {
                    Ok(response) => http_outcome(response).await,
                    Err(e) => Attempt::Retryable {
                        reason: error_chain(&e),
                        after: None,
                    },
                }
            }
            Transport::Grpc { client, metadata } => {
                let mut grpc = tonic::Request::new(request.clone());
                *grpc.metadata_mut() = metadata.clone();
                match client.clone().export(grpc).await {
                    Ok(response) => {
                        let partial = response.into_inner().partial_success.unwrap_or_default();
                        Attempt::Accepted {
                            rejected: u64::try_from(partial.rejected_spans).unwrap_or(0),
                            message: partial.error_message,
                        }
                    }
                    Err(status) => {
                        use tonic::Code as C;
                        let reason = format!("gRPC {:?}: {}", status.code(), status.message());
                        match status.code() {
                            C::Unavailable
                            | C::ResourceExhausted
                            | C::DeadlineExceeded
                            | C::Aborted
                            | C::Cancelled
                            | C::OutOfRange
                            | C::DataLoss => Attempt::Retryable {
                                reason,
                                after: None,
                            },
                            _ => Attempt::Rejected(reason),
                        }
                    }
                }
            }
        }
    }
}

async fn http_outcome(response: reqwest::Response) -> Attempt {
    let status = response.status();
    let header = |name: HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let retry_after = header(header::RETRY_AFTER)
        .and_then(|s| s.trim().parse().ok())
        .map(Duration::from_secs);
    let json = header(header::CONTENT_TYPE).is_some_and(|t| t.starts_with("application/json"));
    // A body that cannot be read or decoded leaves the status to decide.
    let body = response.bytes().await.unwrap_or_default();
    let (count, message) = if json {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let p = &v["partialSuccess"];
        let count = p["rejectedSpans"]
            .as_u64()
            .or_else(|| p["rejectedSpans"].as_str()?.parse().ok());
        let text = p["errorMessage"].as_str().or(v["message"].as_str());
        (count, text.unwrap_or_default().to_owned())
    } else if status.is_success() {
        let response = ExportTraceServiceResponse::decode(body).unwrap_or_default();
        let r = response.partial_success.unwrap_or_default();
        (u64::try_from(r.rejected_spans).ok(), r.error_message)
    } else {
        let s = crate::ingest::http::RpcStatus::decode(body).unwrap_or_default();
        (None, s.message)
    };
    let reason = format!("HTTP {status}: {message}");
    match status.as_u16() {
        200..=299 => Attempt::Accepted {
            rejected: count.unwrap_or(0),
            message,
        },
        429 | 502 | 503 | 504 => Attempt::Retryable {
            reason,
            after: retry_after,
        },
        _ => Attempt::Rejected(reason),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The backoff before retry `n` (1-based): doubling from [`INITIAL_BACKOFF`]
/// up to [`MAX_BACKOFF`], half of it random so that exporters failing
/// together do not retry together.
fn backoff(n: u32) -> Duration {
    use std::hash::BuildHasher as _;
    let base = INITIAL_BACKOFF
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let random = std::hash::RandomState::new().hash_one(std::time::Instant::now());
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    base / 2 + (base / 2).mul_f64(fraction)
}

struct Worker {
    rx: mpsc::Receiver<Message>,
    transport: Transport,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    /// Where requests go, for log lines.
    url: String,
    config: ExportConfig,
    /// Pieces of at most `max_batch_size` spans, oldest first.
    pending: VecDeque<(ResourceSpans, usize)>,
    pending_spans: usize,
    /// Spans of the batch being exported.
    in_flight: usize,
    /// When the oldest pending span must be sent.
    deadline: Option<Instant>,
    _finished: DropGuard,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let deadline = self.deadline;
            let due = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                message = self.rx.recv() => match message {
                    Some(Message::Spans(spans, n)) => {
                        self.push(spans, n);
                        while self.pending_spans >= self.config.max_batch_size {
                            self.export_one().await;
                        }
                    }
                    Some(Message::Flush(done)) => {
                        self.export_all().await;
                        let _ = done.send(()); // the caller may have stopped waiting
                    }
                    None => break, // every handle dropped
                },
                () = due => self.export_all().await,
            }
        }
        self.finish().await;
    }

    fn push(&mut self, spans: ResourceSpans, n: usize) {
        self.shared.queued.fetch_sub(n, Relaxed);
        let max = self.config.max_batch_size;
        let pieces = if n > max {
            split(spans, max)
        } else {
            vec![(spans, n)]
        };
        self.pending.extend(pieces);
        self.pending_spans += n;
        self.deadline
            .get_or_insert_with(|| Instant::now() + self.config.schedule_delay);
    }

    async fn export_all(&mut self) {
        while !self.pending.is_empty() {
            self.export_one().await;
        }
    }

    async fn export_one(&mut self) {
        let mut batch = Vec::new();
        let mut n = 0;
        while let Some((_, count)) = self.pending.front() {
            if n > 0 && n + count > self.config.max_batch_size {
                break;
            }
            let (spans, count) = self.pending.pop_front().expect("front was just seen");
            batch.push(spans);
            n += count;
        }
        self.pending_spans -= n;
        if self.pending.is_empty() {
            self.deadline = None;
        }
        self.in_flight = n;
        self.export(group(batch), n).await;
        self.in_flight = 0;
    }

    async fn export(&self, resource_spans: Vec<ResourceSpans>, n: usize) {
        let request = ExportTraceServiceRequest { resource_spans };
        let body = self.transport.body(&request);
        let mut attempt = 1;
        let failure = loop {
            match self.transport.send(&request, &body).await {
                Attempt::Accepted { rejected, message } => {
                    let rejected = rejected.min(n as u64);
                    if rejected > 0 || !message.is_empty() {
                        let endpoint = &self.url;
                        tracing::warn!(%endpoint, rejected, %message, "spans partly rejected");
                    }
                    self.shared.exported.fetch_add(n as u64 - rejected, Relaxed);
                    self.shared.failed.fetch_add(rejected, Relaxed);
                    return;
                }
                Attempt::Rejected(reason) => break reason,
                Attempt::Retryable { reason, after } => {
                    let delay = after.unwrap_or_else(|| backoff(attempt));
                    if attempt >= MAX_ATTEMPTS || delay > MAX_BACKOFF {
                        break format!("{reason} (given up after {attempt} attempts)");
                    }
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => {
                            break format!("{reason} (not retried: shutting down)");
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                    self.shared.retried.fetch_add(1, Relaxed);
                    attempt += 1;
                }
            }
        };
        let endpoint = &self.url;
        tracing::warn!(%endpoint, spans = n, error = %failure, "span export failed; batch dropped");
        self.shared.failed.fetch_add(n as u64, Relaxed);
    }

    /// Exports what is queued, within one timeout, then ends the task.
    async fn finish(mut self) {
        self.rx.close();
        let (timeout, mut waiting) = (self.config.timeout, Vec::new());
        let drain = async {
            while let Some(message) = self.rx.recv().await {
                match message {
                    Message::Spans(spans, n) => self.push(spans, n),
                    Message::Flush(done) => waiting.push(done),
                }
            }
            self.export_all().await;
        };
        if tokio::time::timeout(timeout, drain).await.is_err() {
            let lost = self.pending_spans + self.in_flight;
            let endpoint = &self.url;
            tracing::warn!(%endpoint, spans = lost, "shutdown: spans not exported in time");
            self.shared.failed.fetch_add(lost as u64, Relaxed);
        }
        drop(waiting); // answers the flushes: they end with the task
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::config::Config;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn endpoint(vars: &[(&str, &str)]) -> Option<String> {
        let config = ExportConfig::default().with_env(env(vars)).expect("valid");
        config.endpoint.map(|e| target_url(&e, config.protocol))
    }

    #[test]
    fn env_endpoints_follow_the_spec() {
        let generic = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base/");
        assert_eq!(
            endpoint(&[generic]).as_deref(),
            Some("http://collector:4318/base/v1/traces")
        );
        let traces = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://other:4318/custom",
        );
        assert_eq!(
            endpoint(&[generic, traces]).as_deref(),
            Some("http://other:4318/custom")
        );
        let grpc = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc");
        let json = ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
        assert_eq!(
            endpoint(&[generic, grpc, json]).as_deref(),
            Some("http://collector:4318/base/")
        );
        // An empty variable is unset; the file's endpoint gets the traces path.
        let file = ExportConfig {
            endpoint: Some("http://h:4318".into()),
            ..Default::default()
        };
        let config = file
            .with_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]))
            .expect("valid");
        assert_eq!(
            target_url(config.endpoint.as_deref().expect("kept"), config.protocol),
            "http://h:4318/v1/traces"
        );
        let https = ExportConfig::default()
            .with_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318")]))
            .expect("https over HTTP");
        assert_eq!(https.endpoint.as_deref(), Some("https://c:4318/v1/traces"));
        let grpc = ExportConfig::default().with_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]));
        let error = grpc.expect_err("no TLS for gRPC").to_string();
        assert!(error.contains("TLS for OTLP/gRPC is not built"), "{error}");
    }

    #[test]
    fn env_settings_parse_and_errors_name_the_variable() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_HEADERS", "ignored=1"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "api-key=a%20b%3Dc, x-tenant = t1",
            ),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ];
        let config = ExportConfig::default().with_env(env(&vars)).expect("valid");
        let headers = vec![
            ("api-key".into(), "a b=c".into()),
            ("x-tenant".into(), "t1".into()),
        ];
        let expected = ExportConfig {
            headers,
            timeout: Duration::from_millis(2500),
            compression: Compression::Gzip,
            max_queue_size: 100,
            max_batch_size: 10,
            schedule_delay: Duration::from_millis(250),
            ..ExportConfig::default()
        };
        assert_eq!(config, expected);
        let error = ExportConfig::default()
            .with_env(env(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "10s")]))
            .expect_err("not milliseconds")
            .to_string();
        assert!(
            error.contains("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=\"10s\""),
            "{error}"
        );
        let error = ExportConfig::default()
            .with_env(env(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")]))
            .expect_err("batch larger than the queue")
            .to_string();
        assert!(error.contains("max_batch_size"), "{error}");
        let enabled = ExportConfig {
            endpoint: Some("http://h:4318".into()),
            ..Default::default()
        };
        let disabled = enabled
            .with_env(env(&[("OTEL_SDK_DISABLED", "TRUE")]))
            .expect("valid");
        assert_eq!(disabled.endpoint, None);
    }

    #[test]
    fn config_file_uses_spec_names_and_humantime() {
        let text = r#"
            endpoint = "http://c:4317"
            protocol = "grpc"
            timeout = "3s"
            headers = [["k", "v"]]
        "#;
        let config: ExportConfig = toml::from_str(text).expect("parses");
        assert_eq!(
            (
                config.protocol,
                config.timeout,
                config.headers[0].1.as_str()
            ),
            (Protocol::Grpc, Duration::from_secs(3), "v")
        );
        let written = toml::to_string(&config).expect("serializes");
        assert_eq!(
            toml::from_str::<ExportConfig>(&written).expect("reads back"),
            config
        );
        assert!(toml::from_str::<ExportConfig>("endpoints = \"x\"").is_err());
        let https = ExportConfig {
            endpoint: Some("https://c:4318".into()),
            protocol: Protocol::Grpc,
            ..Default::default()
        };
        let error = https.validate().expect_err("no TLS for gRPC").to_string();
        assert!(error.contains("TLS for OTLP/gRPC is not built"), "{error}");
    }

    fn spans(service: &str, trace: u8, names: &[&str]) -> ResourceSpans {
        let now = crate::ingest::now_nanos() as u64;
        let service = AnyValue {
            value: Some(any_value::Value::StringValue(service.into())),
        };
        let spans = names.iter().zip(1..).map(|(name, id)| Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: (*name).into(),
            start_time_unix_nano: now - 1_000_000,
            end_time_unix_nano: now,
            ..Default::default()
        });
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(service),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans.collect(),
                ..Default::default()
            }],
            schema_url: String::new(),
        }
    }

    #[test]
    fn otlp_json_uses_hex_ids_and_camel_case() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![spans("s", 0xab, &["n"])],
        };
        let json: serde_json::Value = serde_json::to_value(&request).expect("serializes");
        let span = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "ab".repeat(16));
        assert_eq!(span["spanId"], "01".repeat(8));
        assert!(span["startTimeUnixNano"].is_string(), "{span}");
    }

    #[test]
    fn batches_split_and_group_by_resource() {
        let pieces = split(spans("a", 1, &["1", "2", "3", "4", "5"]), 2);
        assert_eq!(pieces.iter().map(|p| p.1).collect::<Vec<_>>(), [2, 2, 1]);
        let grouped = group(vec![
            spans("a", 1, &["1"]),
            spans("b", 2, &["2"]),
            spans("a", 1, &["3"]),
        ]);
        assert_eq!(grouped.iter().map(span_count).collect::<Vec<_>>(), [2, 1]);
    }

    /// Exports two services' spans, in batches of two, to a real Homeostat
    /// and finds them by SQL.
    async fn export_to_homeostat(protocol: Protocol, compression: Compression) {
        let rules = tempfile::tempdir().expect("temp dir");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = Config {
            otlp_grpc: any,
            otlp_http: any,
            api: any,
            rules: rules.path().into(),
            data: "memory://".into(),
            ..Config::default()
        };
        let running = crate::server::start(config).await.expect("receiver starts");
        let addr = if protocol == Protocol::Grpc {
            running.otlp_grpc
        } else {
            running.otlp_http
        };
        let config = ExportConfig {
            endpoint: Some(format!("http://{addr}")),
            protocol,
            compression,
            headers: vec![("x-tenant".into(), "t1".into())],
            max_batch_size: 2,
            ..ExportConfig::default()
        };
        let exporter = Exporter::start(config, CancellationToken::new());
        assert!(exporter.send(spans("checkout", 1, &["a", "b", "c"])));
        assert!(exporter.send(spans("payments", 2, &["d"])));
        exporter.flush().await;
        assert_eq!(exporter.stats(), stats(4, 0, 0, 0));
        let sql = "SELECT trace_id, span_name, service_name FROM spans ORDER BY span_name";
        let result = running.engine.sql(sql).await.expect("query runs");
        let answer: serde_json::Value = serde_json::from_slice(&result.to_json()).expect("JSON");
        let (one, two) = ("01".repeat(16), "02".repeat(16));
        let expected = serde_json::json!([
            [one, "a", "checkout"],
            [one, "b", "checkout"],
            [one, "c", "checkout"],
            [two, "d", "payments"]
        ]);
        assert_eq!(answer["rows"], expected);
        running.shutdown();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn exports_over_http_protobuf_gzip() {
        export_to_homeostat(Protocol::HttpProtobuf, Compression::Gzip).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn exports_over_http_json() {
        export_to_homeostat(Protocol::HttpJson, Compression::None).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn exports_over_grpc_gzip() {
        export_to_homeostat(Protocol::Grpc, Compression::Gzip).await;
    }

    /// Serves `router` on a free port; the URL of its `/v1/traces`.
    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound address");
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/v1/traces")
    }

    type Requests = Arc<parking_lot::Mutex<Vec<HeaderMap>>>;

    /// An exporter (with `config`) to an endpoint answering its n-th request
    /// (from 0) with `answer(n)`, and the headers of the requests it got.
    async fn answering(
        answer: fn(usize) -> axum::response::Response,
        config: ExportConfig,
        shutdown: CancellationToken,
    ) -> (Exporter, Requests) {
        let requests = Requests::default();
        let seen = requests.clone();
        let handler = move |headers: HeaderMap| {
            let n = {
                let mut seen = seen.lock();
                seen.push(headers);
                seen.len() - 1
            };
            async move { answer(n) }
        };
        let router = Router::new().route("/v1/traces", post(handler));
        let endpoint = Some(serve(router).await);
        let config = ExportConfig { endpoint, ..config };
        (Exporter::start(config, shutdown), requests)
    }

    fn stats(exported: u64, dropped: u64, failed: u64, retried: u64) -> ExportStats {
        ExportStats {
            spans_exported: exported,
            spans_dropped: dropped,
            spans_failed: failed,
            batches_retried: retried,
            queued: 0,
        }
    }

    #[tokio::test]
    async fn retries_unavailable_honouring_retry_after() {
        let answer = |n| match n {
            0 | 1 => (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response(),
            _ => StatusCode::OK.into_response(),
        };
        let config = ExportConfig {
            headers: vec![("x-tenant".into(), "t1".into())],
            compression: Compression::Gzip,
            ..ExportConfig::default()
        };
        let (exporter, requests) = answering(answer, config, CancellationToken::new()).await;
        assert!(exporter.send(spans("s", 1, &["a", "b"])));
        exporter.flush().await;
        assert_eq!(exporter.stats(), stats(2, 0, 0, 2));
        let requests = requests.lock();
        assert_eq!(requests.len(), 3);
        for (name, value) in [
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
            ("x-tenant", "t1"),
        ] {
            assert_eq!(
                requests[2].get(name).map(|v| v.as_bytes()),
                Some(value.as_bytes())
            );
        }
    }

    #[tokio::test]
    async fn gives_up_on_bad_request() {
        let answer = |_| StatusCode::BAD_REQUEST.into_response();
        let config = ExportConfig::default();
        let (exporter, requests) = answering(answer, config, CancellationToken::new()).await;
        assert!(exporter.send(spans("s", 1, &["a", "b"])));
        exporter.flush().await;
        assert_eq!(requests.lock().len(), 1);
        assert_eq!(exporter.stats(), stats(0, 0, 2, 0));
    }

    #[tokio::test]
    async fn counts_partially_rejected_spans_as_failed() {
        let answer = |_| {
            let partial = ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: "span b has no name".into(),
            };
            let body = ExportTraceServiceResponse {
                partial_success: Some(partial),
            };
            let content_type = [("content-type", "application/x-protobuf")];
            (content_type, body.encode_to_vec()).into_response()
        };
        let config = ExportConfig::default();
        let (exporter, _) = answering(answer, config, CancellationToken::new()).await;
        assert!(exporter.send(spans("s", 1, &["a", "b"])));
        exporter.flush().await;
        assert_eq!(exporter.stats(), stats(1, 0, 1, 0));
    }

    #[tokio::test]
    async fn shutdown_exports_what_is_queued() {
        let shutdown = CancellationToken::new();
        let answer = |_| StatusCode::OK.into_response();
        // A delay no test waits for: only the shutdown can send the batch.
        let config = ExportConfig {
            schedule_delay: Duration::from_secs(3600),
            ..ExportConfig::default()
        };
        let (exporter, requests) = answering(answer, config, shutdown.clone()).await;
        assert!(exporter.send(spans("s", 1, &["a", "b", "c"])));
        shutdown.cancel();
        exporter.flush().await;
        assert_eq!(requests.lock().len(), 1);
        assert!(!exporter.send(spans("s", 2, &["late"])), "stopped: dropped");
        assert_eq!(exporter.stats(), stats(3, 1, 0, 0));
    }

    #[tokio::test]
    async fn full_queue_drops_new_spans_without_blocking() {
        // The receiver holds every request until the test opens the gate.
        let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        let handler = move || {
            let (arrived_tx, held) = (arrived_tx.clone(), held.clone());
            async move {
                arrived_tx.send(()).expect("test listening");
                held.acquire().await.expect("gate open").forget();
                StatusCode::OK
            }
        };
        let config = ExportConfig {
            endpoint: Some(serve(Router::new().route("/v1/traces", post(handler))).await),
            max_queue_size: 2,
            max_batch_size: 1,
            ..ExportConfig::default()
        };
        let exporter = Exporter::start(config, CancellationToken::new());
        assert!(exporter.send(spans("s", 1, &["in flight"])));
        arrived.recv().await.expect("first batch sent");
        // The task waits on the held request: two spans fill the queue.
        assert!(exporter.send(spans("s", 2, &["queued"])));
        assert!(exporter.send(spans("s", 3, &["queued"])));
        assert!(!exporter.send(spans("s", 4, &["dropped"])));
        gate.add_permits(3);
        exporter.flush().await;
        assert_eq!(exporter.stats(), stats(3, 1, 0, 0));
    }
}
