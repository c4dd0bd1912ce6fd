//! The store's tables as DataFusion `TableProvider`s: memory and, for the
//! times memory no longer holds whole, the archive, as one table.
//!
//! Comparisons of the table's time column with constants (`start_time >=
//! now() - INTERVAL '5 minutes'`, `BETWEEN`, `AND` of those) are taken as
//! inexact filters: they select the partitions (and archive hours) to scan,
//! and DataFusion still applies them row by row.

use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, Scalar, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::and;
use arrow::compute::kernels::cmp::{gt_eq, lt};
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr as PhysicalBinary, Column, Literal};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;

use super::{Table, TimeRange};
use crate::ingest::convert::common::TIME_ZONE;

/// A store table seen by DataFusion, optionally restricted to a time range
/// (the rule engine restricts tables to a rule's window this way).
#[derive(Debug, Clone)]
pub struct StoreTable {
    table: Arc<Table>,
    range: TimeRange,
}

impl StoreTable {
    pub fn new(table: Arc<Table>) -> Self {
        Self {
            table,
            range: TimeRange::ALL,
        }
    }

    /// The same table showing only rows whose time falls in `range`.
    pub fn restricted(table: Arc<Table>, range: TimeRange) -> Self {
        Self { table, range }
    }

    /// The table behind this provider.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The range of partitions a scan with these filters must read.
    pub fn scan_range(&self, filters: &[Expr]) -> TimeRange {
        let column = self.table.time_column();
        filters
            .iter()
            .filter_map(|f| time_range(f, column))
            .fold(self.range, TimeRange::intersect)
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        let column = self.table.time_column();
        Ok(filters
            .iter()
            .map(|f| match time_range(f, column) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let range = self.scan_range(filters);
        let snapshot = self.table.snapshot(range);
        let mut batches = snapshot.batches;
        if self.range != TimeRange::ALL {
            // A restricted table (a rule's window) must not show the rows of
            // the partitions it reads that fall outside its range. Partitions
            // wholly inside are read as they are; only the (at most two)
            // partitions that straddle an end of the window are filtered,
            // here, once.
            let straddling = batches.split_off(snapshot.inside);
            for batch in straddling {
                let kept = restrict(&batch, self.table.time_column_index(), self.range)?;
                if kept.num_rows() > 0 {
                    batches.push(kept);
                }
            }
        }
        let memory = memory_exec(&self.table, batches, state, projection.cloned())?;
        let Some(below) = snapshot.archive_below else {
            return Ok(memory);
        };
        let cold_range = range.intersect(TimeRange {
            start: None,
            end: Some(below),
        });
        let Some(cold) = self.table.cold().filter(|_| !cold_range.is_empty()) else {
            return Ok(memory);
        };
        let Some(archived) = self
            .cold_scan(
                cold.as_ref(),
                state,
                cold_range,
                snapshot.committed_flush,
                projection,
            )
            .await?
        else {
            return Ok(memory);
        };
        UnionExec::try_new(vec![memory, archived])
    }
}

impl StoreTable {
    /// The archive's rows of `range` (exactly those: files hold whole hours),
    /// with the columns of `projection`.
    async fn cold_scan(
        &self,
        cold: &dyn super::ColdTier,
        state: &dyn Session,
        range: TimeRange,
        committed_flush: u64,
        projection: Option<&Vec<usize>>,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let time = self.table.time_column_index();
        // The time column is read whether asked for or not, to filter by.
        let mut columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.table.schema().fields().len()).collect(),
        };
        let added = !columns.contains(&time);
        if added {
            columns.push(time);
        }
        let time_at = columns
            .iter()
            .position(|&c| c == time)
            .expect("the time column was just added if missing");
        let Some(plan) = cold
            .scan(
                state,
                self.table.signal(),
                range,
                committed_flush,
                Some(&columns),
            )
            .await?
        else {
            return Ok(None);
        };
        let schema = plan.schema();
        let column: Arc<dyn PhysicalExpr> =
            Arc::new(Column::new(schema.field(time_at).name(), time_at));
        let bound = |v: i64| -> Arc<dyn PhysicalExpr> {
            Arc::new(Literal::new(ScalarValue::TimestampNanosecond(
                Some(v),
                Some(TIME_ZONE.into()),
            )))
        };
        let mut predicate: Option<Arc<dyn PhysicalExpr>> = None;
        let mut conjoin = |e: Arc<dyn PhysicalExpr>| {
            predicate = Some(match predicate.take() {
                Some(p) => Arc::new(PhysicalBinary::new(p, Operator::And, e)),
                None => e,
            });
        };
        if let Some(start) = range.start {
            conjoin(Arc::new(PhysicalBinary::new(
                column.clone(),
                Operator::GtEq,
                bound(start),
            )));
        }
        if let Some(end) = range.end {
            conjoin(Arc::new(PhysicalBinary::new(
                column,
                Operator::Lt,
                bound(end),
            )));
        }
        let mut plan = match predicate {
            Some(p) => Arc::new(FilterExec::try_new(p, plan)?) as Arc<dyn ExecutionPlan>,
            None => plan,
        };
        if added {
            let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = (0..columns.len() - 1)
                .map(|i| {
                    let name = schema.field(i).name().clone();
                    (
                        Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                        name,
                    )
                })
                .collect();
            plan = Arc::new(ProjectionExec::try_new(exprs, plan)?);
        }
        Ok(Some(plan))
    }
}

