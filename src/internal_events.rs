//! Typed internal events: one struct per thing that happens, whose `emit()`
//! logs it and counts it, with labels from small fixed sets. Emitted per
//! request or batch, never per row.
//!
//! Metrics live in a [`Metrics`] registry owned by each running instance
//! (not a process-wide global), so several instances in one test process do
//! not mix their counts.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ingest::Signal;
use crate::store::Store;

/// The front end a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
    /// The engine's own rationale spans, ingested back.
    Internal,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
            Transport::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: &'static str,
    transport: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    signal: &'static str,
    transport: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The engine's own metrics, exposed at `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ingested: Family<SignalLabels, Counter>,
    rejected: Family<SignalLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    expired_rows: Family<TableLabels, Counter>,
    store_bytes: Family<TableLabels, Gauge>,
    store_rows: Family<TableLabels, Gauge>,
    store_budget: Gauge,
    store_unflushed: Gauge,
    memory_start_entries: Gauge,
    memory_start_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    memory_index_complete: Gauge,
    memory_chain_problems: Gauge,
    store_evicted_rows: Family<TableLabels, Counter>,
    wal: WalMetrics,
    queries: Family<OutcomeLabels, Counter>,
    rule_evaluations: Family<OutcomeLabels, Counter>,
    rule_evaluation_seconds: Histogram,
    rule_transitions: Counter,
    rule_reloads: Family<OutcomeLabels, Counter>,
    rules_loaded: Gauge,
    decisions: Family<VerdictLabels, Counter>,
    action_runs: Family<RunLabels, Counter>,
    action_run_seconds: Histogram,
    host_calls: Family<CallLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    approvals_pending: Gauge,
    decision_spans_dropped: Counter,
    exported_spans: Family<ResultLabels, Counter>,
    export_retries: Counter,
    export_queue: Gauge,
    alert_instances: Family<AlertLabels, Gauge>,
    script_errors: Family<ErrorKindLabels, Counter>,
    cluster_claims: Family<ResultLabels, Counter>,
    cluster_nodes: Family<StateLabels, Gauge>,
    memory_entries: Counter,
    memory_objects: Counter,
    memory_failures: Counter,
    archive: ArchiveMetrics,
    /// Held from the first `observe_*` of a scrape to its `render`, so that
    /// concurrent scrapes (a pair of Prometheus servers) never see a family
    /// half refilled.
    scrape: parking_lot::Mutex<()>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    rule: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorKindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    status: &'static str,
    error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    module: &'static str,
    status: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("homeostat");
        let m = Self {
            ingested: Family::default(),
            rejected: Family::default(),
            refused: Family::default(),
            expired_rows: Family::default(),
            store_bytes: Family::default(),
            store_rows: Family::default(),
            store_budget: Gauge::default(),
            store_unflushed: Gauge::default(),
            memory_start_entries: Gauge::default(),
            memory_start_seconds: Gauge::default(),
            memory_index_complete: Gauge::default(),
            memory_chain_problems: Gauge::default(),
            store_evicted_rows: Family::default(),
            wal: WalMetrics::default(),
            queries: Family::default(),
            rule_evaluations: Family::default(),
            rule_evaluation_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            rule_transitions: Counter::default(),
            rule_reloads: Family::default(),
            rules_loaded: Gauge::default(),
            decisions: Family::default(),
            action_runs: Family::default(),
            action_run_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            host_calls: Family::default(),
            outcomes: Family::default(),
            approvals_pending: Gauge::default(),
            cluster_claims: Family::default(),
            cluster_nodes: Family::default(),
            decision_spans_dropped: Counter::default(),
            exported_spans: Family::default(),
            export_retries: Counter::default(),
            export_queue: Gauge::default(),
            alert_instances: Family::default(),
            script_errors: Family::default(),
            memory_entries: Counter::default(),
            memory_objects: Counter::default(),
            memory_failures: Counter::default(),
            archive: ArchiveMetrics::default(),
            scrape: parking_lot::Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "ingested_items",
            "Spans, data points and log records stored, by signal and transport",
            m.ingested.clone(),
        );
        registry.register(
            "rejected_items",
            "Items rejected one by one inside accepted requests (OTLP partial success)",
            m.rejected.clone(),
        );
        registry.register(
            "refused_requests",
            "Whole requests refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "expired_rows",
            "Archived rows dropped from memory by retention",
            m.expired_rows.clone(),
        );
        registry.register(
            "store_evicted_rows",
            "Archived rows dropped from memory early to make room for new data (the memory budget was full)",
            m.store_evicted_rows.clone(),
        );
        registry.register(
            "memory_start_entries_read",
            "Decision log entries the last start read after the writers' latest snapshots",
            m.memory_start_entries.clone(),
        );
        registry.register(
            "memory_start_seconds",
            "Time the last start took to read this node's snapshot and the entries after it",
            m.memory_start_seconds.clone(),
        );
        registry.register(
            "memory_index_complete",
            "1 once the whole decision history is in the decisions and facts tables (filled after the start)",
            m.memory_index_complete.clone(),
        );
        registry.register(
            "memory_chain_problems",
            "Problems the background check of the whole decision history found (altered or missing entries; `homeostat audit verify` names them)",
            m.memory_chain_problems.clone(),
        );
        registry.register(
            "store_unflushed_bytes",
            "Arrow memory of rows not yet in the archive (the archive backlog; when it fills the budget, receivers answer retry-later)",
            m.store_unflushed.clone(),
        );
        registry.register(
            "store_bytes",
            "Arrow memory held per table",
            m.store_bytes.clone(),
        );
        registry.register("store_rows", "Rows held per table", m.store_rows.clone());
        registry.register(
            "store_budget_bytes",
            "Memory budget of the store",
            m.store_budget.clone(),
        );
        registry.register("queries", "SQL queries, by outcome", m.queries.clone());
        registry.register(
            "rule_evaluations",
            "Rule evaluations, by outcome",
            m.rule_evaluations.clone(),
        );
        registry.register(
            "rule_evaluation_seconds",
            "Time one rule evaluation took",
            m.rule_evaluation_seconds.clone(),
        );
        registry.register(
            "rule_transitions",
            "Alert instance state changes",
            m.rule_transitions.clone(),
        );
        registry.register(
            "rule_reloads",
            "Reloads of the rules folder, by outcome",
            m.rule_reloads.clone(),
        );
        registry.register(
            "rules_loaded",
            "Rules loaded and running",
            m.rules_loaded.clone(),
        );
        registry.register(
            "decisions",
            "Decisions on alerts with actions, by policy verdict",
            m.decisions.clone(),
        );
        registry.register(
            "action_runs",
            "Action script runs, by status and error kind",
            m.action_runs.clone(),
        );
        registry.register(
            "action_run_seconds",
            "Time an action took, retries included",
            m.action_run_seconds.clone(),
        );
        registry.register(
            "host_calls",
            "Host calls made by scripts, by module and status",
            m.host_calls.clone(),
        );
        registry.register(
            "decision_outcomes",
            "Verified outcomes of actions",
            m.outcomes.clone(),
        );
        registry.register(
            "approvals_pending",
            "Decisions waiting for a person's approval",
            m.approvals_pending.clone(),
        );
        registry.register(
            "decision_spans_dropped",
            "Rationale spans not stored locally because the store was full",
            m.decision_spans_dropped.clone(),
        );
        registry.register(
            "exported_spans",
            "Rationale spans sent to the OTLP endpoint, by result (exported, dropped when the queue was full, failed after retries)",
            m.exported_spans.clone(),
        );
        registry.register(
            "export_retries",
            "Export requests retried after a retryable failure",
            m.export_retries.clone(),
        );
        registry.register(
            "export_queue_spans",
            "Rationale spans queued for export and not yet taken into a batch",
            m.export_queue.clone(),
        );
        registry.register(
            "alert_instances",
            "Alert instances per rule and state (pending, firing)",
            m.alert_instances.clone(),
        );
        registry.register(
            "cluster_claims",
            "Claims on alert episodes in the shared storage, by result (won, lost, takeover, error)",
            m.cluster_claims.clone(),
        );
        registry.register(
            "cluster_nodes",
            "Replicas sharing the storage, by state (alive, dead), from their heartbeats",
            m.cluster_nodes.clone(),
        );
        registry.register(
            "script_errors",
            "Action runs that ended in an error, by kind (deadline, operations, capability_denied, host_error, script_error...)",
            m.script_errors.clone(),
        );
        registry.register(
            "memory_entries",
            "Entries made durable in this node's decision log",
            m.memory_entries.clone(),
        );
        registry.register(
            "memory_objects",
            "Objects written to this node's decision log (entries appended together share one)",
            m.memory_objects.clone(),
        );
        registry.register(
            "memory_entry_failures",
            "Entries the decision log could not record (storage failed, queue full, node name conflict)",
            m.memory_failures.clone(),
        );
        m.archive.register(&mut registry);
        m.wal.register(&mut registry);
        Self { registry, ..m }
    }

    /// Taken for a whole scrape: the `observe_*` calls, then `render`.
    pub fn scrape(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.scrape.lock()
    }

    /// Brings the export counters up to the exporter's own counts.
    pub fn observe_export(&self, stats: crate::decisions::export::ExportStats) {
        let catch_up = |counter: &Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        for (result, total) in [
            ("exported", stats.spans_exported),
            ("dropped", stats.spans_dropped),
            ("failed", stats.spans_failed),
        ] {
            catch_up(
                &self.exported_spans.get_or_create(&ResultLabels { result }),
                total,
            );
        }
        catch_up(&self.export_retries, stats.batches_retried);
        self.export_queue.set(stats.queued as i64);
    }

    /// Sets the alert instance gauges from the rules' current state; rules
    /// and states that have none are dropped rather than shown as 0 forever.
    pub fn observe_alerts(&self, rules: &crate::rules::RuleEngine) {
        use crate::rules::state::AlertState;
        let mut counts = std::collections::BTreeMap::<(String, &'static str), i64>::new();
        for (name, loaded) in rules.rules() {
            let runtime = loaded.runtime.lock();
            for instance in runtime.state.instances.values() {
                if matches!(instance.state, AlertState::Pending | AlertState::Firing) {
                    *counts
                        .entry((name.clone(), instance.state.name()))
                        .or_default() += 1;
                }
            }
        }
        self.alert_instances.clear();
        for ((rule, state), n) in counts {
            self.alert_instances
                .get_or_create(&AlertLabels { rule, state })
                .set(n);
        }
    }

    /// Brings the decision log counters up to the writer's own counts.
    pub fn observe_memory(&self, stats: &crate::memory::journal::JournalStats) {
        use std::sync::atomic::Ordering::Relaxed;
        for (counter, total) in [
            (&self.memory_entries, stats.entries.load(Relaxed)),
            (&self.memory_objects, stats.objects.load(Relaxed)),
            (&self.memory_failures, stats.failures.load(Relaxed)),
        ] {
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// The Prometheus text exposition, with store gauges read now.
    pub fn render(&self, store: &Store) -> String {
        for table in store.tables() {
            let (bytes, rows) = table.usage();
            let labels = TableLabels {
                table: table.name(),
            };
            self.store_bytes.get_or_create(&labels).set(bytes as i64);
            self.store_rows.get_or_create(&labels).set(rows as i64);
        }
        self.store_budget.set(store.options().memory_budget as i64);
        self.store_unflushed.set(store.unflushed_bytes() as i64);
        self.memory_index_complete
            .set(i64::from(store.memory_index().is_complete()));
        for table in store.tables() {
            let counter = self.store_evicted_rows.get_or_create(&TableLabels {
                table: table.name(),
            });
            counter.inc_by(table.evicted_rows().saturating_sub(counter.get()));
        }
        if let Some(dir) = store.wal_dir() {
            self.wal.observe(dir);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// A request's items were stored.
pub struct BatchIngested {
    pub signal: Signal,
    pub transport: Transport,
    pub accepted: u64,
    pub rejected: u64,
}

impl BatchIngested {
    pub fn emit(self, metrics: &Metrics) {
        let labels = SignalLabels {
            signal: self.signal.name(),
            transport: self.transport.name(),
        };
        metrics
            .ingested
            .get_or_create(&labels)
            .inc_by(self.accepted);
        if self.rejected > 0 {
            tracing::debug!(
                signal = self.signal.name(),
                rejected = self.rejected,
                "items rejected in a partially accepted request"
            );
            metrics
                .rejected
                .get_or_create(&labels)
                .inc_by(self.rejected);
        }
    }
}

/// A whole request was refused.
pub struct IngestRefused {
    pub signal: Signal,
    pub transport: Transport,
    /// One of `memory_budget`, `too_large`, `bad_request`,
    /// `unsupported_media_type`, `internal`, `unauthenticated`.
    pub reason: &'static str,
}

impl IngestRefused {
    pub fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            signal = self.signal.name(),
            transport = self.transport.name(),
            reason = self.reason,
            "request refused"
        );
        metrics
            .refused
            .get_or_create(&RefusedLabels {
                signal: self.signal.name(),
                transport: self.transport.name(),
                reason: self.reason,
            })
            .inc();
    }
}

/// Retention removed archived partitions from memory.
pub struct PartitionsExpired {
    pub table: &'static str,
    pub partitions: u64,
    pub rows: u64,
    pub bytes: u64,
}

impl PartitionsExpired {
    pub fn emit(self, metrics: &Metrics) {
        if self.rows == 0 {
            return;
        }
        tracing::debug!(
            table = self.table,
            partitions = self.partitions,
            rows = self.rows,
            bytes = self.bytes,
            "retention dropped archived partitions from memory"
        );
        metrics
            .expired_rows
            .get_or_create(&TableLabels { table: self.table })
            .inc_by(self.rows);
    }
}

/// A SQL query ran, or failed.
pub struct QueryExecuted<'a> {
    pub error: Option<&'a str>,
}

impl QueryExecuted<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let outcome = match self.error {
            None => "ok",
            Some(e) => {
                tracing::debug!(error = e, "query failed");
                "error"
            }
        };
        metrics
            .queries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// A rule was evaluated.
pub struct RuleEvaluated<'a> {
    pub rule: &'a str,
    pub evaluation: &'a crate::rules::Evaluation,
    pub transitions: usize,
}

impl RuleEvaluated<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let outcome = match &self.evaluation.error {
            None => "ok",
            Some(error) => {
                tracing::warn!(rule = self.rule, %error, "rule evaluation failed; retried at the next tick");
                "error"
            }
        };
        metrics
            .rule_evaluations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        metrics
            .rule_evaluation_seconds
            .observe(self.evaluation.duration_seconds);
        metrics.rule_transitions.inc_by(self.transitions as u64);
    }
}

