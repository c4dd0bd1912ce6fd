//! The memory as SQL tables: `decisions` (one row per decision, as it
//! stands now) and `facts` (every version of every fact, with its SCD-2
//! validity). Usable from `/api/v1/query`, `homeostat query --data` and
//! rules alike.
//!
//! The [`MemoryIndex`] behind them holds a summary row per decision (about
//! 300 bytes; the whole record stays in storage) and every fact version,
//! and follows the decision log as entries become durable.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result;
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::RwLock;

use super::journal::{Entry, Record};
use crate::decisions::Decision;
use crate::ingest::convert::common::TIME_ZONE;

/// A decision's row in the `decisions` table.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRow {
    pub id: String,
    pub trace_id: String,
    pub rule: String,
    pub fingerprint: String,
    /// The instance's labels, as a JSON object.
    pub labels: String,
    pub episode: u64,
    pub trigger: &'static str,
    pub at: i64,
    pub verdict: &'static str,
    pub reason: String,
    pub dry_run: bool,
    pub status: Option<&'static str>,
    pub error: Option<String>,
    pub choice: Option<String>,
    pub expected: Option<String>,
    pub outcome: &'static str,
    pub escalates: Option<String>,
    pub updated_at: i64,
    /// The stage of the latest entry (`intent`, `result`, ...).
    pub stage: &'static str,
    pub node: String,
    /// The latest entry's position and hash in its writer's chain.
    pub seq: u64,
    pub hash: String,
}

impl DecisionRow {
    pub fn new(d: &Decision, stage: &'static str, node: &str, seq: u64, hash: &str) -> Self {
        Self {
            id: d.id.clone(),
            trace_id: d.trace_id.clone(),
            rule: d.rule.clone(),
            fingerprint: d.fingerprint.clone(),
            labels: serde_json::to_string(&d.labels).unwrap_or_default(),
            episode: d.episode,
            trigger: d.trigger.name(),
            at: d.at,
            verdict: d.policy.verdict.name(),
            reason: d.policy.reason.clone(),
            dry_run: d.policy.dry_run,
            status: d.run.as_ref().map(|r| r.status.name()),
            error: d
                .run
                .as_ref()
                .and_then(|r| r.error.as_ref())
                .map(|e| format!("{}: {}", e.kind, e.message)),
            choice: d.reasoning.decision.as_ref().map(|c| c.option.clone()),
            expected: d.verification.as_ref().map(|v| v.expected.clone()),
            outcome: d.outcome.name(),
            escalates: d.escalates.clone(),
            updated_at: d.updated_at,
            stage,
            node: node.to_owned(),
            seq,
            hash: hash.to_owned(),
        }
    }
}

/// A fact version's row in the `facts` table.
#[derive(Debug, Clone, PartialEq)]
pub struct FactRow {
    pub key: String,
    pub version: u64,
    /// JSON.
    pub value: String,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
    pub written_by: String,
    pub node: String,
}

#[derive(Debug, Default)]
struct Rows {
    decisions: Vec<DecisionRow>,
    position: HashMap<String, usize>,
    /// Every fact version, by key, then time, writer and version: rows can
    /// come in any order (a start fills the recent ones first, the whole
    /// history after) and each is kept once.
    facts: std::collections::BTreeMap<(String, i64, String, u64), FactRow>,
}

/// What the `decisions` and `facts` tables show.
#[derive(Debug, Default)]
pub struct MemoryIndex {
    rows: RwLock<Rows>,
    /// Whether the whole history is in (a start fills it after it is ready).
    complete: std::sync::atomic::AtomicBool,
}

impl MemoryIndex {
    /// Takes in a durable entry. Entries may come more than once and out of
    /// order: a decision keeps its latest state, a fact version is kept once.
    pub fn apply(&self, entry: &Entry, hash: &str) {
        match &entry.record {
            Record::Decision { stage, decision } => {
                self.put_decision(DecisionRow::new(
                    decision,
                    stage.name(),
                    &entry.node,
                    entry.seq,
                    hash,
                ));
            }
            Record::Fact { fact } => self.put_fact(fact, &entry.node),
            Record::Alert { .. } | Record::Start { .. } => {}
        }
    }

    /// A decision's row, unless a later state of it is there already.
    pub fn put_decision(&self, row: DecisionRow) {
        let mut rows = self.rows.write();
        match rows.position.get(&row.id).copied() {
            Some(i) => {
                let current = &rows.decisions[i];
                let newer = (
                    row.updated_at,
                    row.node == current.node && row.seq > current.seq,
                ) >= (current.updated_at, false);
                if newer {
                    rows.decisions[i] = row;
                }
            }
            None => {
                let i = rows.decisions.len();
                rows.position.insert(row.id.clone(), i);
                rows.decisions.push(row);
            }
        }
    }

