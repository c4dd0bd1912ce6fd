//! `homeostat test`: rule unit tests on virtual time, in the spirit of
//! `promtool test rules`.
//!
//! A test file (`*.test.toml`, beside the rules) holds one or more tests.
//! Each test builds telemetry at times relative to a fixed origin — compact
//! spans, logs and metric series, or OTLP/JSON fixture files — then runs the
//! rules on a virtual clock, every rule at multiples of its own `every`, and
//! compares the alert instances with the expected ones at given times. The
//! rules run through the same compile and evaluation code as `homeostat run`.
//!
//! Actions run too, always in dry-run (host calls recorded, not performed),
//! through the same policies and sandbox; `[[test.actions]]` lists the
//! decisions expected of a rule, in order. Their rationale spans land in the
//! test's `spans` table, so rules that watch the engine itself can be tested.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::sync::atomic::AtomicI64;

use super::engine::RuleEngine;
use super::file::{RuleError, TEST_SUFFIX};
use super::state::AlertState;
use crate::act::actor::{Actor, Clock};
use crate::decisions::DecisionLog;
use crate::ingest::ExportRequest;
use crate::internal_events::Metrics;
use crate::store::{Store, StoreOptions};

/// Virtual time zero of every test: 2024-01-01T00:00:00Z.
pub const ORIGIN: i64 = 1_704_067_200_000_000_000;

/// A test file: `[[test]]` tables.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Present in captured datasets (`homeostat capture`): what was
    /// captured, and the content hash that keeps it unedited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<super::dataset::DatasetInfo>,
    pub test: Vec<TestCase>,
}

/// One test.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    /// The rules evaluated; default: every rule of the folder.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    /// How long the virtual clock runs, from time zero.
    #[serde(with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub duration: Duration,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spans: Vec<SpanSeries>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogSeries>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<MetricSeries>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub otlp: Vec<OtlpFixture>,
    /// Telemetry rows in Parquet files (captured datasets), their times on
    /// the test's clock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parquet: Vec<super::dataset::ParquetFixture>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<Expectation>,
    /// The decisions expected of rules with actions, in order, over the
    /// whole test; a rule listed here must make exactly these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ExpectedAction>,
}

/// A decision expected of a rule's action. Every field but `rule` is
/// optional and checked only when given.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAction {
    pub rule: String,
    /// When it was decided (an evaluation time).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_duration::option"
    )]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub at: Option<Duration>,
    /// How far from `at` the decision may be (captured datasets: the rule's
    /// `every`); default: exactly at `at`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_duration::option"
    )]
    #[schemars(with = "Option<crate::rules::schema::HumanDuration>")]
    pub within: Option<Duration>,
    /// The instance's labels (those given must match).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// firing, resolved, repeat, ineffective.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<crate::act::config::Trigger>,
    /// allowed, suppressed, awaiting_approval, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::decisions::Verdict>,
    /// The option the script chose with `decide`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice: Option<String>,
    /// succeeded, skipped, failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::decisions::RunStatus>,
    /// The host calls, in order: each `function` or `function target`
    /// (`"http::post POST https://hooks/x"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<Vec<String>>,
}

fn one() -> u32 {
    1
}

fn second() -> Duration {
    Duration::from_secs(1)
}

/// `count` spans, one every `every`, the first at `at`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanSeries {
    #[serde(default, with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub at: Duration,
    #[serde(default = "second", with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub every: Duration,
    #[serde(default = "one")]
    pub count: u32,
    pub service: String,
    pub name: String,
    /// `SERVER` (default), `CLIENT`, `INTERNAL`, `PRODUCER`, `CONSUMER`.
    #[serde(default)]
    pub kind: Option<String>,
    /// `UNSET` (default), `OK` or `ERROR`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default = "ten_ms", with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub duration: Duration,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, crate::rules::schema::AnyValue>")]
    pub attributes: BTreeMap<String, toml::Value>,
}

fn ten_ms() -> Duration {
    Duration::from_millis(10)
}