/// The rules folder was loaded again.
pub struct RulesReloaded<'a> {
    pub report: &'a crate::rules::ReloadReport,
    pub elapsed: std::time::Duration,
}

impl RulesReloaded<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let r = self.report;
        tracing::info!(
            loaded = r.loaded.len(),
            changed = r.changed.len(),
            removed = r.removed.len(),
            errors = r.errors.len(),
            elapsed_ms = self.elapsed.as_millis() as u64,
            "rules loaded"
        );
        let outcome = if r.errors.is_empty() { "ok" } else { "error" };
        metrics
            .rule_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        metrics.rules_loaded.set(r.loaded.len() as i64);
    }
}

/// The policies gave their verdict on a decision.
pub struct DecisionMade<'a> {
    pub rule: &'a str,
    pub verdict: crate::decisions::Verdict,
    pub reason: &'a str,
}

impl DecisionMade<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            rule = self.rule,
            verdict = self.verdict.name(),
            reason = self.reason,
            "decision"
        );
        metrics
            .decisions
            .get_or_create(&VerdictLabels {
                verdict: self.verdict.name(),
            })
            .inc();
    }
}

/// An action finished running.
pub struct ActionRan<'a> {
    pub rule: &'a str,
    pub run: &'a crate::decisions::ActionRun,
    pub calls: &'a [crate::act::host::HostCall],
    pub elapsed: std::time::Duration,
}

