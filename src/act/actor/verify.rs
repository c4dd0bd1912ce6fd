//! Time and resolution: outcomes verified, approvals expired, escalations
//! and repeats started.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::evidence::trace_ids;
use super::{Actor, Prepared, Verifying, nanos};
use crate::act::config::Trigger;
use crate::act::policy::rfc3339;
use crate::decisions::trace::closing_spans;
use crate::decisions::{Detection, Outcome, Verdict};
use crate::internal_events::{ApprovalsPending, DecisionMade, OutcomeVerified};
use crate::memory::journal::Stage;
use crate::rules::{AlertState, RuleEngine};

impl Actor {
    /// An instance resolved: the actions waiting for it were effective.
    pub(super) fn resolved(&self, rule: &str, fingerprint: &str, episode: u64, at: i64) {
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
            self.record(&d, Stage::Outcome);
            self.sink.emit(closing_spans(&d), at, &self.metrics);
        }
    }

    /// Time-driven work: expired approvals, missed outcome deadlines
    /// (escalating), and repeats. Returns the runs it started.
    pub fn tick(self: &Arc<Self>, rules: &RuleEngine, now: i64) -> Vec<JoinHandle<()>> {
        self.check_claims(now);
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
            // The outcome is recorded before the escalation's intent (the log
            // keeps order): after a crash, the parent is settled and does not
            // escalate a second time.
            if let Some(x) = d.verification.as_mut() {
                x.checked_at = Some(now);
            }
            d.updated_at = now;
            self.record(&d, Stage::Outcome);
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
            if d.verification
                .as_ref()
                .is_some_and(|x| x.escalation.is_some())
            {
                self.record(&d, Stage::Outcome);
            }
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