/// `count` log records, one every `every`, the first at `at`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogSeries {
    #[serde(default, with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub at: Duration,
    #[serde(default = "second", with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub every: Duration,
    #[serde(default = "one")]
    pub count: u32,
    pub service: String,
    /// `TRACE`, `DEBUG`, `INFO` (default), `WARN`, `ERROR` or `FATAL`.
    #[serde(default)]
    pub severity: Option<String>,
    pub body: String,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, crate::rules::schema::AnyValue>")]
    pub attributes: BTreeMap<String, toml::Value>,
}

/// A metric series in promtool's expanding notation: `values = "1 2 3+2x3 _ 7x2"`
/// gives 1 2 3 5 7 9 (gap) 7 7 7, one value every `every` from `at`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSeries {
    pub metric: String,
    pub service: String,
    /// `gauge` (default) or `counter` (a cumulative monotonic sum).
    #[serde(default)]
    pub r#type: Option<String>,
    #[serde(default, with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub at: Duration,
    #[serde(default = "fifteen_s", with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub every: Duration,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, crate::rules::schema::AnyValue>")]
    pub attributes: BTreeMap<String, toml::Value>,
    pub values: String,
}

fn fifteen_s() -> Duration {
    Duration::from_secs(15)
}

/// An OTLP/JSON export request (traces, metrics or logs) in a file relative
/// to the test file. Its times are offsets from `at`, not absolute.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpFixture {
    #[serde(default, with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub at: Duration,
    pub file: PathBuf,
}

/// The alerts of a rule expected at a time.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    #[serde(with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub at: Duration,
    pub rule: String,
    /// Exactly the rule's pending and firing instances at `at` (after every
    /// evaluation at or before it); resolved ones are checked when listed.
    pub alerts: Vec<ExpectedAlert>,
}

#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub state: AlertState,
}

/// The result of one test.
#[derive(Debug)]
pub struct Outcome {
    pub file: PathBuf,
    pub name: String,
    pub elapsed: Duration,
    /// Empty when the test passed.
    pub failures: Vec<String>,
    /// Said beside the result: a dataset's comparison with its record.
    pub note: Option<String>,
    /// Not run (a dataset version that a newer one supersedes).
    pub skipped: bool,
}

/// Runs every test file under `dir` against the rules under `dir`.
pub async fn run_dir(dir: &Path) -> Result<Vec<Outcome>, Vec<RuleError>> {
    let mut files = Vec::new();
    collect_tests(dir, &mut files).map_err(|e| vec![e])?;
    files.sort();
    let mut outcomes = Vec::new();
    for file in files {
        outcomes.extend(run_file(dir, &file).await?);
    }
    Ok(outcomes)
}

fn collect_tests(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RuleError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| RuleError::new(dir, 1, format!("cannot read folder: {e}")))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_tests(&path, out)?;
        } else if path.to_str().is_some_and(|p| p.ends_with(TEST_SUFFIX)) {
            out.push(path);
        }
    }
    Ok(())
}

