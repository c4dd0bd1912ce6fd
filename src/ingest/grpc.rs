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
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use super::{ExportRequest, IngestError, Ingester};
use crate::internal_events::Transport;

#[derive(Clone)]
struct Receiver {
    ingester: Ingester,
    /// The bearer token senders must present, when one is configured.
    token: Option<crate::auth::Token>,
}

impl Receiver {
    fn export<R: ExportRequest>(
        &self,
        request: Request<R>,
    ) -> Result<Response<R::Response>, Status> {
        if let Some(token) = &self.token {
            let presented = request.metadata().get("authorization");
            if !presented.is_some_and(|v| token.matches_header(v.as_bytes())) {
                crate::internal_events::IngestRefused {
                    signal: R::SIGNAL,
                    transport: Transport::Grpc,
                    reason: "unauthenticated",
                }
                .emit(self.ingester.metrics());
                return Err(Status::unauthenticated(if presented.is_some() {
                    "the bearer token is not this receiver's token"
                } else {
                    "a token is required: send authorization: Bearer <token> (OTEL_EXPORTER_OTLP_HEADERS)"
                }));
            }
        }
        self.ingester
            .check_capacity(R::SIGNAL, Transport::Grpc)
            .and_then(|()| self.ingester.export(request.get_ref(), Transport::Grpc))
            .map(Response::new)
            .map_err(to_status)
    }
}

/// OTLP/gRPC says: UNAVAILABLE is retryable, and the client backs off.
fn to_status(e: IngestError) -> Status {
    match e {
        IngestError::Full { .. } | IngestError::Busy { .. } => Status::unavailable(e.to_string()),
        IngestError::Internal { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        Receiver::export(self, request)
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        Receiver::export(self, request)
    }
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        Receiver::export(self, request)
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
    let receiver = Receiver {
        ingester,
        token: access.token,
    };
    let gzip = CompressionEncoding::Gzip;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = access.tls_pem {
        server =
            server.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))?;
    }
    server
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(
            TraceServiceServer::new(receiver.clone())
                .accept_compressed(gzip)
                .send_compressed(gzip)
                .max_decoding_message_size(max_message_size),
        )
        .add_service(
            MetricsServiceServer::new(receiver.clone())
                .accept_compressed(gzip)
                .send_compressed(gzip)
                .max_decoding_message_size(max_message_size),
        )
        .add_service(
            LogsServiceServer::new(receiver)
                .accept_compressed(gzip)
                .send_compressed(gzip)
                .max_decoding_message_size(max_message_size),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}