impl ActionRan<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let status = self.run.status.name();
        let error = self.run.error.as_ref().map_or("", |e| e.kind);
        match &self.run.error {
            Some(e) => {
                metrics
                    .script_errors
                    .get_or_create(&ErrorKindLabels { kind: e.kind })
                    .inc();
                tracing::warn!(rule = self.rule, kind = e.kind, error = %e.message, "action failed")
            }
            None => tracing::info!(
                rule = self.rule,
                status,
                calls = self.calls.len(),
                "action ran"
            ),
        }
        metrics
            .action_runs
            .get_or_create(&RunLabels { status, error })
            .inc();
        metrics
            .action_run_seconds
            .observe(self.elapsed.as_secs_f64());
        for call in self.calls {
            metrics
                .host_calls
                .get_or_create(&CallLabels {
                    module: call.module,
                    status: call.status.name(),
                })
                .inc();
        }
    }
}

/// An action's outcome was verified.
pub struct OutcomeVerified<'a> {
    pub rule: &'a str,
    pub outcome: crate::decisions::Outcome,
}

impl OutcomeVerified<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::info!(
            rule = self.rule,
            outcome = self.outcome.name(),
            "action outcome"
        );
        metrics
            .outcomes
            .get_or_create(&OutcomeLabels {
                outcome: self.outcome.name(),
            })
            .inc();
    }
}

