//! The rule engine: the loaded rules, their instances, evaluation, reload
//! and the live schedule.
//!
//! Evaluation takes its time as an argument: the live scheduler passes the
//! wall clock, `homeostat test` (and replay) a virtual one, and the same code
//! runs in all three. Each rule is evaluated by its own task, so a slow or
//! failing rule delays no other; an error is recorded and the rule is tried
//! again at its next tick.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::compile::{CompiledRule, RulePlanner};
use super::eval::Answer;
use super::file::{RuleError, discover};
use super::state::{Event, RuleState, Timing};
use crate::ingest::now_nanos;
use crate::internal_events::{Metrics, RuleEvaluated, RulesReloaded};
use crate::store::Store;

/// Evaluations remembered per rule, for the API and the dashboard.
pub const EVALUATIONS_KEPT: usize = 60;
/// Transition events buffered for subscribers that lag behind.
pub const EVENT_BUFFER: usize = 4096;

/// The outcome of one evaluation, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Evaluation time (UTC nanoseconds).
    pub at: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub duration_seconds: f64,
    pub rows: usize,
    pub error: Option<String>,
    /// Instances that did not match but kept their state because the
    /// window includes a time the process was down (see
    /// [`RuleEngine::set_outage`]).
    pub held: usize,
}

/// What an evaluation changed, for whoever subscribes (actions, tests).
#[derive(Debug, Clone)]
pub struct RuleEvent {
    pub rule: Arc<CompiledRule>,
    pub event: Event,
    /// The rows of the evaluation that caused it.
    pub evidence: Arc<arrow::array::RecordBatch>,
}

/// A rule's changing part: kept across reloads of the same rule name.
#[derive(Debug, Default)]
pub struct Runtime {
    pub state: RuleState,
    pub evaluations: VecDeque<Evaluation>,
}

#[derive(Debug, Clone)]
pub struct LoadedRule {
    pub rule: Arc<CompiledRule>,
    pub runtime: Arc<Mutex<Runtime>>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// Problems, each `file:line: message`; the previous version of a broken
    /// rule keeps running.
    pub errors: Vec<String>,
}

pub struct RuleEngine {
    dir: PathBuf,
    planner: RulePlanner,
    rules: RwLock<BTreeMap<String, LoadedRule>>,
    errors: RwLock<Vec<RuleError>>,
    events: broadcast::Sender<RuleEvent>,
    evaluations: broadcast::Sender<(String, Evaluation)>,
    reload_requested: Notify,
    reloaded: tokio::sync::watch::Sender<u64>,
    reload_lock: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// `[down, up)`: the last sign of life of the previous process and the
    /// moment this one took telemetry again.
    outage: RwLock<Option<(i64, i64)>>,
}

impl RuleEngine {
    pub fn new(
        dir: PathBuf,
        store: &Store,
        metrics: Arc<Metrics>,
    ) -> Result<Self, datafusion::error::DataFusionError> {
        Self::with_action_limits(dir, store, metrics, Default::default())
    }

    /// A rule engine whose rules' actions are bounded by `limits`.
    pub fn with_action_limits(
        dir: PathBuf,
        store: &Store,
        metrics: Arc<Metrics>,
        limits: crate::act::config::ActionLimits,
    ) -> Result<Self, datafusion::error::DataFusionError> {
        Self::with_planner(
            dir,
            RulePlanner::new(store)?.with_action_limits(limits),
            metrics,
        )
    }

    /// A rule engine planning and evaluating rules with `planner`.
    pub fn with_planner(
        dir: PathBuf,
        planner: RulePlanner,
        metrics: Arc<Metrics>,
    ) -> Result<Self, datafusion::error::DataFusionError> {
        Ok(Self {
            dir,
            planner,
            rules: RwLock::new(BTreeMap::new()),
            errors: RwLock::new(Vec::new()),
            events: broadcast::channel(EVENT_BUFFER).0,
            evaluations: broadcast::channel(EVENT_BUFFER).0,
            reload_requested: Notify::new(),
            reloaded: tokio::sync::watch::channel(0).0,
            reload_lock: tokio::sync::Mutex::new(()),
            metrics,
            outage: RwLock::new(None),
        })
    }

    /// After a restore: instances firing when the previous process went
    /// down at `down` were last seen no earlier than the last evaluation
    /// before it (their transitions only say when they started firing), so
    /// that `keep_firing_for` counts from there.
    pub fn seen_until(&self, down: i64) {
        for loaded in self.rules.read().values() {
            let mut runtime = loaded.runtime.lock();
            for instance in runtime.state.instances.values_mut() {
                if instance.state == super::AlertState::Firing {
                    instance.last_seen = instance.last_seen.max(down);
                }
            }
        }
    }

