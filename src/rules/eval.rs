//! One evaluation of a rule at a time `now`: its cached plan bound to the
//! window `[now - lateness - window, now - lateness)`, executed, and its rows
//! turned into alert instances.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::compute::concat_batches;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::GreedyMemoryPool;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::collect;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::compile::{CompiledRule, WINDOW_END, WINDOW_START, WindowBound};
use super::state::Match;
use crate::store::{StoreTable, TimeRange};

/// What one evaluation saw.
#[derive(Debug)]
pub struct Answer {
    pub window: TimeRange,
    /// The instances, by fingerprint, in the order of the rows.
    pub matches: Vec<(String, Match)>,
    /// The rows themselves: the evidence.
    pub batch: RecordBatch,
}

impl CompiledRule {
    /// The window an evaluation at `now` sees.
    pub fn window_at(&self, now: i64) -> TimeRange {
        let nanos = |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let end = now.saturating_sub(nanos(self.lateness));
        TimeRange {
            start: Some(end.saturating_sub(nanos(self.window))),
            end: Some(end),
        }
    }

    /// The cached plan with its tables restricted to `range` and
    /// `window_start()` / `window_end()` bound.
    fn bind(&self, range: TimeRange) -> Result<LogicalPlan> {
        let (start, end) = (
            range.start.unwrap_or(i64::MIN),
            range.end.unwrap_or(i64::MAX),
        );
        let start_fn = Arc::new(WindowBound::bound(WINDOW_START, start));
        let end_fn = Arc::new(WindowBound::bound(WINDOW_END, end));
        let plan = self.plan.clone().transform_up_with_subqueries(|node| {
            let node = match node {
                LogicalPlan::TableScan(mut scan) => {
                    let provider = source_as_provider(&scan.source)?;
                    match provider.downcast_ref::<StoreTable>() {
                        Some(table) => {
                            let restricted = StoreTable::restricted(table.table().clone(), range);
                            scan.source = provider_as_source(Arc::new(restricted));
                            Transformed::yes(LogicalPlan::TableScan(scan))
                        }
                        None => Transformed::no(LogicalPlan::TableScan(scan)),
                    }
                }
                other => Transformed::no(other),
            };
            node.transform_data(|n| {
                n.map_expressions(|e| {
                    e.transform_up(|e| match e {
                        Expr::ScalarFunction(mut f) if f.func.name() == WINDOW_START => {
                            f.func = start_fn.clone();
                            Ok(Transformed::yes(Expr::ScalarFunction(f)))
                        }
                        Expr::ScalarFunction(mut f) if f.func.name() == WINDOW_END => {
                            f.func = end_fn.clone();
                            Ok(Transformed::yes(Expr::ScalarFunction(f)))
                        }
                        other => Ok(Transformed::no(other)),
                    })
                })
            })
        })?;
        Ok(plan.data)
    }

    /// Runs the rule's query for an evaluation at `now`.
    pub async fn evaluate(&self, state: &SessionState, now: i64) -> Result<Answer> {
        self.evaluate_within(state, now, None).await
    }

    /// [`CompiledRule::evaluate`] with a memory pool of its own holding at
    /// most `memory_limit` bytes for its sorts, joins and aggregations: an
    /// evaluation that needs more fails (its tick records the error), and
    /// no other rule or query loses memory to it.
    pub async fn evaluate_within(
        &self,
        state: &SessionState,
        now: i64,
        memory_limit: Option<usize>,
    ) -> Result<Answer> {
        let window = self.window_at(now);
        let plan = self.bind(window)?;
        let physical = state
            .query_planner()
            .create_physical_plan(&plan, state)
            .await?;
        let task = match memory_limit {
            Some(limit) => {
                let base = state.runtime_env();
                let runtime = RuntimeEnv {
                    memory_pool: Arc::new(GreedyMemoryPool::new(limit)),
                    disk_manager: base.disk_manager.clone(),
                    cache_manager: base.cache_manager.clone(),
                    object_store_registry: base.object_store_registry.clone(),
                };
                Arc::new(TaskContext::from(state).with_runtime(Arc::new(runtime)))
            }
            None => state.task_ctx(),
        };
        let batches = collect(physical, task).await?;
        let batch = concat_batches(&self.output, &batches)?;
        let matches = self.matches(&batch)?;
        Ok(Answer {
            window,
            matches,
            batch,
        })
    }

    /// Each row as an instance: key columns are its labels, the others its
    /// values. Two rows with the same labels are an error in the query.
    fn matches(&self, batch: &RecordBatch) -> Result<Vec<(String, Match)>> {
        let schema = batch.schema();
        let mut out: Vec<(String, Match)> = Vec::with_capacity(batch.num_rows());
        let mut seen = BTreeMap::new();
        for row in 0..batch.num_rows() {
            let labels = self.row_labels(batch, row)?;
            let mut values = Map::new();
            for (i, field) in schema.fields().iter().enumerate() {
                if !self.key_columns.contains(&i) {
                    values.insert(
                        field.name().clone(),
                        json_value(batch.column(i).as_ref(), row)?,
                    );
                }
            }
            let fingerprint = fingerprint(&self.name, &labels);
            if let Some(first) = seen.insert(fingerprint.clone(), row) {
                return Err(DataFusionError::Execution(format!(
                    "rows {first} and {row} of rule {} have the same labels {labels:?}: \
                     group by more columns or set `key`",
                    self.name
                )));
            }
            out.push((fingerprint, Match { labels, values }));
        }
        Ok(out)
    }
}