/// The number of decisions waiting for approval changed.
/// A claim on an alert episode got its answer.
pub struct EpisodeClaimed<'a> {
    pub rule: &'a str,
    pub episode: u64,
    /// `won`, `lost`, `takeover` or `error`.
    pub result: &'static str,
    pub holder: &'a str,
}

impl EpisodeClaimed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::debug!(
            rule = self.rule,
            episode = self.episode,
            result = self.result,
            holder = self.holder,
            "episode claim"
        );
        metrics
            .cluster_claims
            .get_or_create(&ResultLabels {
                result: self.result,
            })
            .inc();
    }
}

/// The replicas' heartbeats were read.
pub struct ClusterNodes {
    pub alive: usize,
    pub dead: usize,
}

impl ClusterNodes {
    pub fn emit(self, metrics: &Metrics) {
        for (state, n) in [("alive", self.alive), ("dead", self.dead)] {
            metrics
                .cluster_nodes
                .get_or_create(&StateLabels { state })
                .set(n as i64);
        }
    }
}

pub struct ApprovalsPending(pub usize);

impl ApprovalsPending {
    pub fn emit(self, metrics: &Metrics) {
        metrics.approvals_pending.set(self.0 as i64);
    }
}

/// Rationale spans could not be stored locally.
pub struct DecisionSpansDropped<'a> {
    pub spans: usize,
    pub error: &'a str,
}

