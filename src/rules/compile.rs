//! From a rule file to a [`CompiledRule`]: the query parsed, planned and
//! optimized once against the tables' schemas (the plan is reused at every
//! tick), the action script compiled once. Every problem is reported with
//! the file and line it comes from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use sha2::{Digest, Sha256};

use super::file::{RuleError, RuleFile, key_line, parse, value_start_line};
use crate::ingest::convert::common::timestamp_type;
use crate::store::{Store, StoreTable};

/// Name of the SQL function giving the start of the rule's window.
pub const WINDOW_START: &str = "window_start";
/// Name of the SQL function giving the (exclusive) end of the rule's window.
pub const WINDOW_END: &str = "window_end";

/// A rule ready to run.
#[derive(Debug)]
pub struct CompiledRule {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub every: Duration,
    pub window: Duration,
    pub lateness: Duration,
    pub for_: Duration,
    pub keep_firing_for: Duration,
    pub labels: BTreeMap<String, String>,
    pub sql: String,
    /// The optimized plan, with the store's unrestricted tables in it; each
    /// evaluation binds it to its window.
    pub plan: LogicalPlan,
    /// The columns of the query's answer.
    pub output: SchemaRef,
    /// Indices of the columns that identify an instance.
    pub key_columns: Vec<usize>,
    pub action: Option<CompiledAction>,
    /// Hash of everything the rule was compiled from: an unchanged hash on
    /// reload means an unchanged rule.
    pub source_hash: String,
}

pub use crate::act::config::CompiledAction;

/// Plans rule queries against a store's tables. One planner serves every
/// rule; its session also holds the rule SQL functions.
#[derive(Clone)]
pub struct RulePlanner {
    /// A snapshot of the session, taken once: evaluations use it rather
    /// than cloning the session's state at every tick.
    state: SessionState,
    /// The global bounds of rule actions.
    limits: crate::act::config::ActionLimits,
    /// Memory one evaluation's sorts, joins and aggregations may hold.
    memory_limit: Option<usize>,
}

impl RulePlanner {
    pub fn new(store: &Store) -> Result<Self, DataFusionError> {
        // One partition per evaluation: rules already run in parallel with
        // each other (one task each), so splitting a rule's scan across cores
        // only adds repartitioning work to every tick.
        let mut config = SessionConfig::new()
            .with_information_schema(false)
            .with_target_partitions(1);
        // Spans let planning errors (unknown columns...) point at their line.
        config.options_mut().sql_parser.collect_spans = true;
        let ctx = SessionContext::new_with_config(config);
        for table in store.tables() {
            ctx.register_table(table.name(), Arc::new(StoreTable::new(table.clone())))?;
        }
        crate::memory::tables::register(&ctx, store.memory_index())?;
        ctx.register_udf(ScalarUDF::new_from_impl(WindowBound::new(WINDOW_START)));
        ctx.register_udf(ScalarUDF::new_from_impl(WindowBound::new(WINDOW_END)));
        super::functions::register(&ctx);
        Ok(Self {
            state: ctx.state(),
            limits: Default::default(),
            memory_limit: None,
        })
    }

    /// Gives each evaluation a memory pool of `bytes`.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The memory one evaluation may hold, when limited.
    pub fn memory_limit(&self) -> Option<usize> {
        self.memory_limit
    }

