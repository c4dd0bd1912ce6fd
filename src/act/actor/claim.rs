//! Acting once per episode across replicas: the claim before a run, the
//! markers after it, and the takeover of an episode whose claimant died
//! (see [`crate::cluster`] for the objects and the rules).

use std::sync::Arc;

use super::evidence::alert_value;
use super::{Actor, Prepared, nanos};
use crate::act::config::Trigger;
use crate::act::policy::rfc3339;
use crate::cluster::{Claim, ClaimRequest, Claimed, Standing};
use crate::decisions::trace::{action_spans, closing_spans};
use crate::decisions::{Check, ClaimRecord, Decision, Outcome, RunError, RunStatus, Verdict};
use crate::internal_events::{DecisionMade, EpisodeClaimed};
use crate::memory::journal::{Ack, Stage};
use crate::rules::CompiledRule;

/// An episode another replica holds, watched while this one sees it firing.
pub(super) struct Watch {
    pub rule: Arc<CompiledRule>,
    /// This replica's `claimed_by_other` decision.
    pub decision: Decision,
    /// The cluster's episode number.
    pub episode: u64,
    /// A check is under way.
    pub checking: bool,
    /// Not checked again before (UTC nanoseconds).
    pub next_check: i64,
}

fn claim_record(claim: &Claim) -> ClaimRecord {
    ClaimRecord {
        episode: claim.episode,
        holder: claim.node.clone(),
        claimed_at: claim.claimed_at,
        took_over_from: claim.took_over_from.clone(),
    }
}

/// The claim a decision asks for.
fn request(d: &Decision, closed: Option<u64>, episode: Option<u64>) -> ClaimRequest<'_> {
    ClaimRequest {
        rule: &d.rule,
        fingerprint: &d.fingerprint,
        trigger: d.trigger,
        decision: &d.id,
        local_episode: d.episode,
        since: d.detection.since,
        closed,
        episode,
    }
}