impl DecisionSpansDropped<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            spans = self.spans,
            error = self.error,
            "rationale spans not stored locally"
        );
        metrics.decision_spans_dropped.inc_by(self.spans as u64);
    }
}

// The telemetry archive (`memory::archive`): its metrics and events.

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DroppedLabels {
    table: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    table: &'static str,
    kind: &'static str,
}

/// The archive's part of [`Metrics`].
#[derive(Debug)]
struct ArchiveMetrics {
    written_rows: Family<TableLabels, Counter>,
    written_bytes: Family<TableLabels, Counter>,
    written_files: Family<TableLabels, Counter>,
    flushes: Counter,
    flush_failures: Family<ErrorKindLabels, Counter>,
    flush_seconds: Histogram,
    dropped_rows: Family<DroppedLabels, Counter>,
    compacted_files: Family<TableLabels, Counter>,
    repaired_files: Family<TableLabels, Counter>,
    compaction_failures: Family<KindLabels, Counter>,
    expired_partitions: Family<TableLabels, Counter>,
    expired_bytes: Family<TableLabels, Counter>,
    expiry_failures: Counter,
}

impl ArchiveMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "archive_written_rows",
            "Rows written to the archive, by table",
            self.written_rows.clone(),
        );
        registry.register(
            "archive_written_bytes",
            "Parquet bytes written to the archive, by table",
            self.written_bytes.clone(),
        );
        registry.register(
            "archive_written_files",
            "Parquet files written to the archive, by table",
            self.written_files.clone(),
        );
        registry.register(
            "archive_flushes",
            "Flushes of memory's unarchived rows committed to the archive",
            self.flushes.clone(),
        );
        registry.register(
            "archive_flush_failures",
            "Flushes that failed (their rows stay in memory for the next), by error kind",
            self.flush_failures.clone(),
        );
        registry.register(
            "archive_flush_seconds",
            "Time a committed flush took",
            self.flush_seconds.clone(),
        );
        registry.register(
            "archive_dropped_rows",
            "Rows that could not be encoded for the archive and were left out of a flush (unwritable)",
            self.dropped_rows.clone(),
        );
        registry.register(
            "archive_compacted_files",
            "Archive files merged into larger ones and deleted",
            self.compacted_files.clone(),
        );
        registry.register(
            "archive_repaired_files",
            "Leftover inputs of interrupted merges, deleted",
            self.repaired_files.clone(),
        );
        registry.register(
            "archive_compaction_failures",
            "Partitions whose compaction failed, by table and error kind",
            self.compaction_failures.clone(),
        );
        registry.register(
            "archive_expired_partitions",
            "Hour partitions deleted from the archive by retention",
            self.expired_partitions.clone(),
        );
        registry.register(
            "archive_expired_bytes",
            "Bytes deleted from the archive by retention",
            self.expired_bytes.clone(),
        );
        registry.register(
            "archive_expiry_failures",
            "Archive retention passes that failed",
            self.expiry_failures.clone(),
        );
    }
}

