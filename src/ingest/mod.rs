//! OTLP receivers: gRPC and HTTP front ends that decode requests and hand
//! them to [`Ingester`], which converts them to Arrow and stores them.
//!
//! Both transports share the same decisions, so they answer alike:
//! the budget check before decoding, partial success for items the
//! converters reject and rows whose time the store refuses, "retry later"
//! when memory is full of rows the archive does not have yet, and an answer
//! only once what was accepted is in the write-ahead log.

pub mod convert;
pub mod grpc;
pub mod http;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

use crate::internal_events::{BatchIngested, IngestRefused, Metrics, Transport};
use crate::store::{Store, StoreError};
use convert::Converted;

/// The three OTLP signals, each stored in its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces = 0,
    Metrics = 1,
    Logs = 2,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The SQL table the signal is stored in.
    pub fn table(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// The signal's name as OTLP and metrics labels spell it.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    pub fn schema(self) -> SchemaRef {
        match self {
            Signal::Traces => convert::spans::schema(),
            Signal::Metrics => convert::metrics::schema(),
            Signal::Logs => convert::logs::schema(),
        }
    }

    /// The event-time column the table is partitioned and pruned by.
    pub fn time_column(self) -> &'static str {
        match self {
            Signal::Traces => convert::spans::TIME_COLUMN,
            Signal::Metrics => convert::metrics::TIME_COLUMN,
            Signal::Logs => convert::logs::TIME_COLUMN,
        }
    }
}

/// An OTLP export request of one signal: how to convert it and how to
/// answer it. Adding a signal is one converter file and one impl here.
pub trait ExportRequest:
    prost::Message + Default + serde::de::DeserializeOwned + Send + 'static
{
    type Response: prost::Message + serde::Serialize + Default + Send + 'static;
    const SIGNAL: Signal;

    fn convert(&self) -> Result<Converted, ArrowError>;

    /// The Arrow memory [`ExportRequest::convert`] will take, before it does
    /// ([`convert::estimate`]).
    fn estimate(&self) -> u64;

    /// The reply: empty on full success, a partial success otherwise.
    fn response(rejected: i64, message: String) -> Self::Response;
}

impl ExportRequest for ExportTraceServiceRequest {
    type Response = ExportTraceServiceResponse;
    const SIGNAL: Signal = Signal::Traces;

    fn convert(&self) -> Result<Converted, ArrowError> {
        convert::spans::convert(self)
    }

    fn estimate(&self) -> u64 {
        convert::estimate::spans(self)
    }

    fn response(rejected: i64, message: String) -> Self::Response {
        ExportTraceServiceResponse {
            partial_success: (rejected > 0 || !message.is_empty()).then_some(
                ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                },
            ),
        }
    }
}

impl ExportRequest for ExportMetricsServiceRequest {
    type Response = ExportMetricsServiceResponse;
    const SIGNAL: Signal = Signal::Metrics;

    fn convert(&self) -> Result<Converted, ArrowError> {
        convert::metrics::convert(self)
    }

    fn estimate(&self) -> u64 {
        convert::estimate::metrics(self)
    }

    fn response(rejected: i64, message: String) -> Self::Response {
        ExportMetricsServiceResponse {
            partial_success: (rejected > 0 || !message.is_empty()).then_some(
                ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message: message,
                },
            ),
        }
    }
}

impl ExportRequest for ExportLogsServiceRequest {
    type Response = ExportLogsServiceResponse;
    const SIGNAL: Signal = Signal::Logs;

    fn convert(&self) -> Result<Converted, ArrowError> {
        convert::logs::convert(self)
    }

    fn estimate(&self) -> u64 {
        convert::estimate::logs(self)
    }

    fn response(rejected: i64, message: String) -> Self::Response {
        ExportLogsServiceResponse {
            partial_success: (rejected > 0 || !message.is_empty()).then_some(
                ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message,
                },
            ),
        }
    }
}

/// Why a request was not (wholly) accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Memory is full of rows the archive does not have yet: the sender
    /// should retry after the delay.
    #[error("{source}; retry after {}", humantime::format_duration(*retry_after))]
    Full {
        source: StoreError,
        retry_after: Duration,
    },
    /// The same, found before decoding anything.
    #[error("memory budget full of telemetry not yet archived; retry after {}", humantime::format_duration(*retry_after))]
    Busy { retry_after: Duration },
    /// The request alone needs more memory than the whole budget.
    #[error("{0}")]
    TooLarge(StoreError),
    /// The write-ahead log failed: nothing of the request was kept.
    #[error("{source}; retry after {}", humantime::format_duration(*retry_after))]
    Unavailable {
        source: StoreError,
        retry_after: Duration,
    },
    /// A converter bug or an Arrow invariant: not the sender's fault.
    #[error("internal error converting {signal} to Arrow: {source}")]
    Internal {
        signal: &'static str,
        source: ArrowError,
    },
}

impl IngestError {
    /// The label requests refused for this reason are counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Full { .. } | IngestError::Busy { .. } => "archive_backlog",
            IngestError::TooLarge(_) => "too_large",
            IngestError::Unavailable { .. } => "wal",
            IngestError::Internal { .. } => "internal",
        }
    }
}