impl CompiledRule {
    /// The labels of one row of the rule's answer: its key columns as text.
    pub fn row_labels(&self, batch: &RecordBatch, row: usize) -> Result<BTreeMap<String, String>> {
        let schema = batch.schema();
        let mut labels = BTreeMap::new();
        for &i in &self.key_columns {
            let column = batch.column(i);
            if column.is_null(row) {
                continue;
            }
            let value = ScalarValue::try_from_array(column, row)?;
            let text = match value.try_as_str() {
                Some(Some(s)) => s.to_owned(),
                _ => value.to_string(),
            };
            labels.insert(schema.field(i).name().clone(), text);
        }
        Ok(labels)
    }
}

/// A whole row as a JSON object.
pub fn row_json(batch: &RecordBatch, row: usize) -> Result<Map<String, Value>> {
    let schema = batch.schema();
    let mut out = Map::new();
    for (i, field) in schema.fields().iter().enumerate() {
        out.insert(
            field.name().clone(),
            json_value(batch.column(i).as_ref(), row)?,
        );
    }
    Ok(out)
}

/// The stable identity of an instance: a hash of its rule and labels.
pub fn fingerprint(rule: &str, labels: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    h.update(rule.as_bytes());
    for (k, v) in labels {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([b'=']);
        h.update(v.as_bytes());
    }
    const_hex::encode(&h.finalize()[..8])
}

/// A cell as JSON: numbers as numbers, text as text, the rest as its display.
pub fn json_value(column: &dyn Array, row: usize) -> Result<Value> {
    if column.is_null(row) {
        return Ok(Value::Null);
    }
    let value = ScalarValue::try_from_array(column, row)?;
    Ok(match value {
        ScalarValue::Boolean(Some(b)) => Value::Bool(b),
        ScalarValue::Int8(Some(v)) => v.into(),
        ScalarValue::Int16(Some(v)) => v.into(),
        ScalarValue::Int32(Some(v)) => v.into(),
        ScalarValue::Int64(Some(v)) => v.into(),
        ScalarValue::UInt8(Some(v)) => v.into(),
        ScalarValue::UInt16(Some(v)) => v.into(),
        ScalarValue::UInt32(Some(v)) => v.into(),
        ScalarValue::UInt64(Some(v)) => v.into(),
        ScalarValue::Float32(Some(v)) => {
            serde_json::Number::from_f64(v as f64).map_or(Value::Null, Value::Number)
        }
        ScalarValue::Float64(Some(v)) => {
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        ScalarValue::List(list) => list_json(list.values().as_ref())?,
        ScalarValue::LargeList(list) => list_json(list.values().as_ref())?,
        other => match other.try_as_str() {
            Some(Some(s)) => Value::String(s.to_owned()),
            _ => Value::String(arrow::util::display::array_value_to_string(column, row)?),
        },
    })
}

/// The elements of a list cell as a JSON array.
fn list_json(values: &dyn Array) -> Result<Value> {
    (0..values.len())
        .map(|i| json_value(values, i))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::ingest::Signal;
    use crate::ingest::convert::spans::spans_at;
    use crate::rules::RulePlanner;
    use crate::store::{Store, StoreOptions};

    const S: i64 = 1_000_000_000;

    #[tokio::test]
    async fn the_query_sees_exactly_its_window_and_its_bounds() {
        let store = Store::new(StoreOptions {
            memory_budget: u64::MAX,
            retention: Duration::from_secs(3600),
            partition: Duration::from_secs(3600),
            max_age: std::time::Duration::MAX,
            max_future: std::time::Duration::MAX,
            flush_bytes: u64::MAX,
        });
        // One partition holds rows on both sides of each window edge.
        let now = 1_000 * S;
        let times = [
            now - 72 * S,
            now - 71 * S,
            now - 70 * S,
            now - 40 * S,
            now - 11 * S,
            now - 10 * S,
            now,
        ];
        store.insert(Signal::Traces, spans_at(&times), now).unwrap();
        let planner = RulePlanner::new(&store).unwrap();
        let text = r#"
window = "1m"
lateness = "10s"
sql = """
SELECT count(*) AS n,
       CAST(window_start() AS BIGINT) AS ws, CAST(window_end() AS BIGINT) AS we,
       count(DISTINCT date_bin(INTERVAL '30 seconds', start_time, window_start())) AS buckets
FROM spans
"""
"#;
        let rule = planner.compile(Path::new("w.toml"), text).await.unwrap();
        let answer = rule.evaluate(planner.state(), now).await.unwrap();
        assert_eq!(
            answer.window,
            TimeRange {
                start: Some(now - 70 * S),
                end: Some(now - 10 * S)
            }
        );
        let values = &answer.matches[0].1.values;
        // [now-70s, now-10s): the rows at -70s, -40s and -11s.
        assert_eq!(values["n"], 3, "{values:?}");
        assert_eq!(values["ws"], now - 70 * S);
        assert_eq!(values["we"], now - 10 * S);
        assert_eq!(values["buckets"], 2);
        // The same cached plan, later: another window.
        let answer = rule.evaluate(planner.state(), now + 10 * S).await.unwrap();
        assert_eq!(answer.matches[0].1.values["n"], 3, "-40s, -11s and -10s");
        assert_eq!(answer.matches[0].1.values["we"], now);
    }

    #[test]
    fn fingerprints_depend_on_rule_and_labels_only() {
        let a: BTreeMap<String, String> = [("service_name".into(), "cart".into())].into();
        let b: BTreeMap<String, String> = [("service_name".into(), "shop".into())].into();
        assert_eq!(fingerprint("r", &a), fingerprint("r", &a.clone()));
        assert_ne!(fingerprint("r", &a), fingerprint("r", &b));
        assert_ne!(fingerprint("r", &a), fingerprint("s", &a));
        assert_eq!(fingerprint("r", &a).len(), 16);
    }
}
