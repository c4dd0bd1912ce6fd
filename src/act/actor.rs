//! The actor: turns alert transitions into decisions and runs their actions.
//!
//! For each transition that an action is `on` (firing, resolved, and repeat
//! ticks while firing) it records a decision with what the rule saw, applies
//! the policies, waits for approval when one is required, runs the script
//! off the async runtime (retrying failures of the outside world), then
//! verifies the outcome: if the instance resolves within the expected time
//! the action was `effective`, else `ineffective` and `on_ineffective`, if
//! set, escalates. Every step updates the decision in the log and its
//! rationale spans are emitted as the steps end.
//!
//! Time is passed in (`now`): `homeostat run` passes the wall clock,
//! `homeostat test` a virtual one, and the same code runs in both.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{ActionLimits, CompiledAction, Trigger};
use super::host::{CallLimits, RunContext};
use super::policy::{PolicyState, Subject, rfc3339};
use super::sandbox::{RunSpec, Sandbox};
use crate::decisions::export::Exporter;
use crate::decisions::memory::Facts;
use crate::decisions::trace::{action_spans, closing_spans, resource_spans};
use crate::decisions::{
    ActionRun, ApprovalRecord, Decision, DecisionLog, Detection, Outcome, RunError, RunStatus,
    Verdict, Verification,
};
use crate::ingest::{ExportRequest, Signal, now_nanos};
use crate::internal_events::{
    ActionRan, ApprovalsPending, DecisionMade, DecisionSpansDropped, Metrics, OutcomeVerified,
};
use crate::rules::engine::{Executor, RuleEvent};
use crate::rules::eval::row_json;
use crate::rules::{AlertState, CompiledRule, RuleEngine};
use crate::store::Store;

/// Where rationale spans go: always the local `spans` table, and an OTLP
/// endpoint when one is configured.
#[derive(Clone)]
pub struct TraceSink {
    pub store: Option<Arc<Store>>,
    pub exporter: Option<Exporter>,
}

impl TraceSink {
    fn emit(&self, spans: Vec<Span>, now: i64, metrics: &Metrics) {
        if spans.is_empty() {
            return;
        }
        let resource = resource_spans(spans);
        if let Some(exporter) = &self.exporter {
            // A full export queue drops and counts; the local copy stays.
            exporter.send(resource.clone());
        }
        if let Some(store) = &self.store {
            let request = ExportTraceServiceRequest {
                resource_spans: vec![resource],
            };
            let n = request.resource_spans[0].scope_spans[0].spans.len();
            let stored = request.convert().map_err(|e| e.to_string()).and_then(|c| {
                store
                    .insert(Signal::Traces, c.batch, now)
                    .map_err(|e| e.to_string())
            });
            if let Err(error) = stored {
                DecisionSpansDropped {
                    spans: n,
                    error: &error,
                }
                .emit(metrics);
            }
        }
    }
}

/// The clock decisions are stamped with.
#[derive(Debug, Clone)]
pub enum Clock {
    Wall,
    /// Set by the caller (`homeostat test`).
    Virtual(Arc<AtomicI64>),
}

impl Clock {
    pub fn now(&self) -> i64 {
        match self {
            Clock::Wall => now_nanos(),
            Clock::Virtual(t) => t.load(Ordering::Acquire),
        }
    }
}

/// A decision on its way: what is needed to run its script.
struct Prepared {
    rule: Arc<CompiledRule>,
    decision: Decision,
    alert: Value,
    /// The escalation script instead of the rule's own.
    escalation: bool,
}

/// A decision waiting for the instance to resolve.
struct Verifying {
    decision: Decision,
    rule: Arc<CompiledRule>,
}

#[derive(Default)]
struct State {
    policies: HashMap<String, PolicyState>,
    running: usize,
    approvals: HashMap<String, (Prepared, i64)>,
    verifying: HashMap<String, Verifying>,
    /// Per (rule, fingerprint): the episode and time of the last run, for
    /// `repeat`.
    repeats: HashMap<(String, String), (u64, i64)>,
}

