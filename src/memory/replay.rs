//! `homeostat replay`: rules run over archived telemetry on virtual time,
//! in dry-run, beside the decisions recorded for the same period. How a
//! rule change is backtested before it is deployed.
//!
//! The period's telemetry (plus the longest rule window before it) is read
//! from the archive into an in-memory store, the rules are evaluated at
//! their `every` from `from` to `to` with the same engine, policies and
//! actor as `homeostat run` (actions in dry-run: host calls recorded, not
//! performed), and the decisions are compared with the recorded ones, per
//! rule and instance, in time order: the same, added (the replay decided,
//! the record has nothing), removed (recorded, not replayed), changed
//! (another verdict or choice).
//!
//! The engine's own rationale spans (service `homeostat`) are left out of
//! the replayed telemetry: the replay makes its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use datafusion::prelude::{SessionContext, col, lit};
use datafusion::scalar::ScalarValue;

use super::archive::{Archive, ArchiveConfig};
use super::journal::{Journal, Tail};
use super::{Storage, audit, load};
use crate::act::actor::{Actor, Clock};
use crate::decisions::Decision;
use crate::ingest::Signal;
use crate::internal_events::Metrics;
use crate::rules::{AlertState, RuleEngine};
use crate::store::{Store, StoreOptions};

/// Telemetry a replay may hold in memory at once.
pub const MEMORY_BUDGET: u64 = 8 << 30;

/// One alert instance that fired during the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayedAlert {
    pub labels: BTreeMap<String, String>,
    pub fired_at: i64,
    pub resolved_at: Option<i64>,
}

/// How a replayed decision compares with the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    Same {
        recorded: Box<Decision>,
        replayed: Box<Decision>,
    },
    Added(Box<Decision>),
    Removed(Box<Decision>),
    Changed {
        recorded: Box<Decision>,
        replayed: Box<Decision>,
    },
}

/// One rule's replay.
#[derive(Debug, Clone, Default)]
pub struct RuleReplay {
    pub rule: String,
    pub alerts: Vec<ReplayedAlert>,
    pub decisions: Vec<Decision>,
    pub recorded: Vec<Decision>,
    pub differences: Vec<Difference>,
}

impl RuleReplay {
    fn count(&self, f: impl Fn(&Difference) -> bool) -> usize {
        self.differences.iter().filter(|d| f(d)).count()
    }

    pub fn same(&self) -> usize {
        self.count(|d| matches!(d, Difference::Same { .. }))
    }

    pub fn added(&self) -> usize {
        self.count(|d| matches!(d, Difference::Added(_)))
    }

    pub fn removed(&self) -> usize {
        self.count(|d| matches!(d, Difference::Removed(_)))
    }

    pub fn changed(&self) -> usize {
        self.count(|d| matches!(d, Difference::Changed { .. }))
    }
}

/// What a replay found.
#[derive(Debug, Clone, Default)]
pub struct ReplayReport {
    pub from: i64,
    pub to: i64,
    /// Rows read from the archive, per table.
    pub rows: BTreeMap<&'static str, usize>,
    pub rules: Vec<RuleReplay>,
    /// Rules that did not load, `file:line: message`.
    pub errors: Vec<String>,
}

impl ReplayReport {
    /// Whether the replay decided anything the record does not show, or
    /// the other way round.
    pub fn differs(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.added() + r.removed() + r.changed() > 0)
    }
}

