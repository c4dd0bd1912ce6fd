//! The archive's housekeeping, beside the flusher ([`super::flush`]):
//! compaction and retention once a minute, and once at start to finish
//! what an earlier run left.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Archive;
use crate::ingest::now_nanos;
use crate::internal_events::{
    ArchiveCompacted, ArchiveCompactionFailed, ArchiveExpiryFailed, ArchivePartitionExpired,
    Metrics,
};

impl Archive {
    /// Compacts and applies the archive's retention once a minute until
    /// `shutdown`; a pass in progress then finishes.
    pub async fn maintain(self: Arc<Self>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
        self.maintenance_loop(&metrics, &shutdown).await;
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