    /// A fact version written by `node`, once.
    pub fn put_fact(&self, fact: &crate::decisions::memory::Fact, node: &str) {
        let key = (
            fact.key.clone(),
            fact.valid_from,
            node.to_owned(),
            fact.version,
        );
        self.rows
            .write()
            .facts
            .entry(key)
            .or_insert_with(|| FactRow {
                key: fact.key.clone(),
                version: fact.version,
                value: fact.value.to_string(),
                valid_from: fact.valid_from,
                valid_to: fact.valid_to,
                written_by: fact.written_by.clone(),
                node: node.to_owned(),
            });
    }

    /// Says the whole history is in.
    pub fn set_complete(&self) {
        self.complete
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the whole history is in, or only what a start read first.
    pub fn is_complete(&self) -> bool {
        self.complete.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn decisions(&self) -> Vec<DecisionRow> {
        self.rows.read().decisions.clone()
    }

    /// Every fact version, each closed by the next version of its key.
    pub fn facts(&self) -> Vec<FactRow> {
        let rows = self.rows.read();
        let mut out: Vec<FactRow> = Vec::with_capacity(rows.facts.len());
        for row in rows.facts.values() {
            if let Some(previous) = out.last_mut()
                && previous.key == row.key
                && previous.valid_to.is_none()
            {
                previous.valid_to = Some(row.valid_from);
            }
            out.push(row.clone());
        }
        out
    }

    /// Decisions of `rule` on `fingerprint` at or after `since` whose
    /// action ran (or runs), for scripts' `memory::acted`.
    pub fn acted(&self, rule: &str, fingerprint: &str, since: i64) -> usize {
        self.rows
            .read()
            .decisions
            .iter()
            .filter(|d| d.rule == rule && d.fingerprint == fingerprint && d.at >= since)
            .filter(|d| d.status.is_some())
            .count()
    }
}

fn time(nullable: bool, name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Nanosecond, Some(TIME_ZONE.into())),
        nullable,
    )
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// What each column of `decisions` means, in schema order.
pub const DECISION_COLUMN_DOCS: &[(&str, &str)] = &[
    (
        "id",
        "The decision's id (16 hex digits); `GET /api/v1/decisions/{id}` shows it whole.",
    ),
    ("trace_id", "Its rationale trace's id (32 hex digits)."),
    ("rule", "The rule that triggered it."),
    ("fingerprint", "The alert instance: a hash of its labels."),
    ("labels", "The instance's labels, as a JSON object."),
    (
        "episode",
        "The instance's episode (each spell of pending or firing is one).",
    ),
    (
        "trigger",
        "`firing`, `resolved`, `repeat` or `ineffective` (an escalation).",
    ),
    ("at", "When it was triggered."),
    (
        "verdict",
        "The policies' verdict: `allowed`, `suppressed`, `awaiting_approval`, `approved`, `denied`, `expired`.",
    ),
    (
        "reason",
        "Why, in a sentence: `suppressed: cooldown until 2024-01-01T00:05:00Z`.",
    ),
    ("dry_run", "Host calls were recorded, not performed."),
    (
        "status",
        "The run: `running`, `succeeded`, `skipped`, `failed`, `interrupted` (cut short by a crash); null when nothing ran.",
    ),
    ("error", "Why the run failed: `kind: message`."),
    ("choice", "The option the script chose (`decide`)."),
    (
        "expected",
        "What the action was expected to achieve, and by when.",
    ),
    (
        "outcome",
        "`pending`, `effective`, `ineffective`, or `none` (nothing to verify).",
    ),
    (
        "escalates",
        "The decision whose ineffectiveness triggered this one.",
    ),
    ("updated_at", "Its last change."),
    (
        "stage",
        "The stage of its latest entry in the log: `decided`, `awaiting_approval`, `intent`, `retry`, `result`, `outcome`, `interrupted`.",
    ),
    ("node", "The writer (`node` setting) whose log holds it."),
    ("seq", "The latest entry's position in that writer's chain."),
    (
        "hash",
        "The latest entry's SHA-256, as `homeostat audit verify` checks it.",
    ),
];

/// What each column of `facts` means, in schema order.
pub const FACT_COLUMN_DOCS: &[(&str, &str)] = &[
    (
        "key",
        "The fact's key, as scripts name it (`memory::put(key, value)`).",
    ),
    (
        "version",
        "1 for the first value of the key, then one more per `put`.",
    ),
    ("value", "The value, as JSON."),
    ("valid_from", "When this version was written."),
    (
        "valid_to",
        "When the next version replaced it; null while current.",
    ),
    ("written_by", "The rule whose action wrote it."),
    ("node", "The writer whose log holds it."),
];

/// The `decisions` table's schema.
pub fn decisions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("id", false),
        text("trace_id", false),
        text("rule", false),
        text("fingerprint", false),
        text("labels", false),
        Field::new("episode", DataType::UInt64, false),
        text("trigger", false),
        time(false, "at"),
        text("verdict", false),
        text("reason", false),
        Field::new("dry_run", DataType::Boolean, false),
        text("status", true),
        text("error", true),
        text("choice", true),
        text("expected", true),
        text("outcome", false),
        text("escalates", true),
        time(false, "updated_at"),
        text("stage", false),
        text("node", false),
        Field::new("seq", DataType::UInt64, false),
        text("hash", false),
    ]))
}

