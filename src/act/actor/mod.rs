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
//! - [`execute`]: a script run, retries, the record.
//! - [`verify`]: outcomes, expiry, escalation, repeats.
//! - [`evidence`]: what the decision and the script see of the evaluation.
//! - [`recover`]: what a restart takes back from the memory.
//!
//! Time is passed in (`now`): `homeostat run` passes the wall clock,
//! `homeostat test` a virtual one, and the same code runs in both.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod claim;
mod evidence;
mod execute;
mod recover;
pub mod recovery;
mod verify;

pub use recover::Restored;

use evidence::{alert_value, detection};

use super::config::{ActionLimits, Trigger};
use super::policy::{PolicyState, Subject, rfc3339};
use super::sandbox::Sandbox;
use crate::decisions::export::Exporter;
use crate::decisions::memory::Facts;
use crate::decisions::trace::{action_spans, closing_spans, resource_spans};
use crate::decisions::{
    ActionRun, ApprovalRecord, Decision, DecisionLog, Detection, Outcome, RunStatus, Verdict,
};
use crate::ingest::{ExportRequest, Signal, now_nanos};
use crate::internal_events::{ApprovalsPending, DecisionMade, DecisionSpansDropped, Metrics};
use crate::memory::journal::{Ack, AlertChange, Journal, Record, Stage};
use crate::rules::engine::{Executor, RuleEvent};
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
            // Through the log like any telemetry, not waited for: the
            // decision itself is durable in the memory already.
            let stored = request.convert().map_err(|e| e.to_string()).and_then(|c| {
                store
                    .append_batch(Signal::Traces, c.batch, now)
                    .map(drop)
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
    /// Answers when the intent to run is durable.
    intent: Option<Ack>,
    /// The episode must be claimed in the cluster before the intent is
    /// recorded and the script runs.
    claim_first: bool,
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
    /// Per (rule, fingerprint): the local episode last claimed (won or
    /// lost) and the cluster's number for it.
    episodes: HashMap<(String, String), (u64, u64)>,
    /// Episodes another replica holds, while this one sees them firing:
    /// checked for a takeover once their lease expires.
    watching: HashMap<(String, String), claim::Watch>,
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
    /// The decision log on storage, when there is one.
    journal: Option<Journal>,
    /// Runs in progress, for [`Actor::idle`].
    running: tokio::sync::watch::Sender<usize>,
    /// This replica's name (the journal's node).
    node: String,
    /// Replicas sharing the storage, when there is one.
    cluster: Option<Arc<crate::cluster::Cluster>>,
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
            journal: None,
            running: tokio::sync::watch::channel(0).0,
            node: String::new(),
            cluster: None,
        })
    }

    /// Returns once no action is running (a graceful stop waits for this,
    /// within a limit, so that runs end with their result recorded rather
    /// than as interrupted).
    pub async fn idle(&self) {
        let mut running = self.running.subscribe();
        let _ = running.wait_for(|n| *n == 0).await;
    }

    /// Records every decision, alert transition and fact in `journal`.
    pub fn with_journal(mut self, journal: Journal) -> Self {
        self.facts.set_journal(journal.clone());
        journal.node().clone_into(&mut self.node);
        self.journal = Some(journal);
        self
    }

    /// Updates the decision in the log and appends it to the journal.
    /// The answer says when it is durable (`None` without a journal).
    fn record(&self, decision: &Decision, stage: Stage) -> Option<Ack> {
        self.log.upsert(decision);
        self.journal.as_ref().map(|j| {
            j.append(Record::Decision {
                stage,
                decision: Box::new(decision.clone()),
            })
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

    /// Claims each episode in `cluster` before acting on it (see
    /// [`crate::cluster`]).
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Runs every action in dry-run, whatever its rule says.
    pub fn dry_run_all(mut self) -> Self {
        self.dry_run_all = true;
        self
    }

    /// The decision log on storage, if there is one.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
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
        if let Some(journal) = &self.journal {
            // Not waited for: a transition lost in a crash is found again
            // by the next evaluation; an action's intent, which follows it
            // in the same queue, is waited for.
            drop(journal.append(Record::Alert {
                alert: AlertChange {
                    rule: rule.name.clone(),
                    fingerprint: e.fingerprint.clone(),
                    labels: e.labels.clone(),
                    episode: e.episode,
                    from: e.transition.from,
                    to,
                    at: e.transition.at,
                    since: e.since,
                },
            }));
        }
        if to == AlertState::Resolved {
            self.resolved(&rule.name, &e.fingerprint, e.episode, e.transition.at);
            self.episode_ended(&rule.name, &e.fingerprint, e.episode);
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
                    since: detection.since,
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
            node: self.node.clone(),
            claim: None,
        };
        // A decision that must claim its episode first is counted once the
        // claim says whether it runs here.
        let claims = self.cluster.is_some()
            && escalates.is_none()
            && decision.policy.verdict == Verdict::Allowed
            && matches!(trigger, Trigger::Firing | Trigger::Resolved);
        if !claims {
            DecisionMade {
                rule: &rule.name,
                verdict: decision.policy.verdict,
                reason: &decision.policy.reason,
            }
            .emit(&self.metrics);
        }
        let alert = alert_value(&rule, &decision, escalates);
        let prepared = Prepared {
            rule,
            decision,
            alert,
            escalation: escalates.is_some(),
            intent: None,
            claim_first: false,
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
                self.record(&prepared.decision, Stage::AwaitingApproval);
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
        self.record(&decision, Stage::Decided);
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
            self.running.send_replace(state.running);
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
        prepared.claim_first = self.cluster.is_some()
            && prepared.decision.claim.is_none()
            && !prepared.escalation
            && matches!(
                prepared.decision.trigger,
                Trigger::Firing | Trigger::Resolved
            );
        if !prepared.claim_first {
            self.intend(&mut prepared, now);
        }
        let actor = self.clone();
        Some(
            self.scripts
                .handle()
                .spawn_blocking(move || actor.execute(prepared)),
        )
    }

    /// Records the intent to run (durable before the script starts) and
    /// counts the run in the facts.
    fn intend(&self, prepared: &mut Prepared, now: i64) {
        prepared.decision.updated_at = now;
        prepared.intent = self.record(&prepared.decision, Stage::Intent);
        // The engine's own per-instance memory: a version per run, so that
        // scripts can count (`memory::count`) and SQL can list the runs.
        let d = &prepared.decision;
        let acted = serde_json::json!({ "decision": d.id, "trigger": d.trigger.name(), "dry_run": d.policy.dry_run });
        if let Err(e) = self.facts.put_recorded(
            &format!("acted/{}/{}", d.rule, d.fingerprint),
            acted,
            now,
            "homeostat",
        ) {
            tracing::warn!(error = %e, "cannot record the run in the facts");
        }
    }
}