impl Default for ArchiveMetrics {
    fn default() -> Self {
        Self {
            written_rows: Family::default(),
            written_bytes: Family::default(),
            written_files: Family::default(),
            flushes: Counter::default(),
            flush_failures: Family::default(),
            flush_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            dropped_rows: Family::default(),
            compacted_files: Family::default(),
            repaired_files: Family::default(),
            compaction_failures: Family::default(),
            expired_partitions: Family::default(),
            expired_bytes: Family::default(),
            expiry_failures: Counter::default(),
        }
    }
}

/// A flush was committed to the archive.
pub struct ArchiveFlushed<'a> {
    pub report: &'a crate::memory::archive::FlushReport,
}

impl ArchiveFlushed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let r = self.report;
        tracing::debug!(
            flush = r.number,
            files = r.files.len(),
            rows = r.rows,
            bytes = r.bytes,
            elapsed = ?r.elapsed,
            "flush committed to the archive"
        );
        let m = &metrics.archive;
        m.flushes.inc();
        m.flush_seconds.observe(r.elapsed.as_secs_f64());
        for f in &r.files {
            let labels = TableLabels { table: f.table };
            m.written_rows.get_or_create(&labels).inc_by(f.rows);
            m.written_bytes.get_or_create(&labels).inc_by(f.bytes);
            m.written_files.get_or_create(&labels).inc();
        }
    }
}