/// Converts decoded requests and stores them, counting what happens.
#[derive(Debug, Clone)]
pub struct Ingester {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    retry_after: Duration,
    /// Requests being read, decoded and converted at once.
    preparing: Arc<tokio::sync::Semaphore>,
    concurrent: usize,
}

impl Ingester {
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>, retry_after: Duration) -> Self {
        Self::with_concurrency(store, metrics, retry_after, 4)
    }

    /// An ingester preparing at most `concurrent` requests at once.
    pub fn with_concurrency(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        retry_after: Duration,
        concurrent: usize,
    ) -> Self {
        Self {
            store,
            metrics,
            retry_after,
            preparing: Arc::new(tokio::sync::Semaphore::new(concurrent.max(1))),
            concurrent: concurrent.max(1),
        }
    }

    /// Waits for a turn to read, decode and convert a request; hold it
    /// until [`Ingester::prepare`] returns.
    pub async fn turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.preparing
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// How many requests are prepared at once.
    pub fn concurrency(&self) -> usize {
        self.concurrent
    }

    /// The turns both receivers share (gRPC holds one for a whole call:
    /// tonic decodes before the service sees the request).
    pub fn turns(&self) -> Arc<tokio::sync::Semaphore> {
        self.preparing.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Refuses early, before a request is decoded, when nothing more fits.
    pub fn check_capacity(&self, signal: Signal, transport: Transport) -> Result<(), IngestError> {
        if !self.store.has_room() {
            let e = IngestError::Busy {
                retry_after: self.retry_after,
            };
            self.refused(signal, transport, &e);
            return Err(e);
        }
        Ok(())
    }

    fn refused(&self, signal: Signal, transport: Transport, e: &IngestError) {
        IngestRefused {
            signal,
            transport,
            reason: e.reason(),
        }
        .emit(&self.metrics);
    }

    /// Converts and stores one request, durably before it answers; the
    /// reply carries the items the converter rejected and the rows whose
    /// time the store refused.
    pub async fn export<R: ExportRequest>(
        &self,
        request: &R,
        transport: Transport,
    ) -> Result<R::Response, IngestError> {
        self.prepare(request, transport)?.commit(self).await
    }

    /// Converts a request into rows the budget holds, without waiting for
    /// the log: the memory a request takes before it is stored is bounded
    /// by those being prepared at once; waiting for the disk is not.
    ///
    /// The budget is reserved from an estimate before converting, so a
    /// request that would expand past it is refused before anything is
    /// allocated, then settled to the rows' real size.
    pub fn prepare<R: ExportRequest>(
        &self,
        request: &R,
        transport: Transport,
    ) -> Result<Prepared<R>, IngestError> {
        let failed = |e: IngestError| {
            self.refused(R::SIGNAL, transport, &e);
            e
        };
        let full = |source: StoreError| match source {
            StoreError::TooLarge { .. } => IngestError::TooLarge(source),
            _ => IngestError::Full {
                source,
                retry_after: self.retry_after,
            },
        };
        let reservation = self
            .store
            .reserve(request.estimate())
            .map_err(|e| failed(full(e)))?;
        let Converted { batch, rejected } =
            request.convert().map_err(|source| IngestError::Internal {
                signal: R::SIGNAL.name(),
                source,
            })?;
        let now = now_nanos();
        let admitted = self.store.admit(R::SIGNAL, batch, now);
        let reservation = self
            .store
            .resize(reservation, admitted.bytes)
            .map_err(|e| failed(full(e)))?;
        let mut message = rejected.message();
        if let Some(reason) = &admitted.reason {
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(reason);
        }
        Ok(Prepared {
            rejected: rejected.count + admitted.refused as i64,
            message,
            admitted,
            reservation,
            now,
            transport,
            _request: std::marker::PhantomData,
        })
    }
}

/// A request converted and reserved in the budget, to be made durable.
#[derive(Debug)]
pub struct Prepared<R> {
    admitted: crate::store::Admitted,
    reservation: crate::store::Reservation,
    rejected: i64,
    message: String,
    now: i64,
    transport: Transport,
    _request: std::marker::PhantomData<fn() -> R>,
}

impl<R: ExportRequest> Prepared<R> {
    /// Makes the rows durable and stored, and answers.
    pub async fn commit(self, ingester: &Ingester) -> Result<R::Response, IngestError> {
        let accepted = self.admitted.rows;
        ingester
            .store
            .append(R::SIGNAL, self.admitted, self.reservation, self.now)
            .await
            .map_err(|source| {
                let retry_after = ingester.retry_after;
                let e = match source {
                    // The log's copy did not fit in the budget.
                    StoreError::Full { .. } => IngestError::Full {
                        source,
                        retry_after,
                    },
                    StoreError::TooLarge { .. } => IngestError::TooLarge(source),
                    StoreError::Wal(_) => IngestError::Unavailable {
                        source,
                        retry_after,
                    },
                };
                ingester.refused(R::SIGNAL, self.transport, &e);
                e
            })?;
        BatchIngested {
            signal: R::SIGNAL,
            transport: self.transport,
            accepted,
            rejected: self.rejected as u64,
        }
        .emit(&ingester.metrics);
        Ok(R::response(self.rejected, self.message))
    }
}

/// Wall-clock time in UTC nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