/// Runs the tests of one file against the rules under `rules_dir`.
pub async fn run_file(rules_dir: &Path, file: &Path) -> Result<Vec<Outcome>, Vec<RuleError>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![RuleError::new(
            file,
            1,
            format!("cannot read test file: {e}"),
        )]
    })?;
    let tests: TestFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map_or(1, |s| crate::config::line_column(&text, s.start).0);
        vec![RuleError::new(file, line, e.message().trim_end())]
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let outcome = |case: &TestCase, failures: Vec<String>, note: Option<String>| Outcome {
        file: file.to_owned(),
        name: case.name.clone(),
        elapsed: Duration::ZERO,
        failures,
        note,
        skipped: false,
    };
    let mut outcomes = Vec::new();
    if let Some(info) = &tests.dataset {
        // Only the newest version of a dataset runs.
        let root = base.parent().unwrap_or(base);
        if let Some((&newest, _)) = super::dataset::versions(root).last_key_value()
            && newest > info.version
        {
            for case in &tests.test {
                let mut o = outcome(
                    case,
                    Vec::new(),
                    Some(format!(
                        "dataset {} v{} is superseded by v{newest}",
                        info.name, info.version
                    )),
                );
                o.skipped = true;
                outcomes.push(o);
            }
            return Ok(outcomes);
        }
        // Never edited in place: the content must be what was captured.
        let actual = super::dataset::fixture_files(base, &tests.test)
            .map(|files| super::dataset::content_hash(info, &tests.test, &files));
        let problem = match actual {
            Ok(hash) if hash == info.content_hash => None,
            Ok(hash) => Some(format!(
                "dataset {} v{} was changed after it was captured: its content hashes to {hash}, its manifest says {}; datasets are never edited, capture a new version instead",
                info.name, info.version, info.content_hash
            )),
            Err(e) => Some(e),
        };
        if let Some(problem) = problem {
            for case in &tests.test {
                outcomes.push(outcome(case, vec![problem.clone()], None));
            }
            return Ok(outcomes);
        }
    }
    for case in &tests.test {
        let started = Instant::now();
        let (failures, note) = match run_case(rules_dir, base, case, tests.dataset.is_some()).await
        {
            Ok(f) => f,
            Err(e) => (vec![e], None),
        };
        let mut o = outcome(case, failures, note);
        o.elapsed = started.elapsed();
        outcomes.push(o);
    }
    Ok(outcomes)
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Runs one test. A dataset's decisions are compared with its record as
/// still happening, no longer happening or new, and the counts are the note.
async fn run_case(
    rules_dir: &Path,
    base: &Path,
    case: &TestCase,
    dataset: bool,
) -> Result<(Vec<String>, Option<String>), String> {
    let store = Store::new(StoreOptions {
        memory_budget: u64::MAX,
        retention: Duration::from_secs(365 * 24 * 3600),
        partition: Duration::from_secs(60),
        max_age: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        flush_bytes: u64::MAX,
    });
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::new());
    let engine = RuleEngine::new(rules_dir.to_owned(), &store, metrics.clone())
        .map_err(|e| format!("cannot set up the rule engine: {e}"))?;
    let clock = Arc::new(AtomicI64::new(ORIGIN));
    let actor = Arc::new(
        Actor::standalone(store.clone(), metrics, Clock::Virtual(clock.clone()))
            .map_err(|e| format!("cannot start the action threads: {e}"))?
            .dry_run_all(),
    );
    let mut events = engine.subscribe();
    let report = engine.reload().await;
    if !report.errors.is_empty() {
        return Err(format!(
            "the rules do not load:\n  {}",
            report.errors.join("\n  ")
        ));
    }
    let rules: Vec<String> = if case.rules.is_empty() {
        report.loaded.clone()
    } else {
        case.rules.clone()
    };
    for r in &rules {
        if engine.rule(r).is_none() {
            return Err(format!("no rule named {r:?} under {}", rules_dir.display()));
        }
    }

    let seed = case.name.as_str();
    for s in &case.spans {
        insert(&store, &spans(seed, s)?)?;
    }
    for l in &case.logs {
        insert(&store, &logs(l)?)?;
    }
    for m in &case.series {
        insert(&store, &series(m)?)?;
    }
    for f in &case.otlp {
        load_fixture(&store, &base.join(&f.file), ORIGIN + nanos(f.at))?;
    }
    for p in &case.parquet {
        super::dataset::load_parquet(&store, p, base)?;
    }

    // Every rule's evaluation times, merged in time order.
    let end = nanos(case.duration);
    let mut schedule = BTreeSet::new();
    for r in &rules {
        let every = nanos(engine.rule(r).expect("checked above").rule.every).max(1);
        let mut t = 0;
        while t <= end {
            schedule.insert((t, r.clone()));
            t += every;
        }
    }
    let mut expectations: Vec<&Expectation> = case.expect.iter().collect();
    expectations.sort_by_key(|e| e.at);

    let mut failures = Vec::new();
    let mut pending = schedule.into_iter().peekable();
    let mut step = async |t: i64, rule: &str, failures: &mut Vec<String>| {
        let now = ORIGIN + t;
        clock.store(now, std::sync::atomic::Ordering::Release);
        let (evaluation, _) = engine
            .evaluate(rule, now)
            .await
            .expect("the rule is loaded");
        if let Some(error) = evaluation.error {
            failures.push(format!(
                "at {}: rule {rule} failed to evaluate: {error}",
                humantime::format_duration(Duration::from_nanos(t as u64))
            ));
        }
        // Actions finish before the clock moves on, as if instantaneous.
        let mut runs = Vec::new();
        while let Ok(event) = events.try_recv() {
            runs.extend(actor.on_event(&event, now));
        }
        runs.extend(actor.tick(&engine, now));
        for run in runs {
            if let Err(e) = run.await {
                failures.push(format!("an action of rule {rule} panicked: {e}"));
            }
        }
    };
    for expected in expectations {
        let at = nanos(expected.at);
        while let Some((t, rule)) = pending.next_if(|(t, _)| *t <= at) {
            step(t, &rule, &mut failures).await;
        }
        let Some(loaded) = engine.rule(&expected.rule) else {
            failures.push(format!(
                "expectation names unknown rule {:?}",
                expected.rule
            ));
            continue;
        };
        let listed_resolved: BTreeSet<_> = expected
            .alerts
            .iter()
            .filter(|a| a.state == AlertState::Resolved)
            .map(|a| a.labels.clone())
            .collect();
        let mut got: Vec<ExpectedAlert> = loaded
            .runtime
            .lock()
            .state
            .instances
            .values()
            .filter(|i| match i.state {
                AlertState::Pending | AlertState::Firing => true,
                AlertState::Resolved => listed_resolved.contains(&i.labels),
                AlertState::Inactive => false,
            })
            .map(|i| ExpectedAlert {
                labels: i.labels.clone(),
                state: i.state,
            })
            .collect();
        got.sort();
        let mut want = expected.alerts.clone();
        want.sort();
        if got != want {
            failures.push(format!(
                "at {} rule {}:\n    expected: {}\n    got:      {}",
                humantime::format_duration(expected.at),
                expected.rule,
                show(&want),
                show(&got)
            ));
        }
    }
    for (t, rule) in pending {
        step(t, &rule, &mut failures).await;
    }
    if dataset {
        let note = check_dataset(&case.actions, &rules, actor.log(), &mut failures);
        return Ok((failures, Some(note)));
    }
    check_actions(&case.actions, actor.log(), &mut failures);
    Ok((failures, None))
}