/// The `facts` table's schema.
pub fn facts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("key", false),
        Field::new("version", DataType::UInt64, false),
        text("value", false),
        time(false, "valid_from"),
        time(true, "valid_to"),
        text("written_by", false),
        text("node", false),
    ]))
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn optional<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}

fn times(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter(values).with_timezone(TIME_ZONE))
}

fn decisions_batch(rows: &[DecisionRow]) -> Result<RecordBatch> {
    let r = rows;
    let columns: Vec<ArrayRef> = vec![
        strings(r.iter().map(|d| d.id.as_str())),
        strings(r.iter().map(|d| d.trace_id.as_str())),
        strings(r.iter().map(|d| d.rule.as_str())),
        strings(r.iter().map(|d| d.fingerprint.as_str())),
        strings(r.iter().map(|d| d.labels.as_str())),
        Arc::new(UInt64Array::from_iter_values(r.iter().map(|d| d.episode))),
        strings(r.iter().map(|d| d.trigger)),
        times(r.iter().map(|d| Some(d.at))),
        strings(r.iter().map(|d| d.verdict)),
        strings(r.iter().map(|d| d.reason.as_str())),
        Arc::new(BooleanArray::from_iter(r.iter().map(|d| Some(d.dry_run)))),
        optional(r.iter().map(|d| d.status)),
        optional(r.iter().map(|d| d.error.as_deref())),
        optional(r.iter().map(|d| d.choice.as_deref())),
        optional(r.iter().map(|d| d.expected.as_deref())),
        strings(r.iter().map(|d| d.outcome)),
        optional(r.iter().map(|d| d.escalates.as_deref())),
        times(r.iter().map(|d| Some(d.updated_at))),
        strings(r.iter().map(|d| d.stage)),
        strings(r.iter().map(|d| d.node.as_str())),
        Arc::new(UInt64Array::from_iter_values(r.iter().map(|d| d.seq))),
        strings(r.iter().map(|d| d.hash.as_str())),
    ];
    Ok(RecordBatch::try_new(decisions_schema(), columns)?)
}

fn facts_batch(rows: &[FactRow]) -> Result<RecordBatch> {
    let r = rows;
    let columns: Vec<ArrayRef> = vec![
        strings(r.iter().map(|f| f.key.as_str())),
        Arc::new(UInt64Array::from_iter_values(r.iter().map(|f| f.version))),
        strings(r.iter().map(|f| f.value.as_str())),
        times(r.iter().map(|f| Some(f.valid_from))),
        times(r.iter().map(|f| f.valid_to)),
        strings(r.iter().map(|f| f.written_by.as_str())),
        strings(r.iter().map(|f| f.node.as_str())),
    ];
    Ok(RecordBatch::try_new(facts_schema(), columns)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Decisions,
    Facts,
}

/// `decisions` or `facts`, read from the index at each scan.
#[derive(Debug, Clone)]
pub struct MemoryTable {
    index: Arc<MemoryIndex>,
    which: Which,
}

impl MemoryTable {
    pub fn decisions(index: Arc<MemoryIndex>) -> Self {
        Self {
            index,
            which: Which::Decisions,
        }
    }

    pub fn facts(index: Arc<MemoryIndex>) -> Self {
        Self {
            index,
            which: Which::Facts,
        }
    }
}

#[async_trait]
impl TableProvider for MemoryTable {
    fn schema(&self) -> SchemaRef {
        match self.which {
            Which::Decisions => decisions_schema(),
            Which::Facts => facts_schema(),
        }
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch = match self.which {
            Which::Decisions => decisions_batch(&self.index.decisions())?,
            Which::Facts => facts_batch(&self.index.facts())?,
        };
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema(),
            projection.cloned(),
        )?)
    }
}

/// Registers `decisions` and `facts` in `ctx`.
pub fn register(ctx: &datafusion::prelude::SessionContext, index: &Arc<MemoryIndex>) -> Result<()> {
    ctx.register_table("decisions", Arc::new(MemoryTable::decisions(index.clone())))?;
    ctx.register_table("facts", Arc::new(MemoryTable::facts(index.clone())))?;
    Ok(())
}
