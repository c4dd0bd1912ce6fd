//! The store's view of the archive: where scans read the rows memory no
//! longer holds. The archive (`memory::archive`) implements it; the store
//! only knows it can be asked for a plan over a time range.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::physical_plan::ExecutionPlan;

use super::TimeRange;
use crate::ingest::Signal;

/// Archived rows, as a scan of this node's committed files.
#[async_trait]
pub trait ColdTier: std::fmt::Debug + Send + Sync {
    /// A plan reading the archived rows of `signal` that may fall in
    /// `range` (whole files or row groups: the caller filters rows), from
    /// the files of flushes up to `committed_flush` and of no later one;
    /// `None` when there are none. Columns are those of `projection`, as in
    /// [`datafusion::catalog::TableProvider::scan`].
    async fn scan(
        &self,
        state: &dyn Session,
        signal: Signal,
        range: TimeRange,
        committed_flush: u64,
        projection: Option<&Vec<usize>>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>>;
}