/// Why an approval answer was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApprovalError {
    #[error("no decision {0} is waiting for approval")]
    NotFound(String),
}

/// The threads scripts run on (blocking threads with a roomy stack), and
/// their host I/O (one worker).
fn script_runtime(limits: &ActionLimits) -> std::io::Result<Executor> {
    Executor::build(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(limits.max_concurrent.max(1) + 1)
            .thread_stack_size(super::SCRIPT_STACK)
            .thread_name("homeostat-actions"),
    )
}

pub struct Actor {
    sandbox: Arc<Sandbox>,
    limits: ActionLimits,
    log: Arc<DecisionLog>,
    facts: Arc<Facts>,
    sink: TraceSink,
    scripts: Executor,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// Every action runs in dry-run (`homeostat test`).
    dry_run_all: bool,
    nonce: String,
    counter: AtomicU64,
}

/// Decisions waiting for their outcome at most; past it, a new action's
/// outcome is not verified (and says so) rather than growing the wait list.
pub const MAX_VERIFYING: usize = 10_000;

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Actor {
    pub fn new(
        limits: ActionLimits,
        log: Arc<DecisionLog>,
        facts: Arc<Facts>,
        sink: TraceSink,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> std::io::Result<Self> {
        Ok(Self {
            sandbox: Arc::new(Sandbox::new(&limits)),
            scripts: script_runtime(&limits)?,
            limits,
            log,
            facts,
            sink,
            state: Mutex::default(),
            metrics,
            clock,
            dry_run_all: false,
            nonce: format!("{}.{}", std::process::id(), now_nanos()),
            counter: AtomicU64::new(0),
        })
    }

    /// An actor with the default limits, a fresh decision log and facts,
    /// whose rationale spans go to `store` only: what `homeostat test`,
    /// benches and tests drive.
    pub fn standalone(
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> std::io::Result<Self> {
        Self::new(
            ActionLimits::default(),
            Arc::new(DecisionLog::default()),
            Arc::new(Facts::default()),
            TraceSink {
                store: Some(store),
                exporter: None,
            },
            metrics,
            clock,
        )
    }

    /// Runs every action in dry-run, whatever its rule says.
    pub fn dry_run_all(mut self) -> Self {
        self.dry_run_all = true;
        self
    }

    pub fn log(&self) -> &Arc<DecisionLog> {
        &self.log
    }

    pub fn facts(&self) -> &Arc<Facts> {
        &self.facts
    }

    /// Decisions waiting for a person, oldest first.
    pub fn pending_approvals(&self) -> Vec<Decision> {
        let state = self.state.lock();
        let mut pending: Vec<Decision> = state
            .approvals
            .values()
            .map(|(p, _)| p.decision.clone())
            .collect();
        pending.sort_by_key(|d| d.at);
        pending
    }

    /// Reacts to alert transitions as they happen, and to time (repeats,
    /// approval expiry, outcome deadlines), until `shutdown`. Subscribes to
    /// the transitions when called, not when first polled, so that none
    /// is missed in between.
    pub fn run(
        self: Arc<Self>,
        rules: Arc<RuleEngine>,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        let events = rules.subscribe();
        self.react(rules, events, shutdown)
    }

    async fn react(
        self: Arc<Self>,
        rules: Arc<RuleEngine>,
        mut events: tokio::sync::broadcast::Receiver<RuleEvent>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event {
                    Ok(event) => {
                        self.on_event(&event, self.clock.now());
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::error!(missed = n, "the actor fell behind alert transitions; some were not acted on");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    self.tick(&rules, self.clock.now());
                }
            }
        }
    }

    fn next_ids(&self, rule: &str, fingerprint: &str, at: i64) -> (String, String) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(self.nonce.as_bytes());
        h.update(n.to_le_bytes());
        h.update(rule.as_bytes());
        h.update(fingerprint.as_bytes());
        h.update(at.to_le_bytes());
        let digest = h.finalize();
        (
            const_hex::encode(&digest[..8]),
            const_hex::encode(&digest[8..24]),
        )
    }

    /// Handles one transition. Returns the runs it started (live callers
    /// let them go; tests await them).
    pub fn on_event(self: &Arc<Self>, event: &RuleEvent, now: i64) -> Vec<JoinHandle<()>> {
        let rule = &event.rule;
        let e = &event.event;
        let to = e.transition.to;
        if to == AlertState::Resolved {
            self.resolved(&rule.name, &e.fingerprint, e.episode, e.transition.at);
        }
        let Some(action) = &rule.action else {
            return Vec::new();
        };
        let trigger = match (e.transition.from, to) {
            (_, AlertState::Firing) if e.transition.from != AlertState::Firing => Trigger::Firing,
            (AlertState::Firing, AlertState::Resolved) => Trigger::Resolved,
            _ => return Vec::new(),
        };
        if trigger == Trigger::Firing && action.on.contains(&Trigger::Repeat) {
            self.state.lock().repeats.insert(
                (rule.name.clone(), e.fingerprint.clone()),
                (e.episode, e.transition.at),
            );
        }
        if !action.on.contains(&trigger) {
            return Vec::new();
        }
        let detection = detection(rule, action, &event.evidence, e);
        self.decide(
            rule.clone(),
            &e.fingerprint,
            &e.labels,
            e.episode,
            trigger,
            detection,
            None,
            now,
        )
        .1
        .into_iter()
        .collect()
    }

    /// Starts a decision: records it, applies the policies, and runs the
    /// action if they allow. Returns its id and the run, if one started.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        self: &Arc<Self>,
        rule: Arc<CompiledRule>,
        fingerprint: &str,
        labels: &std::collections::BTreeMap<String, String>,
        episode: u64,
        trigger: Trigger,
        detection: Detection,
        escalates: Option<&Decision>,
        now: i64,
    ) -> (String, Option<JoinHandle<()>>) {
        let action = rule
            .action
            .as_ref()
            .expect("only rules with actions decide");
        let approval_expiry = action.approval_expiry;
        let (id, trace_id) = self.next_ids(&rule.name, fingerprint, now);
        let policy = {
            let mut state = self.state.lock();
            let running = state.running;
            let approvals = state.approvals.len();
            let policies = state.policies.entry(rule.name.clone()).or_default();
            let mut policy = policies.check(
                action,
                &Subject {
                    fingerprint,
                    episode,
                    trigger,
                },
                now,
                running,
                self.limits.max_concurrent,
            );
            if self.dry_run_all && !policy.dry_run {
                policy.dry_run = true;
                policy.checks.push(crate::decisions::Check {
                    policy: "dry_run",
                    passed: true,
                    detail: "every action runs in dry-run here (homeostat test)".into(),
                });
            }
            if policy.verdict == Verdict::AwaitingApproval
                && approvals >= self.limits.max_pending_approvals
            {
                policy.verdict = Verdict::Suppressed;
                policy.reason = format!(
                    "suppressed: {approvals} decisions already await approval ([actions] max_pending_approvals)"
                );
            }
            policy
        };
        let decision = Decision {
            id: id.clone(),
            trace_id,
            rule: rule.name.clone(),
            fingerprint: fingerprint.to_owned(),
            labels: labels.clone(),
            episode,
            trigger,
            at: now,
            detection,
            policy,
            reasoning: Default::default(),
            host_calls: Vec::new(),
            run: None,
            outcome: Outcome::Pending,
            verification: None,
            escalates: escalates.map(|d| d.id.clone()),
            updated_at: now,
        };
        DecisionMade {
            rule: &rule.name,
            verdict: decision.policy.verdict,
            reason: &decision.policy.reason,
        }
        .emit(&self.metrics);
        let alert = alert_value(&rule, &decision, escalates);
        let prepared = Prepared {
            rule,
            decision,
            alert,
            escalation: escalates.is_some(),
        };
        let run = match prepared.decision.policy.verdict {
            Verdict::Allowed => self.start(prepared, now),
            Verdict::AwaitingApproval => {
                let mut prepared = prepared;
                let expires_at = now.saturating_add(nanos(approval_expiry));
                prepared.decision.policy.approval = Some(ApprovalRecord {
                    requested_at: now,
                    expires_at,
                    answered_at: None,
                    approved: None,
                    by: None,
                    comment: None,
                });
                self.log.upsert(&prepared.decision);
                let mut state = self.state.lock();
                state.approvals.insert(id.clone(), (prepared, expires_at));
                ApprovalsPending(state.approvals.len()).emit(&self.metrics);
                None
            }
            _ => {
                self.finish_without_run(prepared.decision, now);
                None
            }
        };
        (id, run)
    }

    /// Records a decision that ends without running anything.
    fn finish_without_run(&self, mut decision: Decision, now: i64) -> Decision {
        decision.outcome = Outcome::None;
        decision.updated_at = now;
        self.log.upsert(&decision);
        let mut spans = action_spans(&decision);
        spans.extend(closing_spans(&decision));
        self.sink.emit(spans, now, &self.metrics);
        decision
    }

    /// Answers an approval request.
    pub fn answer(
        self: &Arc<Self>,
        id: &str,
        approve: bool,
        by: Option<String>,
        comment: Option<String>,
    ) -> Result<(Decision, Option<JoinHandle<()>>), ApprovalError> {
        let now = self.clock.now();
        let (mut prepared, _) = {
            let mut state = self.state.lock();
            let taken = state
                .approvals
                .remove(id)
                .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
            ApprovalsPending(state.approvals.len()).emit(&self.metrics);
            taken
        };
        let policy = &mut prepared.decision.policy;
        if let Some(a) = policy.approval.as_mut() {
            a.answered_at = Some(now);
            a.approved = Some(approve);
            a.by = by.clone();
            a.comment = comment;
        }
        let who = by.unwrap_or_else(|| "someone".into());
        policy.decided_at = now;
        if let Some(check) = policy.checks.iter_mut().find(|c| c.policy == "approval") {
            check.passed = approve;
            check.detail = format!(
                "{} by {who} at {}",
                if approve { "approved" } else { "denied" },
                rfc3339(now)
            );
        }
        if !approve {
            policy.verdict = Verdict::Denied;
            policy.reason = format!("denied by {who}");
            DecisionMade {
                rule: &prepared.decision.rule,
                verdict: Verdict::Denied,
                reason: &prepared.decision.policy.reason,
            }
            .emit(&self.metrics);
            return Ok((self.finish_without_run(prepared.decision, now), None));
        }
        policy.verdict = Verdict::Approved;
        policy.reason = format!("approved by {who}");
        // Concurrency is checked again: the run starts now, not when asked.
        let full = {
            let state = self.state.lock();
            let running = state.running;
            let action = prepared
                .rule
                .action
                .as_ref()
                .expect("decisions have actions");
            state
                .policies
                .get(&prepared.rule.name)
                .and_then(|p| p.concurrency_full(action, running, self.limits.max_concurrent))
        };
        if let Some(reason) = full {
            let policy = &mut prepared.decision.policy;
            policy.verdict = Verdict::Suppressed;
            policy.reason = format!("suppressed after approval: {reason}");
            return Ok((self.finish_without_run(prepared.decision, now), None));
        }
        DecisionMade {
            rule: &prepared.decision.rule,
            verdict: Verdict::Approved,
            reason: &prepared.decision.policy.reason,
        }
        .emit(&self.metrics);
        let decision = prepared.decision.clone();
        let handle = self.start(prepared, now);
        Ok((decision, handle))
    }

    /// Takes a concurrency slot and runs the script on the script threads.
    fn start(self: &Arc<Self>, mut prepared: Prepared, now: i64) -> Option<JoinHandle<()>> {
        {
            let mut state = self.state.lock();
            state.running += 1;
            state
                .policies
                .entry(prepared.rule.name.clone())
                .or_default()
                .running += 1;
        }
        let action = prepared
            .rule
            .action
            .as_ref()
            .expect("decisions have actions");
        let script = if prepared.escalation {
            action.on_ineffective.as_ref().map(|(p, _)| p)
        } else {
            Some(&action.path)
        };
        prepared.decision.run = Some(ActionRun {
            script: script.map(|p| p.display().to_string()).unwrap_or_default(),
            status: RunStatus::Running,
            started_at: now,
            ended_at: None,
            attempts: 0,
            value: Value::Null,
            error: None,
            operations: 0,
        });
        prepared.decision.updated_at = now;
        self.log.upsert(&prepared.decision);
        let actor = self.clone();
        Some(
            self.scripts
                .handle()
                .spawn_blocking(move || actor.execute(prepared)),
        )
    }

    /// Runs the script, retrying what a retry can help, then records.
    ///
    /// Runs on a script thread from start to end: one hop off the caller's
    /// runtime, none back and forth per attempt.
    fn execute(self: Arc<Self>, mut prepared: Prepared) {
        let started = Instant::now();
        let started_at = prepared.decision.run.as_ref().map_or(0, |r| r.started_at);
        let rule = prepared.rule.clone();
        let action = rule.action.as_ref().expect("decisions have actions");
        let ast = if prepared.escalation {
            action.on_ineffective.as_ref().map(|(_, a)| a.clone())
        } else {
            Some(action.ast.clone())
        };
        let alert = rhai::serde::to_dynamic(&prepared.alert).unwrap_or(rhai::Dynamic::UNIT);
        let mut backoff = action.retry_backoff;
        let mut attempt = 0;
        let report = loop {
            attempt += 1;
            let Some(ast) = ast.clone() else {
                break None;
            };
            let spec = RunSpec {
                timeout: action.timeout,
                max_operations: action.max_operations,
                context: RunContext {
                    capabilities: action.capabilities.clone(),
                    limits: CallLimits {
                        timeout: action.call_timeout,
                        max_output: action.max_output,
                    },
                    dry_run: prepared.decision.policy.dry_run,
                    runtime: self.scripts.handle(),
                    facts: self.facts.clone(),
                    rule: rule.name.clone(),
                    attempt,
                    calls: Vec::new(),
                    last_failure: None,
                },
            };
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.sandbox.run(&ast, alert.clone(), spec)
            }));
            let mut report = match run {
                Ok(report) => report,
                Err(_) => break Some(Err("the script's thread panicked".to_owned())),
            };
            // Host call times on the decision's clock.
            let shift = started_at + nanos(started.elapsed()) - now_nanos();
            if !matches!(self.clock, Clock::Wall) {
                for call in &mut report.calls {
                    call.started_at += shift;
                }
            }
            prepared.decision.host_calls.extend(report.calls.clone());
            prepared.decision.reasoning = report.reasoning.clone();
            if let Some(run) = prepared.decision.run.as_mut() {
                run.attempts = attempt;
                run.operations += report.operations;
            }
            match &report.result {
                Err(e) if e.retryable() && attempt <= action.retries => {
                    prepared.decision.updated_at = self.clock.now();
                    self.log.upsert(&prepared.decision);
                    // A backoff, not a wait for something: the outside world
                    // gets time to recover.
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                }
                _ => break Some(Ok(report)),
            }
        };
        let ended_at = started_at + nanos(started.elapsed());
        let now = self.clock.now().max(ended_at);
        {
            let mut state = self.state.lock();
            state.running = state.running.saturating_sub(1);
            if let Some(p) = state.policies.get_mut(&rule.name) {
                p.running = p.running.saturating_sub(1);
            }
        }
        let d = &mut prepared.decision;
        let run = d.run.as_mut().expect("set when started");
        run.ended_at = Some(ended_at);
        match report {
            None => {
                run.status = RunStatus::Failed;
                run.error = Some(RunError {
                    kind: "internal",
                    message: "no script to run".into(),
                });
            }
            Some(Err(message)) => {
                run.status = RunStatus::Failed;
                run.error = Some(RunError {
                    kind: "internal",
                    message,
                });
            }
            Some(Ok(report)) => match report.result {
                Ok(value) => {
                    run.value = value;
                    run.status = if d.reasoning.skipped.is_some() {
                        RunStatus::Skipped
                    } else {
                        RunStatus::Succeeded
                    };
                }
                Err(e) => {
                    run.status = RunStatus::Failed;
                    run.error = Some(RunError {
                        kind: e.kind(),
                        message: e.to_string(),
                    });
                }
            },
        }
        ActionRan {
            rule: &rule.name,
            run,
            calls: &d.host_calls,
            elapsed: started.elapsed(),
        }
        .emit(&self.metrics);
        let waiting = self.state.lock().verifying.len();
        let verify = run.status == RunStatus::Succeeded
            && !d.policy.dry_run
            && matches!(d.trigger, Trigger::Firing | Trigger::Repeat)
            && waiting < MAX_VERIFYING;
        if waiting >= MAX_VERIFYING {
            tracing::warn!(rule = %rule.name, waiting, "outcome not verified: too many decisions already wait for theirs");
        }
        d.updated_at = now;
        self.sink.emit(action_spans(d), now, &self.metrics);
        if verify {
            let within = d
                .reasoning
                .expectation
                .as_ref()
                .map_or(action.verify_within, |e| e.within);
            let expected = d.reasoning.expectation.as_ref().map_or_else(
                || {
                    format!(
                        "the instance resolves within {} (verify_within)",
                        humantime::format_duration(within)
                    )
                },
                |e| {
                    format!(
                        "{} within {}",
                        e.description,
                        humantime::format_duration(e.within)
                    )
                },
            );
            d.verification = Some(Verification {
                deadline: ended_at.saturating_add(nanos(within)),
                expected,
                checked_at: None,
                resolved_at: None,
                escalation: None,
            });
            self.log.upsert(d);
            self.state.lock().verifying.insert(
                d.id.clone(),
                Verifying {
                    decision: prepared.decision,
                    rule,
                },
            );
        } else {
            d.outcome = Outcome::None;
            self.log.upsert(d);
            self.sink.emit(closing_spans(d), now, &self.metrics);
        }
    }

    /// An instance resolved: the actions waiting for it were effective.
    fn resolved(&self, rule: &str, fingerprint: &str, episode: u64, at: i64) {
        let done: Vec<Verifying> = {
            let mut state = self.state.lock();
            let ids: Vec<String> = state
                .verifying
                .iter()
                .filter(|(_, v)| {
                    v.decision.rule == rule
                        && v.decision.fingerprint == fingerprint
                        && v.decision.episode == episode
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| state.verifying.remove(id))
                .collect()
        };
        for v in done {
            let mut d = v.decision;
            let deadline = d.verification.as_ref().map_or(at, |v| v.deadline);
            d.outcome = if at <= deadline {
                Outcome::Effective
            } else {
                Outcome::Ineffective
            };
            if let Some(v) = d.verification.as_mut() {
                v.checked_at = Some(at);
                v.resolved_at = Some(at);
            }
            d.updated_at = at;
            OutcomeVerified {
                rule: &d.rule,
                outcome: d.outcome,
            }
            .emit(&self.metrics);
            self.log.upsert(&d);
            self.sink.emit(closing_spans(&d), at, &self.metrics);
        }
    }

    /// Time-driven work: expired approvals, missed outcome deadlines
    /// (escalating), and repeats. Returns the runs it started.
    pub fn tick(self: &Arc<Self>, rules: &RuleEngine, now: i64) -> Vec<JoinHandle<()>> {
        let mut started = Vec::new();
        let (expired, overdue) = {
            let mut state = self.state.lock();
            let expired_ids: Vec<String> = state
                .approvals
                .iter()
                .filter(|(_, (_, expires))| *expires <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let expired: Vec<Prepared> = expired_ids
                .iter()
                .filter_map(|id| state.approvals.remove(id).map(|(p, _)| p))
                .collect();
            if !expired.is_empty() {
                ApprovalsPending(state.approvals.len()).emit(&self.metrics);
            }
            let overdue_ids: Vec<String> = state
                .verifying
                .iter()
                .filter(|(_, v)| {
                    v.decision
                        .verification
                        .as_ref()
                        .is_some_and(|x| x.deadline <= now)
                })
                .map(|(id, _)| id.clone())
                .collect();
            let overdue: Vec<Verifying> = overdue_ids
                .iter()
                .filter_map(|id| state.verifying.remove(id))
                .collect();
            for p in state.policies.values_mut() {
                p.prune(now);
            }
            (expired, overdue)
        };
        for mut p in expired {
            let policy = &mut p.decision.policy;
            policy.verdict = Verdict::Expired;
            policy.reason = "approval expired: nobody answered in time".into();
            policy.decided_at = now;
            if let Some(check) = policy.checks.iter_mut().find(|c| c.policy == "approval") {
                check.detail = format!("expired at {} without an answer", rfc3339(now));
            }
            DecisionMade {
                rule: &p.decision.rule,
                verdict: Verdict::Expired,
                reason: &p.decision.policy.reason,
            }
            .emit(&self.metrics);
            self.finish_without_run(p.decision, now);
        }
        for v in overdue {
            let mut d = v.decision;
            d.outcome = Outcome::Ineffective;
            OutcomeVerified {
                rule: &d.rule,
                outcome: d.outcome,
            }
            .emit(&self.metrics);
            let escalation = v
                .rule
                .action
                .as_ref()
                .is_some_and(|a| a.on_ineffective.is_some())
                .then(|| {
                    self.decide(
                        v.rule.clone(),
                        &d.fingerprint.clone(),
                        &d.labels.clone(),
                        d.episode,
                        Trigger::Ineffective,
                        d.detection.clone(),
                        Some(&d),
                        now,
                    )
                });
            let (escalation, run) = escalation.unzip();
            if let Some(x) = d.verification.as_mut() {
                x.checked_at = Some(now);
                x.escalation = escalation;
            }
            started.extend(run.flatten());
            d.updated_at = now;
            self.log.upsert(&d);
            self.sink.emit(closing_spans(&d), now, &self.metrics);
        }
        started.extend(self.repeats(rules, now));
        started
    }

    fn repeats(self: &Arc<Self>, rules: &RuleEngine, now: i64) -> Vec<JoinHandle<()>> {
        let mut due = Vec::new();
        let rules = rules.rules();
        // Forget instances that are gone or no longer firing (the rule's
        // lock is never held with the actor's).
        let firing: std::collections::HashSet<(String, String)> = rules
            .iter()
            .filter(|(_, r)| r.rule.action.is_some())
            .flat_map(|(name, r)| {
                r.runtime
                    .lock()
                    .state
                    .instances
                    .values()
                    .filter(|i| i.state == AlertState::Firing)
                    .map(|i| (name.clone(), i.fingerprint.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        self.state
            .lock()
            .repeats
            .retain(|key, _| firing.contains(key));
        for (name, loaded) in rules {
            let Some(action) = &loaded.rule.action else {
                continue;
            };
            let Some(every) = action
                .repeat_every
                .filter(|_| action.on.contains(&Trigger::Repeat))
            else {
                continue;
            };
            let runtime = loaded.runtime.lock();
            let mut state = self.state.lock();
            for instance in runtime.state.instances.values() {
                if instance.state != AlertState::Firing {
                    continue;
                }
                let key = (name.clone(), instance.fingerprint.clone());
                let entry = state
                    .repeats
                    .entry(key)
                    .or_insert((instance.episode, instance.fired_at.unwrap_or(now)));
                if entry.0 != instance.episode {
                    *entry = (instance.episode, instance.fired_at.unwrap_or(now));
                }
                if now - entry.1 >= nanos(every) {
                    entry.1 = now;
                    due.push((loaded.rule.clone(), instance.clone()));
                }
            }
        }
        let mut started = Vec::new();
        for (rule, instance) in due {
            let action = rule.action.as_ref().expect("filtered above");
            let detection = Detection {
                sql: rule.sql.clone(),
                window_start: 0,
                window_end: 0,
                rows: 0,
                state: instance.state,
                since: instance.active_since,
                values: instance.values.clone(),
                evidence: vec![instance.values.clone()],
                evidence_trace_ids: trace_ids(&instance.values, action.evidence_rows),
            };
            started.extend(
                self.decide(
                    rule.clone(),
                    &instance.fingerprint,
                    &instance.labels,
                    instance.episode,
                    Trigger::Repeat,
                    detection,
                    None,
                    now,
                )
                .1,
            );
        }
        started
    }
}

/// What the rule saw, for the decision: the instance's row first, then
/// other rows of the same evaluation, up to `evidence_rows`.
fn detection(
    rule: &CompiledRule,
    action: &CompiledAction,
    evidence: &RecordBatch,
    e: &crate::rules::state::Event,
) -> Detection {
    let window = rule.window_at(e.transition.at);
    let mut own = Vec::new();
    let mut others = Vec::new();
    for row in 0..evidence.num_rows() {
        let mine = rule
            .row_labels(evidence, row)
            .is_ok_and(|labels| labels == e.labels);
        if let Ok(json) = row_json(evidence, row) {
            if mine {
                own.push(json);
            } else {
                others.push(json);
            }
        }
    }
    let values = own.first().cloned().unwrap_or_default();
    let trace_ids = trace_ids(&values, action.evidence_rows.max(1));
    own.extend(others);
    own.truncate(action.evidence_rows);
    Detection {
        sql: rule.sql.clone(),
        window_start: window.start.unwrap_or(i64::MIN),
        window_end: window.end.unwrap_or(i64::MAX),
        rows: evidence.num_rows(),
        state: e.transition.to,
        since: e.transition.at,
        values: e.transition.values.clone(),
        evidence: own,
        evidence_trace_ids: trace_ids,
    }
}

/// Trace ids in a row: a `trace_id` column, or a `trace_ids` list.
fn trace_ids(row: &Map<String, Value>, max: usize) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    if let Some(Value::String(t)) = row.get("trace_id") {
        ids.push(t.clone());
    }
    if let Some(Value::Array(list)) = row.get("trace_ids") {
        for t in list.iter().filter_map(Value::as_str) {
            if !ids.iter().any(|x| x == t) {
                ids.push(t.to_owned());
            }
        }
    }
    ids.truncate(max.min(crate::decisions::trace::MAX_LINKS));
    ids
}

/// The `alert` a script sees.
fn alert_value(rule: &CompiledRule, d: &Decision, escalates: Option<&Decision>) -> Value {
    let mut labels: Map<String, Value> = rule
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    for (k, v) in &d.labels {
        labels.insert(k.clone(), Value::String(v.clone()));
    }
    json!({
        "rule": d.rule,
        "description": rule.description,
        "labels": labels,
        "values": d.detection.values,
        "fingerprint": d.fingerprint,
        "episode": d.episode,
        "state": d.detection.state.name(),
        "since": d.detection.since,
        "trigger": d.trigger.name(),
        "evidence": d.detection.evidence,
        "trace_ids": d.detection.evidence_trace_ids,
        "decision_id": d.id,
        "trace_id": d.trace_id,
        "dry_run": d.policy.dry_run,
        "previous": escalates.map(|p| json!({
            "decision_id": p.id,
            "choice": p.reasoning.decision.as_ref().map(|c| c.option.clone()),
            "expectation": p.verification.as_ref().map(|v| v.expected.clone()),
        })),
    })
}