/// Matches a dataset's recorded decisions with the test's, per rule in time
/// order: same instance (its labels), trigger, and time within `within`.
/// Each expected one still happens (possibly changed) or no longer does;
/// the test's unmatched ones are new. Returns the counts.
fn check_dataset(
    expected: &[ExpectedAction],
    rules: &[String],
    log: &DecisionLog,
    failures: &mut Vec<String>,
) -> String {
    let (mut still, mut gone, mut changed, mut new) = (0, 0, 0, 0);
    for rule in rules {
        let mut got = log.list(&crate::decisions::Filter {
            rule: Some(rule.clone()),
            limit: usize::MAX,
            ..Default::default()
        });
        got.reverse();
        let mut taken = vec![false; got.len()];
        for w in expected.iter().filter(|e| &e.rule == rule) {
            let at = w.at.map(|a| ORIGIN + nanos(a));
            let within = w.within.map_or(0, nanos);
            let found = got.iter().enumerate().find(|(i, d)| {
                !taken[*i]
                    && w.labels.iter().all(|(k, v)| d.labels.get(k) == Some(v))
                    && w.trigger.is_none_or(|t| t == d.trigger)
                    && at.is_none_or(|a| (d.at - a).abs() <= within)
            });
            match found {
                Some((i, d)) => {
                    taken[i] = true;
                    let wrong = differences(w, d);
                    if wrong.is_empty() {
                        still += 1;
                    } else {
                        changed += 1;
                        failures.push(format!(
                            "rule {rule}: a recorded decision happens differently: expected {}\n    got: {}",
                            wrong.join(", "),
                            describe(d)
                        ));
                    }
                }
                None => {
                    gone += 1;
                    failures.push(format!(
                        "rule {rule}: a recorded decision no longer happens: {}",
                        show_expected(w)
                    ));
                }
            }
        }
        for (i, d) in got.iter().enumerate() {
            if !taken[i] {
                new += 1;
                failures.push(format!("rule {rule}: a new decision: {}", describe(d)));
            }
        }
    }
    format!(
        "{still} recorded decisions still happen, {gone} no longer happen, {changed} changed, {new} new"
    )
}