impl Actor {
    /// Claims the decision's episode, on a script thread. Won: the decision
    /// carries the claim and goes on. Lost or failed: it is recorded as
    /// such, and `None` says not to run.
    pub(super) fn claim(self: &Arc<Self>, mut prepared: Prepared) -> Option<Prepared> {
        let cluster = self.cluster.clone().expect("claims need a cluster");
        let d = &prepared.decision;
        let key = (d.rule.clone(), d.fingerprint.clone());
        let (closed, episode) = {
            let state = self.state.lock();
            let known = state.episodes.get(&key).copied();
            (
                known
                    .filter(|(local, _)| *local < d.episode)
                    .map(|(_, n)| n),
                known
                    .filter(|(local, _)| *local == d.episode)
                    .map(|(_, n)| n),
            )
        };
        let request = request(d, closed, episode);
        let answer = self.scripts.handle().block_on(cluster.claim(&request));
        let now = self.clock.now();
        let (result, episode, holder) = match &answer {
            Ok(Claimed::Won { claim, took_over }) => (
                if took_over.is_some() {
                    "takeover"
                } else {
                    "won"
                },
                claim.episode,
                claim.node.as_str(),
            ),
            Ok(Claimed::Lost { holder }) => ("lost", holder.episode, holder.node.as_str()),
            Err(_) => ("error", 0, ""),
        };
        EpisodeClaimed {
            rule: &d.rule,
            episode,
            result,
            holder,
        }
        .emit(&self.metrics);
        match answer {
            Ok(Claimed::Won {
                claim,
                took_over: Some(holder),
            }) => {
                // The episode's claimant died before this replica first saw
                // it: taken over at once, as a watcher would.
                self.release(&prepared.rule.name);
                let watch = Watch {
                    rule: prepared.rule.clone(),
                    decision: prepared.decision.clone(),
                    episode: claim.episode,
                    checking: false,
                    next_check: now,
                };
                let (id, trace_id) = (
                    prepared.decision.id.clone(),
                    prepared.decision.trace_id.clone(),
                );
                self.take_over(watch, claim, &holder, id, trace_id);
                self.ran();
                None
            }
            Ok(Claimed::Won { claim, .. }) => {
                if d.trigger == Trigger::Firing {
                    self.state
                        .lock()
                        .episodes
                        .insert(key, (d.episode, claim.episode));
                }
                let d = &mut prepared.decision;
                d.policy.checks.push(Check {
                    policy: "claim",
                    passed: true,
                    detail: format!(
                        "claimed episode {} of this instance for node {} (lease until {})",
                        claim.episode,
                        claim.node,
                        rfc3339(claim.lease_until)
                    ),
                });
                d.claim = Some(claim_record(&claim));
                DecisionMade {
                    rule: &d.rule,
                    verdict: d.policy.verdict,
                    reason: &d.policy.reason,
                }
                .emit(&self.metrics);
                Some(prepared)
            }
            Ok(Claimed::Lost { holder }) => {
                self.release(&prepared.rule.name);
                let d = &mut prepared.decision;
                {
                    let mut state = self.state.lock();
                    state.repeats.remove(&key);
                    if let Some(p) = state.policies.get_mut(&d.rule) {
                        p.uncount(d);
                    }
                    if d.trigger == Trigger::Firing {
                        state
                            .episodes
                            .insert(key.clone(), (d.episode, holder.episode));
                    }
                }
                d.policy.verdict = Verdict::ClaimedByOther;
                d.policy.reason = format!(
                    "claimed by node {} at {}: it acts on episode {}",
                    holder.node,
                    rfc3339(holder.claimed_at),
                    holder.episode
                );
                d.policy.checks.push(Check {
                    policy: "claim",
                    passed: false,
                    detail: format!(
                        "node {} holds episode {} of this instance (decision {}, lease until {})",
                        holder.node,
                        holder.episode,
                        holder.decision,
                        rfc3339(holder.lease_until)
                    ),
                });
                d.claim = Some(claim_record(&holder));
                d.run = None;
                DecisionMade {
                    rule: &d.rule,
                    verdict: d.policy.verdict,
                    reason: &d.policy.reason,
                }
                .emit(&self.metrics);
                let decision = self.finish_without_run(prepared.decision, now);
                if decision.trigger == Trigger::Firing {
                    self.state.lock().watching.insert(
                        key,
                        Watch {
                            rule: prepared.rule,
                            episode: holder.episode,
                            checking: false,
                            next_check: holder.lease_until,
                            decision,
                        },
                    );
                }
                self.ran();
                None
            }
            Err(e) => {
                self.not_started(
                    prepared,
                    "claim",
                    format!(
                        "the action did not run: the episode could not be claimed in the shared storage: {e}"
                    ),
                );
                None
            }
        }
    }

    /// Another replica recorded the intent of a run: it counts toward this
    /// replica's cooldowns and hourly rates too.
    pub fn observe_remote(&self, d: &Decision) {
        if d.node == self.node || d.run.is_none() {
            return;
        }
        self.state
            .lock()
            .policies
            .entry(d.rule.clone())
            .or_default()
            .observe(d);
    }

    /// Counts another replica's runs as its snapshot of `rule`'s policy
    /// state has them (what [`Actor::observe_remote`] counts one by one).
    pub fn absorb_remote(&self, rule: &str, policy: &crate::act::policy::PolicySnapshot) {
        self.state
            .lock()
            .policies
            .entry(rule.to_owned())
            .or_default()
            .absorb(policy);
    }

    /// Once the result of a claimed run is durable, marks the episode
    /// `done`: nobody takes it over after that.
    pub(super) fn settle_claim(&self, d: &Decision, ack: Option<Ack>) {
        let (Some(cluster), Some(claim)) = (self.cluster.clone(), d.claim.as_ref()) else {
            return;
        };
        if claim.holder != self.node || d.trigger != Trigger::Firing {
            return;
        }
        let (rule, fingerprint, n) = (d.rule.clone(), d.fingerprint.clone(), claim.episode);
        self.scripts.handle().spawn(async move {
            if let Some(ack) = ack
                && !matches!(ack.await, Ok(Ok(_)))
            {
                return;
            }
            if let Err(e) = cluster.done(&rule, &fingerprint, n).await {
                tracing::warn!(%rule, %fingerprint, episode = n, error = %e, "cannot mark the episode's result recorded");
            }
        });
    }

