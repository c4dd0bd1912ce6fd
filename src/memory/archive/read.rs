//! The archive as the store's cold tier: scans of this node's committed
//! files for the times memory no longer holds whole.
//!
//! Only this node's files are read: a live table shows what this replica
//! accepted, in memory and archived alike (the whole cluster's archive is
//! what `homeostat query --data` reads). Files of a flush not yet committed
//! when the scan started are left out (their rows come from memory), and
//! so are the inputs of a merge whose merged file is already there.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectMeta;

use super::layout::{FileName, Hour};
use super::{Archive, ArchiveError};
use crate::ingest::Signal;
use crate::ingest::convert::common::TIME_ZONE;
use crate::store::{ColdTier, TimeRange};

/// The URL scans know this node's storage by, in their session.
const STORE_URL: &str = "homeostat-archive://store/";

/// Hour partitions listed one by one at most; a longer range lists the
/// table's whole tree once instead.
const HOURS_LISTED: i64 = 48;

impl Archive {
    /// This node's committed files of `signal` whose hour overlaps `range`.
    pub(crate) async fn committed_files(
        &self,
        signal: Signal,
        range: TimeRange,
        committed: u64,
    ) -> Result<Vec<ObjectMeta>, ArchiveError> {
        let (first, last) = (
            range.start.map(Hour::of),
            range.end.map(|e| Hour::of(e.saturating_sub(1))),
        );
        let by_hour: BTreeMap<Hour, Vec<ObjectMeta>> = match (first, last) {
            (Some(first), Some(last)) if last.0 - first.0 < HOURS_LISTED => {
                let mut by_hour = BTreeMap::new();
                for h in first.0..=last.0 {
                    let hour = Hour(h);
                    let objects = self
                        .storage
                        .list(&self.partition_path(signal, hour))
                        .await?;
                    if !objects.is_empty() {
                        by_hour.insert(hour, objects);
                    }
                }
                by_hour
            }
            _ => {
                let mut all = self.list_partitions(signal).await?;
                all.retain(|hour, _| {
                    first.is_none_or(|f| *hour >= f) && last.is_none_or(|l| *hour <= l)
                });
                all
            }
        };
        let mut files = Vec::new();
        for (_, objects) in by_hour {
            files.extend(self.readable(objects, committed).await?);
        }
        Ok(files)
    }

    /// Of one hour's objects, this node's that count, without the inputs
    /// of merges already written (read from the merged files' footers, and
    /// only when both are there: during a compaction, or after a crash in
    /// the middle of one).
    async fn readable(
        &self,
        objects: Vec<ObjectMeta>,
        committed: u64,
    ) -> Result<Vec<ObjectMeta>, ArchiveError> {
        let mut own: Vec<(ObjectMeta, bool)> = objects
            .into_iter()
            .filter_map(|meta| {
                let name = FileName::parse(meta.location.filename()?)?;
                let (counts, merged) = (
                    name.node == self.node && self.committed_file(&name, committed),
                    name.merged,
                );
                counts.then_some((meta, merged))
            })
            .collect();
        let merged = own.iter().filter(|(_, m)| *m).count();
        if merged > 0 && merged < own.len() {
            let mut covered = HashSet::new();
            for (meta, _) in own.iter().filter(|(_, m)| *m) {
                covered.extend(self.merged_inputs(meta).await?);
            }
            own.retain(|(meta, _)| {
                !meta
                    .location
                    .filename()
                    .is_some_and(|n| covered.contains(n))
            });
        }
        Ok(own.into_iter().map(|(meta, _)| meta).collect())
    }
}

#[async_trait]
impl ColdTier for Archive {
    async fn scan(
        &self,
        state: &dyn Session,
        signal: Signal,
        range: TimeRange,
        committed_flush: u64,
        projection: Option<&Vec<usize>>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let files = self
            .committed_files(signal, range, committed_flush)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        if files.is_empty() {
            return Ok(None);
        }
        let url = ObjectStoreUrl::parse(STORE_URL)?;
        let runtime = state.runtime_env();
        if runtime.object_store(&url).is_err() {
            runtime.register_object_store(url.as_ref(), self.storage.object_store().clone());
        }
        let schema = signal.schema();
        let time = schema.index_of(signal.time_column())?;
        let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(signal.time_column(), time));
        let bound = |v: i64| -> Arc<dyn PhysicalExpr> {
            Arc::new(Literal::new(ScalarValue::TimestampNanosecond(
                Some(v),
                Some(TIME_ZONE.into()),
            )))
        };
        // For pruning row groups and pages by their statistics; rows are
        // filtered by the caller.
        let mut source = ParquetSource::new(schema.clone());
        let mut predicate: Option<Arc<dyn PhysicalExpr>> = None;
        for (op, value) in [(Operator::GtEq, range.start), (Operator::Lt, range.end)] {
            if let Some(v) = value {
                let e: Arc<dyn PhysicalExpr> =
                    Arc::new(BinaryExpr::new(column.clone(), op, bound(v)));
                predicate = Some(match predicate.take() {
                    Some(p) => Arc::new(BinaryExpr::new(p, Operator::And, e)),
                    None => e,
                });
            }
        }
        if let Some(p) = predicate {
            source = source.with_predicate(p);
        }
        let groups = state.config().target_partitions().max(1).min(files.len());
        let mut file_groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups];
        for (i, meta) in files.into_iter().enumerate() {
            file_groups[i % groups].push(PartitionedFile::new_from_meta(meta));
        }
        let config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_file_groups(file_groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .build();
        Ok(Some(DataSourceExec::from_data_source(config)))
    }
}