/// What a decision does differently from an expected one: verdict, choice,
/// run status, host calls (time, instance and trigger are matched apart).
fn differences(w: &ExpectedAction, d: &crate::decisions::Decision) -> Vec<String> {
    let mut wrong = Vec::new();
    if w.verdict.is_some_and(|v| v != d.policy.verdict) {
        wrong.push(format!("verdict {:?}", w.verdict));
    }
    let choice = d.reasoning.decision.as_ref().map(|c| c.option.as_str());
    if w.choice.is_some() && w.choice.as_deref() != choice {
        wrong.push(format!("choice {:?}", w.choice));
    }
    if w.status.is_some() && w.status != d.run.as_ref().map(|r| r.status) {
        wrong.push(format!("status {:?}", w.status));
    }
    if let Some(calls) = &w.calls {
        let matches = calls.len() == d.host_calls.len()
            && calls
                .iter()
                .zip(&d.host_calls)
                .all(|(c, h)| *c == h.function || *c == format!("{} {}", h.function, h.target));
        if !matches {
            wrong.push(format!("calls {calls:?}"));
        }
    }
    wrong
}

/// One line about an expected decision, for failure messages.
fn show_expected(w: &ExpectedAction) -> String {
    let mut parts = Vec::new();
    if let Some(at) = w.at {
        let within = w
            .within
            .map(|d| format!(" (±{})", humantime::format_duration(d)))
            .unwrap_or_default();
        parts.push(format!("at {}{within}", humantime::format_duration(at)));
    }
    parts.push(format!("{:?}", w.labels));
    if let Some(t) = w.trigger {
        parts.push(t.name().to_owned());
    }
    if let Some(v) = w.verdict {
        parts.push(v.name().to_owned());
    }
    if let Some(c) = &w.choice {
        parts.push(format!("choice {c}"));
    }
    if let Some(s) = w.status {
        parts.push(format!("status {}", s.name()));
    }
    parts.join(" ")
}

/// Compares each listed rule's decisions, oldest first, with the expected
/// ones.
fn check_actions(expected: &[ExpectedAction], log: &DecisionLog, failures: &mut Vec<String>) {
    let rules: BTreeSet<&str> = expected.iter().map(|e| e.rule.as_str()).collect();
    for rule in rules {
        let mut got = log.list(&crate::decisions::Filter {
            rule: Some(rule.to_owned()),
            limit: usize::MAX,
            ..Default::default()
        });
        got.reverse();
        let want: Vec<&ExpectedAction> = expected.iter().filter(|e| e.rule == rule).collect();
        if got.len() != want.len() {
            failures.push(format!(
                "rule {rule}: expected {} decisions, got {}:\n    {}",
                want.len(),
                got.len(),
                got.iter().map(describe).collect::<Vec<_>>().join("\n    ")
            ));
            continue;
        }
        for (i, (w, d)) in want.iter().zip(&got).enumerate() {
            let mut wrong = Vec::new();
            if let Some(at) = w.at
                && d.at != ORIGIN + nanos(at)
            {
                wrong.push(format!("at {}", humantime::format_duration(at)));
            }
            if w.labels.iter().any(|(k, v)| d.labels.get(k) != Some(v)) {
                wrong.push(format!("labels {:?}", w.labels));
            }
            if w.trigger.is_some_and(|t| t != d.trigger) {
                wrong.push(format!("trigger {:?}", w.trigger));
            }
            wrong.extend(differences(w, d));
            if !wrong.is_empty() {
                failures.push(format!(
                    "rule {rule}, decision {}: expected {}\n    got: {}",
                    i + 1,
                    wrong.join(", "),
                    describe(d)
                ));
            }
        }
    }
}