/// A flush failed: its rows stay in memory (and in the log) for the next.
pub struct ArchiveFlushFailed<'a> {
    pub error: &'a crate::memory::archive::ArchiveError,
}

impl ArchiveFlushFailed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::warn!(error = %self.error, "archive flush failed; its rows stay in memory for the next attempt");
        metrics
            .archive
            .flush_failures
            .get_or_create(&ErrorKindLabels {
                kind: self.error.kind(),
            })
            .inc();
    }
}

/// Rows left memory and will not be archived.
pub struct ArchiveRowsDropped {
    pub table: &'static str,
    pub rows: u64,
    /// `unwritable`.
    pub reason: &'static str,
}

impl ArchiveRowsDropped {
    pub fn emit(self, metrics: &Metrics) {
        tracing::warn!(
            table = self.table,
            rows = self.rows,
            reason = self.reason,
            "rows dropped without being archived"
        );
        metrics
            .archive
            .dropped_rows
            .get_or_create(&DroppedLabels {
                table: self.table,
                reason: self.reason,
            })
            .inc_by(self.rows);
    }
}

/// A partition's files were merged.
pub struct ArchiveCompacted<'a> {
    pub compaction: &'a crate::memory::archive::Compaction,
}

impl ArchiveCompacted<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let c = self.compaction;
        tracing::info!(
            partition = %c.partition,
            inputs = c.inputs,
            rows = c.rows,
            repaired = c.repaired,
            "archive partition compacted"
        );
        let labels = TableLabels { table: c.table };
        let m = &metrics.archive;
        m.compacted_files
            .get_or_create(&labels)
            .inc_by(c.inputs as u64);
        m.repaired_files
            .get_or_create(&labels)
            .inc_by(c.repaired as u64);
    }
}

/// A partition's compaction failed; the next pass tries again.
pub struct ArchiveCompactionFailed<'a> {
    pub failure: &'a crate::memory::archive::CompactionFailure,
}

impl ArchiveCompactionFailed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let f = self.failure;
        tracing::warn!(partition = %f.partition, error = %f.error, "archive compaction failed");
        metrics
            .archive
            .compaction_failures
            .get_or_create(&KindLabels {
                table: f.table,
                kind: f.error.kind(),
            })
            .inc();
    }
}

/// Retention deleted an hour partition from the archive.
pub struct ArchivePartitionExpired<'a> {
    pub partition: &'a crate::memory::archive::ExpiredPartition,
}

impl ArchivePartitionExpired<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let p = self.partition;
        tracing::info!(
            partition = %p.partition,
            files = p.files,
            bytes = p.bytes,
            "archive retention deleted a partition"
        );
        let labels = TableLabels { table: p.table };
        let m = &metrics.archive;
        m.expired_partitions.get_or_create(&labels).inc();
        m.expired_bytes.get_or_create(&labels).inc_by(p.bytes);
    }
}

/// An archive retention pass failed; the next pass tries again.
pub struct ArchiveExpiryFailed<'a> {
    pub error: &'a crate::memory::archive::ArchiveError,
}

impl ArchiveExpiryFailed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        tracing::warn!(error = %self.error, "archive retention pass failed");
        metrics.archive.expiry_failures.inc();
    }
}

/// The write-ahead log's part of [`Metrics`]: its writer's counters,
/// copied at every scrape, and what the start replayed.
#[derive(Debug, Default)]
struct WalMetrics {
    records: Counter,
    bytes: Counter,
    syncs: Counter,
    failures: Counter,
    segments_deleted: Counter,
    disk_bytes: Gauge,
    replayed_records: Counter,
    replayed_rows: Counter,
    cuts: Counter,
    cut_bytes: Counter,
}

