//! The OTLP/gRPC receiver: the collector services of opentelemetry-proto on
//! tonic, gzip accepted, messages capped at the configured size (tonic
//! enforces the cap on the decompressed message too).

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};

/// How long a TLS client has to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
use tonic::{Request, Response, Status};

use super::{ExportRequest, IngestError, Ingester};
use crate::internal_events::Transport;

#[derive(Clone)]
struct Receiver {
    ingester: Ingester,
}

/// Checks the bearer token from the request's metadata, before its message
/// is decompressed or decoded.
#[derive(Clone)]
struct Guard {
    token: Option<crate::auth::Token>,
    ingester: Ingester,
    signal: crate::ingest::Signal,
}

impl tonic::service::Interceptor for Guard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let presented = request.metadata().get("authorization");
        if presented.is_some_and(|v| token.matches_header(v.as_bytes())) {
            return Ok(request);
        }
        crate::internal_events::IngestRefused {
            signal: self.signal,
            transport: Transport::Grpc,
            reason: "unauthenticated",
        }
        .emit(self.ingester.metrics());
        Err(Status::unauthenticated(if presented.is_some() {
            "the bearer token is not this receiver's token"
        } else {
            "a token is required: send authorization: Bearer <token> (OTEL_EXPORTER_OTLP_HEADERS)"
        }))
    }
}

impl Receiver {
    async fn export<R: ExportRequest>(
        &self,
        request: Request<R>,
    ) -> Result<Response<R::Response>, Status> {
        self.ingester
            .check_capacity(R::SIGNAL, Transport::Grpc)
            .map_err(to_status)?;
        let request = request.into_inner();
        let prepared = self
            .ingester
            .prepare(&request, Transport::Grpc)
            .map_err(to_status)?;
        // Only the rows (in the budget) wait for the disk.
        drop(request);
        prepared
            .commit(&self.ingester)
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}

/// OTLP/gRPC says: UNAVAILABLE is retryable, and the client backs off;
/// RESOURCE_EXHAUSTED without retry information is not retried.
fn to_status(e: IngestError) -> Status {
    match e {
        IngestError::Full { .. } | IngestError::Busy { .. } | IngestError::Unavailable { .. } => {
            Status::unavailable(e.to_string())
        }
        IngestError::TooLarge(_) => Status::resource_exhausted(e.to_string()),
        IngestError::Internal { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Receiver::export(self, request).await
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Receiver::export(self, request).await
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Receiver::export(self, request).await
    }
}

/// How the receiver is protected: a token, and TLS (certificate and key
/// PEM).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub token: Option<crate::auth::Token>,
    pub tls_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// Serves OTLP/gRPC on `listener` until `shutdown` is cancelled, then lets
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    ingester: Ingester,
    max_message_size: usize,
    access: Access,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let guard = |signal| Guard {
        token: access.token.clone(),
        ingester: ingester.clone(),
        signal,
    };
    let (traces, metrics, logs) = (
        guard(crate::ingest::Signal::Traces),
        guard(crate::ingest::Signal::Metrics),
        guard(crate::ingest::Signal::Logs),
    );
    let ingester_turns = ingester.turns();
    let receiver = Receiver { ingester };
    let gzip = CompressionEncoding::Gzip;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = access.tls_pem {
        server =
            server.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?;
    }
    // tonic decodes a message before the service sees it: the limit is on
    // whole calls (body, decoded message and rows), in turns shared with
    // the HTTP receiver.
    let turns = ingester_turns;
    server
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore(
            turns,
        ))
        .add_service(InterceptedService::new(
            TraceServiceServer::new(receiver.clone())
                .accept_compressed(gzip)
                .send_compressed(gzip)
                .max_decoding_message_size(max_message_size),
            traces,
        ))
        .add_service(InterceptedService::new(
            MetricsServiceServer::new(receiver.clone())
                .accept_compressed(gzip)
                .send_compressed(gzip)
                .max_decoding_message_size(max_message_size),
            metrics,
        ))
        .add_service(InterceptedService::new(
            LogsServiceServer::new(receiver)
                .accept_compressed(gzip)
                .send_compressed(gzip)
                .max_decoding_message_size(max_message_size),
            logs,
        ))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