/// Replays `rules_dir`'s rules over the telemetry archived in `storage`
/// between `from` and `to` (UTC nanoseconds).
pub async fn replay(
    storage: &Storage,
    rules_dir: &Path,
    from: i64,
    to: i64,
) -> Result<ReplayReport, String> {
    if to <= from {
        return Err("--to must be after --from".into());
    }
    let store = Arc::new(Store::new(StoreOptions {
        memory_budget: MEMORY_BUDGET,
        retention: Duration::from_secs(100 * 365 * 24 * 3600),
        partition: Duration::from_secs(60),
        max_age: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        flush_bytes: u64::MAX,
    }));
    let metrics = Arc::new(Metrics::new());
    let engine = RuleEngine::new(rules_dir.to_owned(), &store, metrics.clone())
        .map_err(|e| format!("cannot set up the rule engine: {e}"))?;
    let reload = engine.reload().await;
    let mut report = ReplayReport {
        from,
        to,
        errors: reload.errors.clone(),
        ..Default::default()
    };
    let rules = engine.rules();
    if rules.is_empty() {
        return Err(format!("no rule loads from {}", rules_dir.display()));
    }
    let lookback = rules
        .values()
        .map(|r| nanos(r.rule.window + r.rule.lateness))
        .max()
        .unwrap_or(0);
    report.rows = read_archive(storage, &store, from - lookback, to).await?;

    // The replay's decisions go to a memory of its own, in memory: all of
    // them are kept, whatever their number.
    let clock = Arc::new(AtomicI64::new(from));
    let journal = Journal::start(Storage::in_memory(), "replay", Tail::default());
    let replay_storage = journal_storage(&journal);
    let actor = Arc::new(
        Actor::standalone(store.clone(), metrics, Clock::Virtual(clock.clone()))
            .map_err(|e| format!("cannot start the action threads: {e}"))?
            .dry_run_all()
            .with_journal(journal.clone()),
    );
    let mut events = engine.subscribe();
    let mut schedule = BTreeSet::new();
    for (name, loaded) in &rules {
        let every = nanos(loaded.rule.every).max(1);
        let mut t = from;
        while t <= to {
            schedule.insert((t, name.clone()));
            t += every;
        }
    }
    let mut alerts: BTreeMap<String, Vec<ReplayedAlert>> = BTreeMap::new();
    for (now, rule) in schedule {
        clock.store(now, Ordering::Release);
        engine.evaluate(&rule, now).await;
        let mut runs = Vec::new();
        while let Ok(event) = events.try_recv() {
            let e = &event.event;
            let list = alerts.entry(event.rule.name.clone()).or_default();
            match e.transition.to {
                AlertState::Firing => list.push(ReplayedAlert {
                    labels: e.labels.clone(),
                    fired_at: e.transition.at,
                    resolved_at: None,
                }),
                AlertState::Resolved => {
                    if let Some(a) = list
                        .iter_mut()
                        .rev()
                        .find(|a| a.labels == e.labels && a.resolved_at.is_none())
                    {
                        a.resolved_at = Some(e.transition.at);
                    }
                }
                _ => {}
            }
            runs.extend(actor.on_event(&event, now));
        }
        runs.extend(actor.tick(&engine, now));
        // Actions finish before the clock moves on, as if instantaneous.
        for run in runs {
            run.await
                .map_err(|e| format!("an action of rule {rule} panicked: {e}"))?;
        }
    }
    journal.flush().await;
    let replayed = load(&replay_storage)
        .await
        .map_err(|e| format!("cannot read the replay's decisions: {e}"))?;
    let replayed = audit::decisions(&replayed, &Default::default());
    let recorded = load(storage)
        .await
        .map_err(|e| format!("cannot read the recorded decisions: {e}"))?;
    let recorded = audit::decisions(
        &recorded,
        &audit::LogFilter {
            rule: None,
            since: Some(from),
        },
    );
    for name in rules.keys() {
        let decisions: Vec<Decision> = replayed
            .iter()
            .filter(|s| &s.decision.rule == name)
            .map(|s| s.decision.clone())
            .collect();
        let recorded: Vec<Decision> = recorded
            .iter()
            .filter(|s| &s.decision.rule == name && s.decision.at < to)
            .map(|s| s.decision.clone())
            .collect();
        report.rules.push(RuleReplay {
            rule: name.clone(),
            alerts: alerts.remove(name).unwrap_or_default(),
            differences: compare(&recorded, &decisions),
            decisions,
            recorded,
        });
    }
    Ok(report)
}

/// The storage a journal writes to (the in-memory one made for it).
fn journal_storage(journal: &Journal) -> Storage {
    journal.storage().clone()
}

/// Reads every archived table's rows in `[from, to)` into `store`.
async fn read_archive(
    storage: &Storage,
    store: &Store,
    from: i64,
    to: i64,
) -> Result<BTreeMap<&'static str, usize>, String> {
    let ctx = archive_context(storage).await?;
    let mut rows = BTreeMap::new();
    for signal in Signal::ALL {
        let schema = signal.schema();
        let df = archived(&ctx, signal, from, to).await?;
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let batches = df
            .select_columns(&names)
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| format!("cannot read the archived {}: {e}", signal.table()))?;
        let mut n = 0;
        for batch in batches {
            n += batch.num_rows();
            let batch = batch
                .with_schema(schema.clone())
                .map_err(|e| format!("archived {} do not match: {e}", signal.table()))?;
            store.insert(signal, batch, to).map_err(|e| {
                format!("the period holds more telemetry than a replay keeps in memory ({MEMORY_BUDGET} bytes): replay a shorter period ({e})")
            })?;
        }
        rows.insert(signal.table(), n);
    }
    Ok(rows)
}

/// A signal's archived rows in `[from, to)` (event time), without the
/// engine's own rationale spans, from a context the archive is registered
/// in.
pub(crate) async fn archived(
    ctx: &SessionContext,
    signal: Signal,
    from: i64,
    to: i64,
) -> Result<datafusion::dataframe::DataFrame, String> {
    let time = |t: i64| {
        lit(ScalarValue::TimestampNanosecond(
            Some(t),
            Some("UTC".into()),
        ))
    };
    let mut df = ctx
        .table(signal.table())
        .await
        .map_err(|e| e.to_string())?
        .filter(
            col(signal.time_column())
                .gt_eq(time(from))
                .and(col(signal.time_column()).lt(time(to))),
        )
        .map_err(|e| e.to_string())?;
    if signal == Signal::Traces {
        df = df
            // Spans without a service name stay (`<>` would drop them).
            .filter(datafusion::logical_expr::binary_expr(
                col("service_name"),
                datafusion::logical_expr::Operator::IsDistinctFrom,
                lit("homeostat"),
            ))
            .map_err(|e| e.to_string())?;
    }
    Ok(df)
}