/// One line about a decision, for failure messages.
fn describe(d: &crate::decisions::Decision) -> String {
    let at = Duration::from_nanos(u64::try_from(d.at - ORIGIN).unwrap_or(0));
    let calls: Vec<String> = d
        .host_calls
        .iter()
        .map(|c| format!("{} {}", c.function, c.target))
        .collect();
    format!(
        "at {} {:?} {} {}: {} -> {:?}, status {:?}, calls {:?}{}",
        humantime::format_duration(at),
        d.labels,
        d.trigger.name(),
        d.policy.verdict.name(),
        d.policy.reason,
        d.reasoning.decision.as_ref().map(|c| &c.option),
        d.run.as_ref().map(|r| r.status),
        calls,
        d.run
            .as_ref()
            .and_then(|r| r.error.as_ref())
            .map(|e| format!(", error {}: {}", e.kind, e.message))
            .unwrap_or_default(),
    )
}

fn show(alerts: &[ExpectedAlert]) -> String {
    if alerts.is_empty() {
        return "(no alerts)".into();
    }
    alerts
        .iter()
        .map(|a| {
            let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{{{}}} {}", labels.join(", "), a.state.name())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn insert<R: ExportRequest>(store: &Store, request: &R) -> Result<(), String> {
    let converted = request
        .convert()
        .map_err(|e| format!("cannot convert test data: {e}"))?;
    if converted.rejected.count > 0 {
        return Err(format!(
            "test data rejected: {}",
            converted.rejected.message()
        ));
    }
    store
        .insert(R::SIGNAL, converted.batch, ORIGIN)
        .map_err(|e| format!("cannot store test data: {e}"))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn attributes(map: &BTreeMap<String, toml::Value>) -> Vec<KeyValue> {
    map.iter()
        .map(|(k, v)| {
            let value = match v {
                toml::Value::String(s) => any_value::Value::StringValue(s.clone()),
                toml::Value::Integer(i) => any_value::Value::IntValue(*i),
                toml::Value::Float(f) => any_value::Value::DoubleValue(*f),
                toml::Value::Boolean(b) => any_value::Value::BoolValue(*b),
                other => any_value::Value::StringValue(other.to_string()),
            };
            kv(k, value)
        })
        .collect()
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv(
            "service.name",
            any_value::Value::StringValue(service.to_owned()),
        )],
        ..Default::default()
    })
}

/// Deterministic ids, so that a test's data is the same on every run.
fn id(seed: &str, n: u64, len: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(n.to_be_bytes());
    h.finalize()[..len].to_vec()
}