    /// Bounds rule actions by `limits` rather than the defaults.
    pub fn with_action_limits(mut self, limits: crate::act::config::ActionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The session state rules are planned and run in.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Compiles the rule file at `path` whose text is `text`. Returns every
    /// problem found, each with its file and line.
    pub async fn compile(&self, path: &Path, text: &str) -> Result<CompiledRule, Vec<RuleError>> {
        let file = parse(path, text).map_err(|e| vec![e])?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut errors = Vec::new();
        let mut hasher = Sha256::new();
        hasher.update(text.as_bytes());

        let name = file
            .name
            .clone()
            .or_else(|| {
                let stem = path.file_stem()?.to_str()?;
                Some(stem.to_owned())
            })
            .unwrap_or_default();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            errors.push(RuleError::new(
                path,
                key_line(text, "name"),
                format!("invalid rule name {name:?}: use letters, digits and _ - . :"),
            ));
        }
        check_durations(path, text, &file, &mut errors);

        let sql = match (&file.sql, &file.sql_file) {
            (Some(sql), None) => {
                Some((sql.clone(), path.to_owned(), value_start_line(text, "sql")))
            }
            (None, Some(f)) => {
                let sql_path = dir.join(f);
                match std::fs::read_to_string(&sql_path) {
                    Ok(sql) => {
                        hasher.update(sql.as_bytes());
                        Some((sql, sql_path, 1))
                    }
                    Err(e) => {
                        errors.push(RuleError::new(
                            path,
                            key_line(text, "sql_file"),
                            format!("cannot read sql_file {}: {e}", sql_path.display()),
                        ));
                        None
                    }
                }
            }
            (Some(_), Some(_)) => {
                errors.push(RuleError::new(
                    path,
                    key_line(text, "sql_file"),
                    "set sql or sql_file, not both",
                ));
                None
            }
            (None, None) => {
                errors.push(RuleError::new(
                    path,
                    1,
                    "missing the query: set sql or sql_file",
                ));
                None
            }
        };

        let planned = match &sql {
            Some((sql, sql_path, first_line)) => match self.plan(sql).await {
                Ok(plan) => Some(plan),
                Err(e) => {
                    let (line, message) = locate(&e, *first_line);
                    errors.push(RuleError::new(sql_path, line, message));
                    None
                }
            },
            None => None,
        };

        let mut key_columns = Vec::new();
        if let Some(plan) = &planned {
            let output = plan.schema().as_arrow();
            match &file.key {
                Some(keys) => {
                    for k in keys {
                        match output.index_of(k) {
                            Ok(i) => key_columns.push(i),
                            Err(_) => errors.push(RuleError::new(
                                path,
                                key_line(text, "key"),
                                format!(
                                    "key column {k:?} is not in the query's result (columns: {})",
                                    column_list(output)
                                ),
                            )),
                        }
                    }
                }
                None => {
                    key_columns = output
                        .fields()
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| is_text(f.data_type()))
                        .map(|(i, _)| i)
                        .collect();
                }
            }
        }

        let action = match &file.action {
            None => None,
            Some(a) => {
                match crate::act::config::compile(path, text, a, &self.limits, &mut hasher) {
                    Ok(a) => Some(a),
                    Err(problems) => {
                        errors.extend(problems);
                        None
                    }
                }
            }
        };

        if !errors.is_empty() {
            return Err(errors);
        }
        let (sql, _, _) = sql.expect("no errors means the query was read");
        let plan = planned.expect("no errors means the query was planned");
        let output = Arc::new(plan.schema().as_arrow().clone());
        Ok(CompiledRule {
            name,
            path: path.to_owned(),
            description: file.description,
            every: file.every,
            window: file.window,
            lateness: file.lateness,
            for_: file.for_,
            keep_firing_for: file.keep_firing_for,
            labels: file.labels,
            sql,
            plan,
            output,
            key_columns,
            action,
            source_hash: const_hex::encode(hasher.finalize()),
        })
    }

    async fn plan(&self, sql: &str) -> Result<LogicalPlan, DataFusionError> {
        let state = &self.state;
        let plan = state.create_logical_plan(sql).await?;
        // A rule only reads: no DDL, DML or SET.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        state.optimize(&plan)
    }
}

fn check_durations(path: &Path, text: &str, file: &RuleFile, errors: &mut Vec<RuleError>) {
    if file.every.is_zero() {
        errors.push(RuleError::new(
            path,
            key_line(text, "every"),
            "every must be longer than 0s",
        ));
    }
    if file.window.is_zero() {
        errors.push(RuleError::new(
            path,
            key_line(text, "window"),
            "window must be longer than 0s",
        ));
    }
}

/// The line an SQL error points at (when DataFusion or the parser says),
/// counted in the file, and the message.
fn locate(e: &DataFusionError, first_line: usize) -> (usize, String) {
    let message = e.to_string();
    let mut line = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| s.start.line as usize)
        .filter(|l| *l > 0);
    if line.is_none() {
        // sqlparser: "... at Line: 3, Column: 7"
        line = message
            .split("Line: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok());
    }
    (first_line + line.unwrap_or(1) - 1, message)
}

fn column_list(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a column's values are text: such columns are an instance's labels.
pub fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text(v),
        _ => false,
    }
}

/// `window_start()` / `window_end()`. Planned unbound; each evaluation swaps
/// in a bound copy carrying its window's value. Volatile, so that planning
/// never folds them into a constant.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct WindowBound {
    name: &'static str,
    signature: Signature,
    value: Option<i64>,
}

impl WindowBound {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: Signature::exact(vec![], Volatility::Volatile),
            value: None,
        }
    }

    /// The function bound to one evaluation's value.
    pub(crate) fn bound(name: &'static str, nanos: i64) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self {
            value: Some(nanos),
            ..Self::new(name)
        })
    }
}

impl ScalarUDFImpl for WindowBound {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(timestamp_type())
    }

    fn invoke_with_args(&self, _: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        match self.value {
            Some(v) => Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
                Some(v),
                Some(crate::ingest::convert::common::TIME_ZONE.into()),
            ))),
            None => Err(DataFusionError::Execution(format!(
                "{}() is only defined inside a rule's query",
                self.name
            ))),
        }
    }
}
