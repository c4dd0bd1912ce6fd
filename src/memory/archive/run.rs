//! The loop the server runs: what expires from memory is queued, within
//! `max_pending`, and written by a writer task that retries while the
//! storage fails; compaction and retention run beside it once a minute.
//! Ingestion never waits on the storage: the store is emptied every second
//! whatever the writer is doing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use tokio_util::sync::CancellationToken;

use super::codec::split_by_hour;
use super::{Archive, memory, rows, signal_of};
use crate::ingest::{Signal, now_nanos};
use crate::internal_events::{
    ArchiveCompacted, ArchiveCompactionFailed, ArchiveExpiryFailed, ArchivePartitionExpired,
    ArchivePending, ArchiveRowsDropped, ArchiveWriteFailed, ArchiveWritten, Metrics,
    PartitionsExpired,
};
use crate::store::{Expired, Store};

/// The longest wait between two attempts at a storage that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Batches waiting for the storage, bounded by `max_pending`.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) items: VecDeque<PendingItem>,
    pub(super) bytes: u64,
    /// No more items will come: the writer stops once the queue is empty.
    pub(super) closed: bool,
}

#[derive(Debug)]
pub(super) struct PendingItem {
    signal: Signal,
    batches: Vec<RecordBatch>,
    bytes: u64,
}

/// What one step of the writer did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing was waiting.
    Idle,
    /// Everything taken was written (or dropped as unwritable).
    Done,
    /// The storage failed; what failed is back at the front of the queue,
    /// or dropped when `closing`.
    Failed,
}

