//! Taking back what the memory holds after a restart: alert instances,
//! facts, policy state (episodes acted on, cooldowns, the last hour's
//! runs), open approvals, outcomes still to verify, and runs a crash
//! interrupted.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Map;
use tokio::task::JoinHandle;

use super::evidence::alert_value;
use super::recovery::Recovery;
use super::{Actor, Prepared, Verifying};
use crate::act::policy::rfc3339;
use crate::decisions::memory::Fact;
use crate::decisions::trace::{action_spans, closing_spans};
use crate::decisions::{Check, Decision, Outcome, RunError, RunStatus, Verdict};
use crate::internal_events::ApprovalsPending;
use crate::memory::journal::Stage;
use crate::rules::state::Instance;
use crate::rules::{AlertState, RuleEngine};

/// What a restart took back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    pub decisions: usize,
    pub instances: usize,
    pub facts: usize,
    pub approvals: usize,
    pub verifying: usize,
    /// Runs found interrupted and marked so.
    pub interrupted: usize,
    /// Interrupted runs of idempotent actions, started again.
    pub rerun: usize,
}

impl Actor {
    /// Takes back this node's memory, as its chain folds up (`own`), and
    /// the facts of every writer (in the order written). Call once, after
    /// the rules are loaded and before transitions flow. Returns once the
    /// runs found cut short are durably marked so, with the runs it
    /// started again.
    pub async fn restore(
        self: &Arc<Self>,
        own: &Recovery,
        facts: Vec<Fact>,
        rules: &RuleEngine,
        now: i64,
    ) -> (Restored, Vec<JoinHandle<()>>) {
        let mut restored = Restored::default();
        for alert in own.alerts.values() {
            if alert.to == AlertState::Inactive {
                continue;
            }
            let Some(rule) = rules.rule(&alert.rule) else {
                continue;
            };
            let mut runtime = rule.runtime.lock();
            runtime
                .state
                .instances
                .entry(alert.fingerprint.clone())
                .or_insert_with(|| {
                    restored.instances += 1;
                    Instance {
                        fingerprint: alert.fingerprint.clone(),
                        labels: alert.labels.clone(),
                        values: Map::new(),
                        state: alert.to,
                        episode: alert.episode,
                        active_since: alert.since,
                        fired_at: (alert.to == AlertState::Firing).then_some(alert.at),
                        resolved_at: (alert.to == AlertState::Resolved).then_some(alert.at),
                        last_seen: alert.at,
                        transitions: VecDeque::new(),
                    }
                });
        }
        restored.facts = facts.len();
        self.facts.restore(facts);
        {
            // Episodes acted on, cooldowns and the last hour's runs, as the
            // chain counted them; repeats count from the last run of the
            // episode, not from the restart.
            let mut state = self.state.lock();
            for (rule, policy) in &own.policies {
                state.policies.insert(rule.clone(), policy.clone());
            }
            state.repeats.extend(own.repeats.clone());
        }

        let mut runs = Vec::new();
        let mut marked = Vec::new();
        for kept in own.kept() {
            restored.decisions += 1;
            let (stage, d) = (kept.stage, kept.decision.clone());
            let rule = rules
                .rule(&d.rule)
                .map(|l| l.rule)
                .filter(|r| r.action.is_some());
            let running = d
                .run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Running);
            match (rule, stage) {
                (rule, _) if running => {
                    let idempotent = rule
                        .as_ref()
                        .and_then(|r| r.action.as_ref())
                        .is_some_and(|a| a.idempotent);
                    match rule {
                        Some(rule) if idempotent => match self.reclaim(&d).await {
                            Ok(claim) => {
                                restored.rerun += 1;
                                let mut d = d;
                                d.claim = claim;
                                runs.extend(self.rerun(rule, d, now));
                            }
                            Err(why) => {
                                restored.interrupted += 1;
                                marked.extend(self.interrupted(d, now, Some(&why)));
                            }
                        },
                        _ => {
                            restored.interrupted += 1;
                            marked.extend(self.interrupted(d, now, None));
                        }
                    }
                }
                (Some(rule), Stage::AwaitingApproval)
                    if d.policy.verdict == Verdict::AwaitingApproval =>
                {
                    let expires_at = d.policy.approval.as_ref().map_or(now, |a| a.expires_at);
                    self.log.upsert(&d);
                    let alert = alert_value(&rule, &d, None);
                    let mut state = self.state.lock();
                    state.approvals.insert(
                        d.id.clone(),
                        (
                            Prepared {
                                escalation: d.escalates.is_some(),
                                rule,
                                decision: d,
                                alert,
                                intent: None,
                                claim_first: false,
                            },
                            expires_at,
                        ),
                    );
                    restored.approvals += 1;
                    ApprovalsPending(state.approvals.len()).emit(&self.metrics);
                }
                (Some(rule), _) if d.outcome == Outcome::Pending && d.verification.is_some() => {
                    self.log.upsert(&d);
                    self.state
                        .lock()
                        .verifying
                        .insert(d.id.clone(), Verifying { decision: d, rule });
                    restored.verifying += 1;
                }
                _ => self.log.upsert(&d),
            }
        }
        // An instance that resolved before the crash settles the outcome of
        // the actions waiting for it, as its transition would have.
        for alert in own.alerts.values() {
            if alert.to == AlertState::Resolved {
                self.resolved(&alert.rule, &alert.fingerprint, alert.episode, alert.at);
            }
        }
        for ack in marked {
            if let Ok(Err(e)) = ack.await {
                tracing::error!(error = %e, "an interrupted run could not be marked so");
            }
        }
        (restored, runs)
    }

    /// A run the process did not see end: marked, never run again.
    fn interrupted(
        &self,
        mut d: Decision,
        now: i64,
        why: Option<&str>,
    ) -> Option<crate::memory::journal::Ack> {
        if let Some(run) = d.run.as_mut() {
            run.status = RunStatus::Interrupted;
            let reason = why.unwrap_or("the action is not declared idempotent");
            run.error = Some(RunError {
                kind: "interrupted",
                message: format!(
                    "the process stopped after recording the intent and before the result: whether the action took effect is unknown; not run again ({reason})"
                ),
            });
        }
        d.outcome = Outcome::None;
        d.updated_at = now;
        let ack = self.record(&d, Stage::Interrupted);
        let mut spans = action_spans(&d);
        spans.extend(closing_spans(&d));
        self.sink.emit(spans, now, &self.metrics);
        ack
    }

    /// An interrupted run of an idempotent action: the same decision runs
    /// again, and its checks say why.
    fn rerun(
        self: &Arc<Self>,
        rule: Arc<crate::rules::CompiledRule>,
        mut d: Decision,
        now: i64,
    ) -> Option<JoinHandle<()>> {
        d.policy.checks.push(Check {
            policy: "recovery",
            passed: true,
            detail: format!(
                "interrupted by a restart; run again at {}: the action is idempotent",
                rfc3339(now)
            ),
        });
        d.host_calls.clear();
        d.reasoning = Default::default();
        let alert = alert_value(&rule, &d, None);
        self.start(
            Prepared {
                escalation: d.escalates.is_some(),
                rule,
                decision: d,
                alert,
                intent: None,
                claim_first: false,
            },
            now,
        )
    }
}