    /// Says this process was down from `down` (the previous one's last
    /// sign of life) to `up` (now taking telemetry again), UTC nanoseconds.
    /// Telemetry of that time may never come: until a rule's window is past
    /// it, instances that do not match keep their state, so that a restart
    /// never resolves an alert, settles a verification or starts a new
    /// episode by itself.
    pub fn set_outage(&self, down: i64, up: i64) {
        if down < up {
            *self.outage.write() = Some((down, up));
        }
    }

    /// Transitions as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<RuleEvent> {
        self.events.subscribe()
    }

    /// Every evaluation as it completes, with its rule's name.
    pub fn subscribe_evaluations(&self) -> broadcast::Receiver<(String, Evaluation)> {
        self.evaluations.subscribe()
    }

    /// Counts reloads: changes after every completed reload.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// The loaded rules, by name.
    pub fn rules(&self) -> BTreeMap<String, LoadedRule> {
        self.rules.read().clone()
    }

    pub fn rule(&self, name: &str) -> Option<LoadedRule> {
        self.rules.read().get(name).cloned()
    }

    /// Problems found by the last load.
    pub fn errors(&self) -> Vec<RuleError> {
        self.errors.read().clone()
    }

    /// Asks the reload loop to reload (file change, SIGHUP).
    pub fn request_reload(&self) {
        self.reload_requested.notify_one();
    }

    /// Loads every rule file again. Rules whose name is unchanged keep their
    /// instances; a broken file is reported and its previous version keeps
    /// running; a deleted file's rules stop.
    pub async fn reload(&self) -> ReloadReport {
        let _one_at_a_time = self.reload_lock.lock().await;
        let started = Instant::now();
        let mut errors = Vec::new();
        let files = if self.dir.exists() {
            discover(&self.dir).unwrap_or_else(|e| {
                errors.push(e);
                Vec::new()
            })
        } else {
            Vec::new()
        };
        let old = self.rules.read().clone();
        let mut new: BTreeMap<String, LoadedRule> = BTreeMap::new();
        let mut report = ReloadReport::default();
        for path in files {
            let compiled = match std::fs::read_to_string(&path) {
                Ok(text) => self.planner.compile(&path, &text).await,
                Err(e) => Err(vec![RuleError::new(
                    &path,
                    1,
                    format!("cannot read rule file: {e}"),
                )]),
            };
            match compiled {
                Ok(rule) => {
                    if let Some(other) = new.get(&rule.name) {
                        errors.push(RuleError::new(
                            &path,
                            1,
                            format!(
                                "rule name {:?} is already used by {}",
                                rule.name,
                                other.rule.path.display()
                            ),
                        ));
                        continue;
                    }
                    let runtime = match old.get(&rule.name) {
                        Some(previous) => {
                            if previous.rule.source_hash != rule.source_hash {
                                report.changed.push(rule.name.clone());
                            }
                            previous.runtime.clone()
                        }
                        None => Arc::default(),
                    };
                    report.loaded.push(rule.name.clone());
                    new.insert(
                        rule.name.clone(),
                        LoadedRule {
                            rule: Arc::new(rule),
                            runtime,
                        },
                    );
                }
                Err(problems) => {
                    errors.extend(problems);
                    // The previous version of this file's rule keeps running.
                    for previous in old.values().filter(|r| r.rule.path == path) {
                        new.entry(previous.rule.name.clone())
                            .or_insert_with(|| previous.clone());
                    }
                }
            }
        }
        report.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        report.errors = errors.iter().map(ToString::to_string).collect();
        *self.rules.write() = new;
        *self.errors.write() = errors;
        RulesReloaded {
            report: &report,
            elapsed: started.elapsed(),
        }
        .emit(&self.metrics);
        self.reloaded.send_modify(|n| *n += 1);
        report
    }

    /// Evaluates one rule at `now` (UTC nanoseconds) and applies the answer
    /// to its instances. `None` when no such rule is loaded.
    pub async fn evaluate(&self, name: &str, now: i64) -> Option<(Evaluation, Vec<Event>)> {
        let loaded = self.rule(name)?;
        let rule = &loaded.rule;
        let started = Instant::now();
        let answer = rule
            .evaluate_within(self.planner.state(), now, self.planner.memory_limit())
            .await;
        let elapsed = started.elapsed();
        let window = rule.window_at(now);
        let mut evaluation = Evaluation {
            at: now,
            window_start: window.start.unwrap_or(i64::MIN),
            window_end: window.end.unwrap_or(i64::MAX),
            duration_seconds: elapsed.as_secs_f64(),
            rows: 0,
            error: None,
            held: 0,
        };
        let mut events = Vec::new();
        let mut evidence = None;
        match answer {
            Ok(Answer { matches, batch, .. }) => {
                evaluation.rows = batch.num_rows();
                // The window reaches back to before the restart.
                let held = self
                    .outage
                    .read()
                    .is_some_and(|(down, up)| window.overlaps(down, up - 1));
                let timing = Timing {
                    for_: rule.for_,
                    keep_firing_for: rule.keep_firing_for,
                    held,
                };
                let (changed, held) = loaded
                    .runtime
                    .lock()
                    .state
                    .apply_counting(timing, now, matches);
                events = changed;
                evaluation.held = held;
                evidence = Some(Arc::new(batch));
            }
            Err(e) => evaluation.error = Some(e.to_string()),
        }
        {
            let mut runtime = loaded.runtime.lock();
            if runtime.evaluations.len() == EVALUATIONS_KEPT {
                runtime.evaluations.pop_front();
            }
            runtime.evaluations.push_back(evaluation.clone());
        }
        RuleEvaluated {
            rule: &rule.name,
            evaluation: &evaluation,
            transitions: events.len(),
        }
        .emit(&self.metrics);
        let _ = self
            .evaluations
            .send((rule.name.clone(), evaluation.clone()));
        if let Some(evidence) = evidence {
            for event in &events {
                // No subscriber is not an error: the API reads the state itself.
                let _ = self.events.send(RuleEvent {
                    rule: rule.clone(),
                    event: event.clone(),
                    evidence: evidence.clone(),
                });
            }
        }
        Some((evaluation, events))
    }

    /// Evaluates every rule on its own schedule, on the wall clock, until
    /// `shutdown`: one task per rule, started and stopped as reloads add and
    /// remove rules.
    ///
    /// Evaluations run on `executor`, a runtime of their own, so that heavy
    /// queries never hold up the OTLP receivers and the API.
    pub async fn run(
        self: Arc<Self>,
        executor: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) {
        let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut reloads = self.reloads();
        loop {
            let names: Vec<String> = self.rules.read().keys().cloned().collect();
            tasks.retain(|name, task| {
                let keep = names.contains(name);
                if !keep {
                    task.abort();
                }
                keep
            });
            for name in names {
                tasks.entry(name.clone()).or_insert_with(|| {
                    executor.spawn(self.clone().schedule(name, shutdown.clone()))
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = reloads.changed() => if changed.is_err() { break },
            }
        }
        for (_, task) in tasks {
            task.abort();
        }
    }

    /// One rule's schedule: evaluations at wall-clock multiples of `every`,
    /// skipping ticks missed while an evaluation ran long.
    async fn schedule(self: Arc<Self>, name: String, shutdown: CancellationToken) {
        loop {
            let Some(every) = self.rule(&name).map(|r| r.rule.every) else {
                return;
            };
            let every = i64::try_from(every.as_nanos()).unwrap_or(i64::MAX).max(1);
            let now = now_nanos();
            let next = (now / every + 1) * every;
            let wait = Duration::from_nanos((next - now).max(0) as u64);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if self.evaluate(&name, now_nanos().max(next)).await.is_none() {
                return;
            }
        }
    }

    /// Reloads whenever asked (file changes, SIGHUP), coalescing bursts of
    /// requests such as an editor's several writes.
    pub async fn reload_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.reload_requested.notified() => {}
            }
            // Let a burst of file events settle before reading the files.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let report = self.reload().await;
            for e in &report.errors {
                tracing::warn!(error = %e, "rule not (re)loaded; its previous version, if any, keeps running");
            }
        }
    }

    /// Watches the rules folder and requests a reload on every change. The
    /// returned watcher must be kept alive.
    pub fn watch(self: &Arc<Self>) -> Result<notify::RecommendedWatcher, notify::Error> {
        use notify::Watcher as _;
        let engine = Arc::downgrade(self);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_)));
                if let (true, Some(engine)) = (relevant, engine.upgrade()) {
                    engine.request_reload();
                }
            })?;
        watcher.watch(&self.dir, notify::RecursiveMode::Recursive)?;
        Ok(watcher)
    }
}

/// A multi-threaded runtime dedicated to rule evaluation. Dropping it shuts
/// it down without blocking, so it may be dropped from async code.
pub struct Executor {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Executor {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        Self::build(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .thread_name("homeostat-rules"),
        )
    }

    /// A runtime of one's own from `builder` (timers and I/O enabled).
    pub fn build(builder: &mut tokio::runtime::Builder) -> std::io::Result<Self> {
        Ok(Self {
            runtime: Some(builder.enable_all().build()?),
        })
    }

    pub fn handle(&self) -> tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("present until dropped")
            .handle()
            .clone()
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