/// A context in which the archive in `storage` is registered as tables.
pub(crate) async fn archive_context(storage: &Storage) -> Result<SessionContext, String> {
    let archive = Archive::new(storage.clone(), "replay", ArchiveConfig::default())
        .map_err(|e| e.to_string())?;
    let ctx = SessionContext::new();
    archive
        .register(&ctx)
        .await
        .map_err(|e| format!("cannot read the archive: {e}"))?;
    Ok(ctx)
}

/// Pairs recorded and replayed decisions per instance and trigger, in time
/// order.
fn compare(recorded: &[Decision], replayed: &[Decision]) -> Vec<Difference> {
    type Key = (String, &'static str);
    let group = |ds: &[Decision]| {
        let mut by: BTreeMap<Key, Vec<Decision>> = BTreeMap::new();
        for d in ds {
            by.entry((d.fingerprint.clone(), d.trigger.name()))
                .or_default()
                .push(d.clone());
        }
        by
    };
    let (mut old, mut new) = (group(recorded), group(replayed));
    let keys: BTreeSet<Key> = old.keys().chain(new.keys()).cloned().collect();
    let mut out = Vec::new();
    for key in keys {
        let a = old.remove(&key).unwrap_or_default();
        let b = new.remove(&key).unwrap_or_default();
        let mut a = a.into_iter();
        let mut b = b.into_iter();
        loop {
            match (a.next(), b.next()) {
                (Some(r), Some(p)) => {
                    let choice =
                        |d: &Decision| d.reasoning.decision.as_ref().map(|c| c.option.clone());
                    let same = verdict(&r) == verdict(&p) && choice(&r) == choice(&p);
                    let (recorded, replayed) = (Box::new(r), Box::new(p));
                    out.push(if same {
                        Difference::Same { recorded, replayed }
                    } else {
                        Difference::Changed { recorded, replayed }
                    });
                }
                (Some(r), None) => out.push(Difference::Removed(Box::new(r))),
                (None, Some(p)) => out.push(Difference::Added(Box::new(p))),
                (None, None) => break,
            }
        }
    }
    out.sort_by_key(|d| match d {
        Difference::Same { replayed, .. } | Difference::Changed { replayed, .. } => replayed.at,
        Difference::Added(d) | Difference::Removed(d) => d.at,
    });
    out
}

/// The verdict as a replay can reproduce it: approvals are not asked again
/// (a replay has nobody to ask), so waiting and answered both count as
/// allowed.
fn verdict(d: &Decision) -> &'static str {
    use crate::decisions::Verdict::*;
    match d.policy.verdict {
        // Another replica acted: the rule and policies did decide to.
        Allowed | AwaitingApproval | Approved | Denied | Expired | ClaimedByOther => "allowed",
        Suppressed => "suppressed",
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The report as people read it.
pub fn render(report: &ReplayReport) -> String {
    use std::fmt::Write as _;
    let t = crate::act::policy::rfc3339;
    let mut out = String::new();
    let rows: Vec<String> = report
        .rows
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    let _ = writeln!(
        out,
        "replay {} .. {}: archived telemetry read: {}",
        t(report.from),
        t(report.to),
        rows.join(", ")
    );
    for e in &report.errors {
        let _ = writeln!(out, "rule not loaded: {e}");
    }
    let describe = |d: &Decision| {
        let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let choice = d
            .reasoning
            .decision
            .as_ref()
            .map_or(String::new(), |c| format!(", chose {}", c.option));
        format!(
            "{} {{{}}} {} {}{choice} ({})",
            t(d.at),
            labels.join(","),
            d.trigger.name(),
            verdict(d),
            d.policy.reason
        )
    };
    for r in &report.rules {
        let _ = writeln!(
            out,
            "rule {}: {} alert{} fired, {} decision{} replayed, {} recorded: {} same, {} added, {} removed, {} changed",
            r.rule,
            r.alerts.len(),
            if r.alerts.len() == 1 { "" } else { "s" },
            r.decisions.len(),
            if r.decisions.len() == 1 { "" } else { "s" },
            r.recorded.len(),
            r.same(),
            r.added(),
            r.removed(),
            r.changed()
        );
        for d in &r.differences {
            match d {
                Difference::Same { .. } => {}
                Difference::Added(p) => {
                    let _ = writeln!(out, "  + added    {}", describe(p));
                }
                Difference::Removed(r) => {
                    let _ = writeln!(out, "  - removed  {}", describe(r));
                }
                Difference::Changed { recorded, replayed } => {
                    let _ = writeln!(out, "  ~ changed  recorded {}", describe(recorded));
                    let _ = writeln!(out, "             replayed {}", describe(replayed));
                }
            }
        }
    }
    out
}