/// A scan of `batches`, spread round-robin over the session's target
/// partitions so that a scan uses every core it may.
fn memory_exec(
    table: &Table,
    batches: Vec<RecordBatch>,
    state: &dyn Session,
    projection: Option<Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let n = state
        .config()
        .target_partitions()
        .max(1)
        .min(batches.len().max(1));
    let mut partitions = vec![Vec::new(); n];
    for (i, batch) in batches.into_iter().enumerate() {
        partitions[i % n].push(batch);
    }
    Ok(MemorySourceConfig::try_new_exec(
        &partitions,
        table.schema(),
        projection,
    )?)
}

/// The rows of `batch` whose time (column `time`) falls in `range`.
fn restrict(batch: &RecordBatch, time: usize, range: TimeRange) -> Result<RecordBatch> {
    let times = batch.column(time);
    let bound =
        |v: i64| Scalar::new(TimestampNanosecondArray::from(vec![v]).with_timezone(TIME_ZONE));
    let mut mask: Option<BooleanArray> = None;
    if let Some(start) = range.start {
        mask = Some(gt_eq(times, &bound(start))?);
    }
    if let Some(end) = range.end {
        let below = lt(times, &bound(end))?;
        mask = Some(match mask {
            Some(m) => and(&m, &below)?,
            None => below,
        });
    }
    Ok(match mask {
        Some(m) => filter_record_batch(batch, &m)?,
        None => batch.clone(),
    })
}

/// The time range a filter restricts `column` to, if it is one we understand.
pub(crate) fn time_range(expr: &Expr, column: &str) -> Option<TimeRange> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => {
                let l = time_range(left, column);
                let r = time_range(right, column);
                match (l, r) {
                    (Some(l), Some(r)) => Some(l.intersect(r)),
                    (l, r) => l.or(r),
                }
            }
            _ => {
                if let (true, Some(v)) = (is_column(left, column), timestamp_nanos(right)) {
                    compare(*op, v)
                } else if let (Some(v), true) = (timestamp_nanos(left), is_column(right, column)) {
                    compare(op.swap()?, v)
                } else {
                    None
                }
            }
        },
        Expr::Between(b) if !b.negated && is_column(&b.expr, column) => {
            let low = timestamp_nanos(&b.low)?;
            let high = timestamp_nanos(&b.high)?;
            Some(TimeRange {
                start: Some(low),
                end: high.checked_add(1),
            })
        }
        _ => None,
    }
}

/// `column <op> v` as a range.
fn compare(op: Operator, v: i64) -> Option<TimeRange> {
    let (start, end) = match op {
        Operator::Gt => (v.checked_add(1), None),
        Operator::GtEq => (Some(v), None),
        Operator::Lt => (None, Some(v)),
        Operator::LtEq => (None, v.checked_add(1)),
        Operator::Eq => (Some(v), v.checked_add(1)),
        _ => return None,
    };
    Some(TimeRange { start, end })
}

/// Whether `expr` is the time column, possibly cast to another timestamp type
/// (a cast between time zones or units keeps the order of instants).
fn is_column(expr: &Expr, column: &str) -> bool {
    match expr {
        Expr::Column(c) => c.name == column,
        Expr::Cast(c) if c.field.data_type().is_temporal() => is_column(&c.expr, column),
        Expr::TryCast(c) if c.field.data_type().is_temporal() => is_column(&c.expr, column),
        _ => false,
    }
}

/// A timestamp literal in nanoseconds, whatever its unit.
fn timestamp_nanos(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    fn ts(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(v),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn comparisons_and_conjunctions_become_ranges() {
        let t = "start_time";
        assert_eq!(
            time_range(&col(t).gt_eq(ts(10)).and(col(t).lt(ts(20))), t),
            Some(TimeRange {
                start: Some(10),
                end: Some(20)
            })
        );
        assert_eq!(
            time_range(&ts(10).lt(col(t)), t),
            Some(TimeRange {
                start: Some(11),
                end: None
            })
        );
        assert_eq!(
            time_range(&col(t).between(ts(5), ts(7)), t),
            Some(TimeRange {
                start: Some(5),
                end: Some(8)
            })
        );
        let ms = lit(ScalarValue::TimestampMillisecond(Some(3), None));
        assert_eq!(
            time_range(&col(t).lt_eq(ms), t),
            Some(TimeRange {
                start: None,
                end: Some(3_000_001)
            })
        );
    }

    #[test]
    fn other_columns_and_operators_are_not_pushed() {
        let t = "start_time";
        assert_eq!(time_range(&col("end_time").gt(ts(1)), t), None);
        assert_eq!(time_range(&col(t).not_eq(ts(1)), t), None);
        assert_eq!(time_range(&col(t).gt(ts(1)).or(col(t).lt(ts(0))), t), None);
    }
}