impl WalMetrics {
    fn register(&self, registry: &mut Registry) {
        for (name, help, counter) in [
            (
                "wal_records",
                "Records written to the write-ahead log (one per accepted request)",
                &self.records,
            ),
            (
                "wal_bytes",
                "Bytes written to the write-ahead log",
                &self.bytes,
            ),
            (
                "wal_syncs",
                "fdatasync calls of the write-ahead log (one per group of concurrent requests)",
                &self.syncs,
            ),
            (
                "wal_failures",
                "Groups of requests whose log write failed (answered retry-later)",
                &self.failures,
            ),
            (
                "wal_segments_deleted",
                "Log segments deleted once the archive had their rows",
                &self.segments_deleted,
            ),
            (
                "wal_replayed_records",
                "Records put back into memory from the log at start",
                &self.replayed_records,
            ),
            (
                "wal_replayed_rows",
                "Rows put back into memory from the log at start",
                &self.replayed_rows,
            ),
            (
                "wal_cuts",
                "Starts that found a torn or corrupt log tail and cut it",
                &self.cuts,
            ),
            (
                "wal_cut_bytes",
                "Bytes of log cut at start as torn or corrupt",
                &self.cut_bytes,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "wal_disk_bytes",
            "Bytes of write-ahead log segments on disk",
            self.disk_bytes.clone(),
        );
    }

    fn observe(&self, dir: &crate::store::wal::Dir) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = dir.stats();
        let copy = |c: &Counter, v: u64| {
            c.inc_by(v.saturating_sub(c.get()));
        };
        copy(&self.records, stats.records.load(Relaxed));
        copy(&self.bytes, stats.bytes.load(Relaxed));
        copy(&self.syncs, stats.syncs.load(Relaxed));
        copy(&self.failures, stats.failures.load(Relaxed));
        copy(&self.segments_deleted, stats.segments_deleted.load(Relaxed));
        self.disk_bytes.set(dir.size() as i64);
    }
}

/// The start put the log's records back into memory.
pub struct WalReplayed<'a> {
    pub dir: &'a std::path::Path,
    pub replayed: &'a crate::store::wal::Replayed,
}

impl WalReplayed<'_> {
    pub fn emit(self, metrics: &Metrics) {
        let r = self.replayed;
        if let Some((segment, offset, reason, bytes)) = &r.cut {
            tracing::error!(
                segment = %segment.display(),
                offset,
                reason = %reason,
                bytes_cut = bytes,
                "the write-ahead log had a torn or corrupt tail: cut at the first bad record"
            );
            metrics.wal.cuts.inc();
            metrics.wal.cut_bytes.inc_by(*bytes);
        }
        tracing::info!(
            dir = %self.dir.display(),
            segments = r.segments,
            records = r.records,
            rows = r.rows,
            bytes = r.bytes,
            elapsed = ?r.elapsed,
            "write-ahead log replayed"
        );
        metrics.wal.replayed_records.inc_by(r.records);
        metrics.wal.replayed_rows.inc_by(r.rows);
    }
}

/// The start read the memory: each writer's latest snapshot and the
/// entries after it.
pub struct MemoryRecovered {
    pub entries_read: usize,
    pub elapsed: std::time::Duration,
}

impl MemoryRecovered {
    pub fn emit(self, metrics: &Metrics) {
        metrics.memory_start_entries.set(self.entries_read as i64);
        metrics.memory_start_seconds.set(self.elapsed.as_secs_f64());
    }
}

/// The background read of the whole decision history is done.
pub struct MemoryHistoryChecked {
    pub entries: usize,
    pub problems: usize,
    pub elapsed: std::time::Duration,
}

impl MemoryHistoryChecked {
    pub fn emit(self, metrics: &Metrics) {
        tracing::info!(
            entries = self.entries,
            problems = self.problems,
            elapsed = ?self.elapsed,
            "the whole decision history is in the SQL tables"
        );
        metrics.memory_chain_problems.set(self.problems as i64);
    }
}