fn spans(seed: &str, s: &SpanSeries) -> Result<ExportTraceServiceRequest, String> {
    let kind = match s.kind.as_deref().unwrap_or("SERVER") {
        "INTERNAL" => 1,
        "SERVER" => 2,
        "CLIENT" => 3,
        "PRODUCER" => 4,
        "CONSUMER" => 5,
        other => return Err(format!("unknown span kind {other:?}")),
    };
    let code = match s.status.as_deref().unwrap_or("UNSET") {
        "UNSET" => 0,
        "OK" => 1,
        "ERROR" => 2,
        other => return Err(format!("unknown span status {other:?}")),
    };
    let seed = format!("{seed}/{}/{}/{}", s.service, s.name, nanos(s.at));
    let spans = (0..s.count as i64)
        .map(|i| {
            let start = ORIGIN + nanos(s.at) + i * nanos(s.every);
            Span {
                trace_id: id(&seed, i as u64, 16),
                span_id: id(&seed, i as u64 + (1 << 32), 8),
                name: s.name.clone(),
                kind,
                start_time_unix_nano: start as u64,
                end_time_unix_nano: (start + nanos(s.duration)) as u64,
                attributes: attributes(&s.attributes),
                status: Some(Status {
                    code,
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect();
    Ok(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(&s.service),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn logs(l: &LogSeries) -> Result<ExportLogsServiceRequest, String> {
    let severity = l.severity.as_deref().unwrap_or("INFO");
    let number = match severity {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" => 13,
        "ERROR" => 17,
        "FATAL" => 21,
        other => return Err(format!("unknown severity {other:?}")),
    };
    let records = (0..l.count as i64)
        .map(|i| {
            let t = ORIGIN + nanos(l.at) + i * nanos(l.every);
            LogRecord {
                time_unix_nano: t as u64,
                observed_time_unix_nano: t as u64,
                severity_number: number,
                severity_text: severity.to_owned(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(l.body.clone())),
                }),
                attributes: attributes(&l.attributes),
                ..Default::default()
            }
        })
        .collect();
    Ok(ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(&l.service),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

/// Expands promtool's series notation: `a`, `a+bxn` / `a-bxn` (n+1 values
/// stepping by b), `axn` (n+1 copies), `_` (no sample), `_xn` (n+1 gaps).
pub fn expand(values: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for token in values.split_whitespace() {
        let (head, times) = match token.split_once('x') {
            Some((h, n)) => (
                h,
                Some(
                    n.parse::<usize>()
                        .map_err(|_| format!("bad repeat in {token:?}"))?,
                ),
            ),
            None => (token, None),
        };
        if head == "_" {
            out.extend(std::iter::repeat_n(None, times.map_or(1, |n| n + 1)));
            continue;
        }
        // Split "a+b" / "a-b" at a sign that is not the leading one or an exponent's.
        let bytes = head.as_bytes();
        let split = (1..bytes.len()).find(|&i| {
            (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E')
        });
        let number = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| format!("bad number in {token:?}"))
        };
        let (start, step) = match split {
            Some(i) => (number(&head[..i])?, number(&head[i..])?),
            None => (number(head)?, 0.0),
        };
        if split.is_some() && times.is_none() {
            return Err(format!(
                "{token:?}: a step needs a repeat count, as in 1+2x5"
            ));
        }
        for k in 0..=times.unwrap_or(0) {
            out.push(Some(start + step * k as f64));
        }
    }
    Ok(out)
}

fn series(m: &MetricSeries) -> Result<ExportMetricsServiceRequest, String> {
    let values = expand(&m.values).map_err(|e| format!("series {}: {e}", m.metric))?;
    let points: Vec<NumberDataPoint> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let t = ORIGIN + nanos(m.at) + i as i64 * nanos(m.every);
            v.map(|v| NumberDataPoint {
                attributes: attributes(&m.attributes),
                start_time_unix_nano: ORIGIN as u64,
                time_unix_nano: t as u64,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            })
        })
        .collect();
    let data = match m.r#type.as_deref().unwrap_or("gauge") {
        "gauge" => Data::Gauge(Gauge {
            data_points: points,
        }),
        "counter" => Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: 2,
            is_monotonic: true,
        }),
        other => {
            return Err(format!(
                "series {}: unknown type {other:?} (gauge or counter)",
                m.metric
            ));
        }
    };
    Ok(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(&m.service),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: m.metric.clone(),
                    unit: m.unit.clone().unwrap_or_default(),
                    data: Some(data),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn load_fixture(store: &Store, path: &Path, offset: i64) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read fixture {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: invalid JSON: {e}", path.display()))?;
    let shift = |t: &mut u64| {
        if *t != 0 {
            *t = (*t as i64 + offset) as u64;
        }
    };
    let bad =
        |e: serde_json::Error| format!("{}: not an OTLP/JSON export request: {e}", path.display());
    if value.get("resourceSpans").is_some() {
        let mut r: ExportTraceServiceRequest = serde_json::from_value(value).map_err(bad)?;
        for span in r
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
        {
            shift(&mut span.start_time_unix_nano);
            shift(&mut span.end_time_unix_nano);
            span.events
                .iter_mut()
                .for_each(|e| shift(&mut e.time_unix_nano));
        }
        insert(store, &r)
    } else if value.get("resourceLogs").is_some() {
        let mut r: ExportLogsServiceRequest = serde_json::from_value(value).map_err(bad)?;
        for rec in r
            .resource_logs
            .iter_mut()
            .flat_map(|r| &mut r.scope_logs)
            .flat_map(|s| &mut s.log_records)
        {
            shift(&mut rec.time_unix_nano);
            shift(&mut rec.observed_time_unix_nano);
        }
        insert(store, &r)
    } else if value.get("resourceMetrics").is_some() {
        let mut r: ExportMetricsServiceRequest = serde_json::from_value(value).map_err(bad)?;
        for metric in r
            .resource_metrics
            .iter_mut()
            .flat_map(|r| &mut r.scope_metrics)
            .flat_map(|s| &mut s.metrics)
        {
            shift_metric(metric, &shift);
        }
        insert(store, &r)
    } else {
        Err(format!(
            "{}: expected resourceSpans, resourceMetrics or resourceLogs at the top",
            path.display()
        ))
    }
}

fn shift_metric(metric: &mut Metric, shift: &dyn Fn(&mut u64)) {
    // Every point type has the same two time fields under its own type.
    macro_rules! shift_points {
        ($points:expr) => {
            for p in $points.iter_mut() {
                shift(&mut p.start_time_unix_nano);
                shift(&mut p.time_unix_nano);
            }
        };
    }
    match &mut metric.data {
        Some(Data::Gauge(g)) => shift_points!(g.data_points),
        Some(Data::Sum(s)) => shift_points!(s.data_points),
        Some(Data::Histogram(h)) => shift_points!(h.data_points),
        Some(Data::ExponentialHistogram(h)) => shift_points!(h.data_points),
        Some(Data::Summary(s)) => shift_points!(s.data_points),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_notation_expands_like_promtool() {
        let v = expand("1 2+3x2 _ 4x1 -1-1x1 _x1 1e3").unwrap();
        assert_eq!(
            v,
            vec![
                Some(1.0),
                Some(2.0),
                Some(5.0),
                Some(8.0),
                None,
                Some(4.0),
                Some(4.0),
                Some(-1.0),
                Some(-2.0),
                None,
                None,
                Some(1000.0)
            ]
        );
        assert!(expand("1+2").is_err());
        assert!(expand("abc").is_err());
    }

    #[tokio::test]
    async fn otlp_fixtures_are_shifted_to_their_test_time() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("hot.toml"),
            "every = \"10s\"\nwindow = \"30s\"\nsql = \"SELECT service_name, max(value) AS v FROM metrics GROUP BY service_name HAVING max(value) > 0.9\"\n",
        )
        .unwrap();
        // Times inside the fixture are offsets: 5s and 15s after `at`.
        let fixture = r#"{"resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "cart"}}]},
            "scopeMetrics": [{"metrics": [{"name": "util", "gauge": {"dataPoints": [
                {"timeUnixNano": "5000000000", "asDouble": 0.95},
                {"timeUnixNano": "15000000000", "asDouble": 0.97}
            ]}}]}]}]}"#;
        std::fs::write(d.join("util.json"), fixture).unwrap();
        let test = r#"
[[test]]
name = "fixture"
duration = "3m"
[[test.otlp]]
at = "1m"
file = "util.json"
[[test.expect]]
at = "1m"
rule = "hot"
alerts = []
[[test.expect]]
at = "1m10s"
rule = "hot"
alerts = [{ labels = { service_name = "cart" }, state = "firing" }]
[[test.expect]]
at = "2m"
rule = "hot"
alerts = [{ labels = { service_name = "cart" }, state = "resolved" }]
"#;
        std::fs::write(d.join("hot.test.toml"), test).unwrap();
        let outcomes = run_dir(d).await.unwrap();
        assert_eq!(outcomes.len(), 1);
        assert!(
            outcomes[0].failures.is_empty(),
            "{:?}",
            outcomes[0].failures
        );
    }
}