    /// The instance resolved here: its episode is over for the cluster too,
    /// and nothing is left to watch.
    pub(super) fn episode_ended(&self, rule: &str, fingerprint: &str, local_episode: u64) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let key = (rule.to_owned(), fingerprint.to_owned());
        let n = {
            let mut state = self.state.lock();
            state.watching.remove(&key);
            state
                .episodes
                .get(&key)
                .filter(|(local, _)| *local == local_episode)
                .map(|(_, n)| *n)
        };
        let Some(n) = n else { return };
        let (rule, fingerprint) = key;
        self.scripts.handle().spawn(async move {
            if let Err(e) = cluster.resolved(&rule, &fingerprint, n).await {
                tracing::warn!(%rule, %fingerprint, episode = n, error = %e, "cannot mark the episode resolved");
            }
        });
    }

    /// Starts a check of each watched episode that is due.
    pub(super) fn check_claims(self: &Arc<Self>, now: i64) {
        if self.cluster.is_none() {
            return;
        }
        let due: Vec<(String, String)> = {
            let mut state = self.state.lock();
            state
                .watching
                .iter_mut()
                .filter(|(_, w)| !w.checking && w.next_check <= now)
                .map(|(k, w)| {
                    w.checking = true;
                    k.clone()
                })
                .collect()
        };
        for key in due {
            let actor = self.clone();
            self.scripts
                .handle()
                .spawn(async move { actor.check_watch(key).await });
        }
    }

    async fn check_watch(self: Arc<Self>, key: (String, String)) {
        let cluster = self.cluster.clone().expect("watching needs a cluster");
        let Some(episode) = self.state.lock().watching.get(&key).map(|w| w.episode) else {
            return;
        };
        let standing = cluster.check(&key.0, &key.1, episode).await;
        let now = self.clock.now();
        let again = now.saturating_add(nanos(cluster.config().heartbeat));
        let holder = match standing {
            Ok(Standing::Settled) => {
                self.state.lock().watching.remove(&key);
                return;
            }
            Ok(Standing::Held(holder)) => {
                if let Some(w) = self.state.lock().watching.get_mut(&key) {
                    w.checking = false;
                    w.next_check = holder.lease_until.max(again);
                }
                return;
            }
            Ok(Standing::Abandoned(holder)) => holder,
            Err(e) => {
                tracing::warn!(rule = %key.0, error = %e, "cannot check another replica's claim");
                if let Some(w) = self.state.lock().watching.get_mut(&key) {
                    w.checking = false;
                    w.next_check = again;
                }
                return;
            }
        };
        let Some(watch) = self.state.lock().watching.remove(&key) else {
            return;
        };
        let (id, trace_id) = self.next_ids(&key.0, &key.1, now);
        let request = ClaimRequest {
            trigger: Trigger::Firing,
            decision: &id,
            ..request(&watch.decision, None, None)
        };
        match cluster.take_over(&request, episode, holder.clone()).await {
            Ok(Claimed::Won { claim, .. }) => {
                EpisodeClaimed {
                    rule: &claim.rule,
                    episode: claim.episode,
                    result: "takeover",
                    holder: &claim.node,
                }
                .emit(&self.metrics);
                self.take_over(watch, claim, &holder, id, trace_id);
            }
            Ok(Claimed::Lost { holder }) => {
                // Another replica took it over first: watch that one.
                let mut state = self.state.lock();
                state.watching.insert(
                    key,
                    Watch {
                        next_check: holder.lease_until,
                        checking: false,
                        ..watch
                    },
                );
            }
            Err(e) => {
                tracing::warn!(rule = %key.0, error = %e, "cannot take over an abandoned episode");
                self.state.lock().watching.insert(
                    key,
                    Watch {
                        next_check: again,
                        checking: false,
                        ..watch
                    },
                );
            }
        }
    }

    /// This replica took over `holder`'s episode: the first attempt is
    /// marked interrupted, and the action runs here unless that attempt
    /// had started a run of an action not declared idempotent.
    fn take_over(
        self: &Arc<Self>,
        watch: Watch,
        claim: Claim,
        holder: &Claim,
        id: String,
        trace_id: String,
    ) {
        let now = self.clock.now();
        let rule = watch.rule;
        let idempotent = rule.action.as_ref().is_some_and(|a| a.idempotent);
        let first = self.log.get(&holder.decision);
        let started = first.as_ref().is_some_and(|d| d.run.is_some());
        self.state.lock().episodes.insert(
            (claim.rule.clone(), claim.fingerprint.clone()),
            (watch.decision.episode, claim.episode),
        );
        let mut d = watch.decision;
        d.id = id;
        d.trace_id = trace_id;
        d.at = now;
        d.updated_at = now;
        d.node.clone_from(&self.node);
        d.run = None;
        d.outcome = Outcome::Pending;
        d.host_calls.clear();
        d.reasoning = Default::default();
        d.claim = Some(claim_record(&claim));
        d.policy.decided_at = now;
        d.policy.checks.retain(|c| c.policy != "claim");
        d.policy.checks.push(Check {
            policy: "claim",
            passed: true,
            detail: format!(
                "took over episode {} from node {}: its lease expired at {} and the node stopped (decision {} {})",
                claim.episode,
                holder.node,
                rfc3339(holder.lease_until),
                holder.decision,
                if started {
                    "had started its run"
                } else {
                    "had not started a run"
                }
            ),
        });
        self.interrupt_first(first, holder, &d.id, now);
        if started && !idempotent {
            d.policy.verdict = Verdict::Suppressed;
            d.policy.reason = format!(
                "took over episode {} from node {}, not run again: its run started and was cut short, and the action is not declared idempotent",
                claim.episode, holder.node
            );
            self.finish_without_run(d, now);
            return;
        }
        d.policy.verdict = Verdict::Allowed;
        d.policy.reason = format!(
            "took over episode {} from node {}",
            claim.episode, holder.node
        );
        DecisionMade {
            rule: &d.rule,
            verdict: d.policy.verdict,
            reason: &d.policy.reason,
        }
        .emit(&self.metrics);
        // The run counts toward this replica's cooldown and rate, as one
        // that passed the policies here would.
        self.state
            .lock()
            .policies
            .entry(rule.name.clone())
            .or_default()
            .observe(&d);
        let alert = alert_value(&rule, &d, None);
        drop(self.start(
            Prepared {
                rule,
                decision: d,
                alert,
                escalation: false,
                intent: None,
                claim_first: false,
            },
            now,
        ));
    }

    /// Marks `holder`'s decision, if its run was cut short, interrupted:
    /// this replica took its episode over in decision `by`.
    fn interrupt_first(&self, first: Option<Decision>, holder: &Claim, by: &str, now: i64) {
        let Some(mut first) = first.filter(|f| {
            f.run
                .as_ref()
                .is_some_and(|r| r.status == RunStatus::Running)
        }) else {
            return;
        };
        if let Some(run) = first.run.as_mut() {
            run.status = RunStatus::Interrupted;
            run.error = Some(RunError {
                kind: "interrupted",
                message: format!(
                    "node {} stopped before recording the result; node {} took the episode over in decision {by}",
                    holder.node, self.node
                ),
            });
        }
        first.outcome = Outcome::None;
        first.updated_at = now;
        self.record(&first, Stage::Interrupted);
        let mut spans = action_spans(&first);
        spans.extend(closing_spans(&first));
        self.sink.emit(spans, now, &self.metrics);
    }

    /// A run this node's previous process left interrupted: claims its
    /// episode again before it runs again. `None` when another replica
    /// took it over (the run is then marked interrupted, not run).
    pub(super) async fn reclaim(&self, d: &Decision) -> Result<Option<ClaimRecord>, String> {
        let (Some(cluster), Some(claim)) = (self.cluster.as_ref(), d.claim.as_ref()) else {
            return Ok(d.claim.clone());
        };
        let request = request(d, None, Some(claim.episode));
        match cluster.reclaim(&request, claim.episode).await {
            Ok(Claimed::Won { claim, .. }) => Ok(Some(claim_record(&claim))),
            Ok(Claimed::Lost { holder }) => Err(format!(
                "node {} took the episode over before this node restarted",
                holder.node
            )),
            Err(e) => Err(format!("the episode could not be claimed again: {e}")),
        }
    }
}