impl Archive {
    /// The loop the server runs: once a second, takes what expired from
    /// `store` and queues it for writing (the writer retries what fails,
    /// within `max_pending`); every minute, compacts and applies retention.
    /// On shutdown, drains the store and writes everything before
    /// returning. Failures are logged and counted; ingestion never waits.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let writer = tokio::spawn({
            let (archive, metrics, shutdown) = (self.clone(), metrics.clone(), shutdown.clone());
            async move { archive.write_loop(&metrics, &shutdown).await }
        });
        let maintenance = tokio::spawn({
            let (archive, metrics, shutdown) = (self.clone(), metrics.clone(), shutdown.clone());
            async move { archive.maintenance_loop(&metrics, &shutdown).await }
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    for expired in store.expire(now_nanos()) {
                        PartitionsExpired { table: expired.table, expired: &expired }.emit(&metrics);
                        self.enqueue(expired, true, &metrics);
                    }
                }
            }
        }
        // What memory held goes out too: it is already in memory, so the
        // bound does not apply.
        for drained in store.drain() {
            self.enqueue(drained, false, &metrics);
        }
        self.pending.lock().closed = true;
        self.wake.notify_one();
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "archive writer task failed");
        }
        self.drop_pending(&metrics, "shutdown");
        if let Err(e) = maintenance.await {
            tracing::error!(error = %e, "archive maintenance task failed");
        }
    }

    /// Queues what left memory for the writer; with `bounded`, drops (and
    /// counts) what does not fit in `max_pending`.
    pub(super) fn enqueue(&self, expired: Expired, bounded: bool, metrics: &Metrics) {
        let batches: Vec<RecordBatch> = expired
            .batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .collect();
        if batches.is_empty() {
            return;
        }
        let Some(signal) = signal_of(expired.table) else {
            return;
        };
        let bytes = memory(&batches);
        let mut pending = self.pending.lock();
        // An empty queue takes any item, however large (the store's memory
        // budget bounds it already): the bound is for a failing storage.
        if bounded
            && !pending.items.is_empty()
            && pending.bytes + bytes > self.config.max_pending.as_u64()
        {
            drop(pending);
            ArchiveRowsDropped {
                table: signal.table(),
                rows: rows(&batches),
                reason: "pending_full",
            }
            .emit(metrics);
            return;
        }
        pending.bytes += bytes;
        pending.items.push_back(PendingItem {
            signal,
            batches,
            bytes,
        });
        ArchivePending {
            bytes: pending.bytes,
        }
        .emit(metrics);
        drop(pending);
        self.wake.notify_one();
    }

    /// Writes what is queued until the queue is closed and empty, waiting
    /// longer and longer between attempts while the storage fails.
    async fn write_loop(&self, metrics: &Metrics, shutdown: &CancellationToken) {
        let mut backoff = Duration::ZERO;
        loop {
            let closing = shutdown.is_cancelled();
            match self.write_next(metrics, closing).await {
                Step::Done => backoff = Duration::ZERO,
                Step::Idle => {
                    if self.pending.lock().closed {
                        return;
                    }
                    self.wake.notified().await;
                }
                // The storage is down at shutdown: what is left is dropped
                // (and counted) by `run` instead of waiting on it.
                Step::Failed if closing => return,
                Step::Failed => {
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Takes the oldest queued item and writes it. What fails for a reason
    /// that may pass goes back to the front of the queue, unless `closing`.
    pub(super) async fn write_next(&self, metrics: &Metrics, closing: bool) -> Step {
        let item = {
            let mut pending = self.pending.lock();
            let item = pending.items.pop_front();
            if let Some(item) = &item {
                pending.bytes -= item.bytes;
            }
            item
        };
        let Some(PendingItem {
            signal, batches, ..
        }) = item
        else {
            return Step::Idle;
        };
        let table = signal.table();
        let hours = match split_by_hour(signal, batches) {
            Ok(hours) => hours,
            Err(error) => {
                ArchiveWriteFailed {
                    table,
                    error: &error,
                    retried: false,
                }
                .emit(metrics);
                return Step::Done;
            }
        };
        let (report, failed) = self.write_hours(signal, hours).await;
        if !report.files.is_empty() {
            ArchiveWritten {
                table,
                report: &report,
            }
            .emit(metrics);
        }
        let mut step = Step::Done;
        let mut pending = self.pending.lock();
        for (_, batches, error) in failed.into_iter().rev() {
            let retried = error.retryable() && !closing;
            ArchiveWriteFailed {
                table,
                error: &error,
                retried,
            }
            .emit(metrics);
            if retried {
                step = Step::Failed;
                let bytes = memory(&batches);
                pending.bytes += bytes;
                pending.items.push_front(PendingItem {
                    signal,
                    batches,
                    bytes,
                });
            } else {
                if error.retryable() {
                    step = Step::Failed;
                }
                let reason = if closing { "shutdown" } else { "unwritable" };
                ArchiveRowsDropped {
                    table,
                    rows: rows(&batches),
                    reason,
                }
                .emit(metrics);
            }
        }
        ArchivePending {
            bytes: pending.bytes,
        }
        .emit(metrics);
        step
    }

    /// Drops (and counts) everything still queued.
    fn drop_pending(&self, metrics: &Metrics, reason: &'static str) {
        let items: Vec<PendingItem> = {
            let mut pending = self.pending.lock();
            pending.bytes = 0;
            pending.items.drain(..).collect()
        };
        for item in items {
            ArchiveRowsDropped {
                table: item.signal.table(),
                rows: rows(&item.batches),
                reason,
            }
            .emit(metrics);
        }
        ArchivePending { bytes: 0 }.emit(metrics);
    }

    /// Compaction and retention once a minute (and once at start, to finish
    /// what an earlier run left). A pass in progress at shutdown finishes.
    async fn maintenance_loop(&self, metrics: &Metrics, shutdown: &CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = now_nanos();
            let report = self.compact(now).await;
            for compaction in &report.compactions {
                ArchiveCompacted { compaction }.emit(metrics);
            }
            for failure in &report.failures {
                ArchiveCompactionFailed { failure }.emit(metrics);
            }
            match self.expire(now).await {
                Ok(partitions) => {
                    for partition in &partitions {
                        ArchivePartitionExpired { partition }.emit(metrics);
                    }
                }
                Err(error) => ArchiveExpiryFailed { error: &error }.emit(metrics),
            }
        }
    }
}
