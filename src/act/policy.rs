//! Policies between an alert and its action, checked in order, each
//! recorded whether it passes or not:
//!
//! 1. `episode`: an instance acts once per episode and trigger;
//! 2. `cooldown`: after acting on an instance, not again for `cooldown`;
//! 3. `rate_limit`: at most `max_per_hour` runs of the rule per rolling hour;
//! 4. `concurrency`: at most `max_concurrent` runs of the rule at once, and
//!    `[actions] max_concurrent` over all rules;
//! 5. `approval`: with `approval = "required"`, the run waits for a person;
//! 6. `dry_run`: noted, not a stop.
//!
//! State is per rule name and survives reloads of the rule. Bounded: entries
//! of instances not seen for a day are dropped by [`PolicyState::prune`].

use std::collections::{HashMap, VecDeque};

use super::config::{Approval, CompiledAction, Trigger};
use crate::decisions::{Check, Decision, Policy, Verdict};

const HOUR: i64 = 3_600_000_000_000;
const DAY: i64 = 24 * HOUR;

/// One rule's policy state.
#[derive(Debug, Default, Clone)]
pub struct PolicyState {
    /// Per instance and trigger: the last episode acted on, and when that
    /// episode started.
    acted: HashMap<(String, Trigger), (u64, i64)>,
    /// Per instance: when it was last acted on.
    last_action: HashMap<String, i64>,
    /// Start times of the runs in the last hour.
    recent: VecDeque<i64>,
    /// Runs in progress.
    pub running: usize,
}

/// Formats UTC nanoseconds as RFC 3339, for reasons people read.
pub fn rfc3339(t: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(t).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// What a check needs to know about the instance.
pub struct Subject<'a> {
    pub fingerprint: &'a str,
    pub episode: u64,
    /// When the episode started matching.
    pub since: i64,
    pub trigger: Trigger,
}

impl PolicyState {
    /// Checks the policies for a run at `now`. When they pass, the run is
    /// counted (episode, cooldown, rate) as if it started now; concurrency
    /// is taken by [`PolicyState::start`] when it really starts.
    pub fn check(
        &mut self,
        action: &CompiledAction,
        subject: &Subject<'_>,
        now: i64,
        global_running: usize,
        global_max: usize,
    ) -> Policy {
        let mut checks = Vec::new();
        let stop = |checks: Vec<Check>, reason: String| Policy {
            verdict: Verdict::Suppressed,
            reason: format!("suppressed: {reason}"),
            checks,
            dry_run: action.dry_run,
            approval: None,
            decided_at: now,
        };

        // Escalations answer an earlier decision: not deduplicated or cooled down.
        if subject.trigger != Trigger::Ineffective {
            let key = (subject.fingerprint.to_owned(), subject.trigger);
            let repeat = subject.trigger == Trigger::Repeat;
            match self.acted.get(&key) {
                Some(&(episode, since))
                    if since == subject.since && episode >= subject.episode && !repeat =>
                {
                    let detail = format!(
                        "already acted on {} of episode {}",
                        subject.trigger.name(),
                        subject.episode
                    );
                    checks.push(Check {
                        policy: "episode",
                        passed: false,
                        detail: detail.clone(),
                    });
                    return stop(checks, detail);
                }
                _ => checks.push(Check {
                    policy: "episode",
                    passed: true,
                    detail: format!(
                        "first {} of episode {}",
                        subject.trigger.name(),
                        subject.episode
                    ),
                }),
            }
            if !action.cooldown.is_zero() {
                let last = self.last_action.get(subject.fingerprint).copied();
                match last {
                    Some(last) if now < last.saturating_add(nanos(action.cooldown)) => {
                        let until = rfc3339(last.saturating_add(nanos(action.cooldown)));
                        checks.push(Check {
                            policy: "cooldown",
                            passed: false,
                            detail: format!(
                                "acted at {}, cooling down until {until}",
                                rfc3339(last)
                            ),
                        });
                        return stop(checks, format!("cooldown until {until}"));
                    }
                    _ => checks.push(Check {
                        policy: "cooldown",
                        passed: true,
                        detail: match last {
                            Some(last) => format!("last acted at {}", rfc3339(last)),
                            None => "never acted on this instance".into(),
                        },
                    }),
                }
            }
        }
        while self.recent.front().is_some_and(|&t| t <= now - HOUR) {
            self.recent.pop_front();
        }
        if let Some(max) = action.max_per_hour {
            let n = self.recent.len();
            if n >= max as usize {
                let until = rfc3339(self.recent.front().copied().unwrap_or(now) + HOUR);
                checks.push(Check {
                    policy: "rate_limit",
                    passed: false,
                    detail: format!("{n} runs in the last hour, the limit is {max}"),
                });
                return stop(
                    checks,
                    format!("rate limit of {max} per hour until {until}"),
                );
            }
            checks.push(Check {
                policy: "rate_limit",
                passed: true,
                detail: format!("{n} of {max} runs in the last hour"),
            });
        }
        if let Some(reason) = self.concurrency_full(action, global_running, global_max) {
            checks.push(Check {
                policy: "concurrency",
                passed: false,
                detail: reason.clone(),
            });
            return stop(checks, reason);
        }
        checks.push(Check {
            policy: "concurrency",
            passed: true,
            detail: format!("{} of {} running", self.running, action.max_concurrent),
        });

        // From here the run is decided (or waits for a person): count it.
        if subject.trigger != Trigger::Ineffective {
            self.acted.insert(
                (subject.fingerprint.to_owned(), subject.trigger),
                (subject.episode, subject.since),
            );
            self.last_action.insert(subject.fingerprint.to_owned(), now);
        }
        self.recent.push_back(now);

        let (verdict, reason) = match action.approval {
            Approval::Required => {
                checks.push(Check {
                    policy: "approval",
                    passed: false,
                    detail: format!(
                        "waiting for approval until {}",
                        rfc3339(now.saturating_add(nanos(action.approval_expiry)))
                    ),
                });
                (
                    Verdict::AwaitingApproval,
                    "awaiting approval: POST /api/v1/approvals/{id}".to_owned(),
                )
            }
            Approval::None => (Verdict::Allowed, "every policy passed".to_owned()),
        };
        if action.dry_run {
            checks.push(Check {
                policy: "dry_run",
                passed: true,
                detail: "host calls are recorded, not performed".into(),
            });
        }
        Policy {
            verdict,
            reason,
            checks,
            dry_run: action.dry_run,
            approval: None,
            decided_at: now,
        }
    }

    /// Why a run cannot start now, if it cannot.
    pub fn concurrency_full(
        &self,
        action: &CompiledAction,
        global_running: usize,
        global_max: usize,
    ) -> Option<String> {
        if self.running >= action.max_concurrent {
            return Some(format!(
                "concurrency: {} runs of this rule already in progress (max_concurrent = {})",
                self.running, action.max_concurrent
            ));
        }
        if global_running >= global_max {
            return Some(format!(
                "concurrency: {global_running} actions already in progress over all rules ([actions] max_concurrent = {global_max})"
            ));
        }
        None
    }

    /// Counts a decision read back from the memory as [`PolicyState::check`]
    /// counted it when it was made: a restart neither forgets an episode
    /// acted on, nor a cooldown, nor the runs of the last hour.
    pub fn restore(&mut self, d: &Decision) {
        // Counted when every policy up to approval passed.
        if d.policy
            .checks
            .iter()
            .any(|c| !c.passed && c.policy != "approval")
        {
            return;
        }
        if d.trigger != Trigger::Ineffective {
            self.acted.insert(
                (d.fingerprint.clone(), d.trigger),
                (d.episode, d.detection.since),
            );
            self.last_action.insert(d.fingerprint.clone(), d.at);
        }
        let at = self.recent.partition_point(|&t| t <= d.at);
        self.recent.insert(at, d.at);
    }

    /// Counts a run another replica started (its intent, read from its
    /// decision log): cooldowns and the hourly rate hold across the
    /// cluster. Episodes are not touched: each replica numbers its own, and
    /// claims keep an episode to one action.
    pub fn observe(&mut self, d: &Decision) {
        if d.trigger != Trigger::Ineffective {
            let last = self
                .last_action
                .entry(d.fingerprint.clone())
                .or_insert(d.at);
            *last = (*last).max(d.at);
        }
        let at = self.recent.partition_point(|&t| t <= d.at);
        self.recent.insert(at, d.at);
    }

    /// Takes back what [`PolicyState::check`] counted for a run that did
    /// not happen (its intent could not be recorded): the episode can be
    /// acted on again, and the run counts toward no cooldown or rate.
    pub fn forget(&mut self, d: &Decision) {
        let key = (d.fingerprint.clone(), d.trigger);
        if self.acted.get(&key) == Some(&(d.episode, d.detection.since)) {
            self.acted.remove(&key);
        }
        self.uncount(d);
    }

    /// Takes back the run [`PolicyState::check`] counted toward cooldown
    /// and rate, keeping the episode acted on: another replica claimed it
    /// and acts, and its run is counted when its intent is read
    /// ([`PolicyState::observe`]).
    pub fn uncount(&mut self, d: &Decision) {
        if self.last_action.get(&d.fingerprint) == Some(&d.at) {
            self.last_action.remove(&d.fingerprint);
        }
        if let Some(i) = self.recent.iter().rposition(|&t| t == d.at) {
            self.recent.remove(i);
        }
    }

    /// Forgets instances not acted on for a day.
    pub fn prune(&mut self, now: i64) {
        self.last_action.retain(|_, t| *t > now - DAY);
        let live: std::collections::HashSet<&String> = self.last_action.keys().collect();
        self.acted.retain(|(fp, _), _| live.contains(fp));
    }

    /// What a snapshot of the memory keeps: this state as of `now`, pruned
    /// as [`PolicyState::prune`] and the hourly window would, sorted.
    pub fn snapshot(&self, now: i64) -> PolicySnapshot {
        let mut copy = PolicySnapshot {
            acted: self
                .acted
                .iter()
                .map(|((fp, t), (episode, since))| (fp.clone(), *t, *episode, *since))
                .collect(),
            last_action: self
                .last_action
                .iter()
                .filter(|(_, t)| **t > now - DAY)
                .map(|(fp, t)| (fp.clone(), *t))
                .collect(),
            recent: self
                .recent
                .iter()
                .copied()
                .filter(|t| *t > now - HOUR)
                .collect(),
        };
        let live: std::collections::HashSet<&String> =
            copy.last_action.iter().map(|(fp, _)| fp).collect();
        let acted: Vec<_> = copy
            .acted
            .iter()
            .filter(|(fp, ..)| live.contains(fp))
            .cloned()
            .collect();
        copy.acted = acted;
        copy.acted.sort();
        copy.last_action.sort();
        copy
    }

    /// The state a snapshot kept.
    pub fn from_snapshot(s: &PolicySnapshot) -> Self {
        Self {
            acted: s
                .acted
                .iter()
                .map(|(fp, t, episode, since)| ((fp.clone(), *t), (*episode, *since)))
                .collect(),
            last_action: s.last_action.iter().cloned().collect(),
            recent: s.recent.iter().copied().collect(),
            running: 0,
        }
    }

    /// Counts another replica's own runs, from its snapshot, as
    /// [`PolicyState::observe`] counts them one by one: its cooldowns and
    /// its runs of the last hour hold here too; its episodes are its own.
    pub fn absorb(&mut self, other: &PolicySnapshot) {
        for (fp, t) in &other.last_action {
            let last = self.last_action.entry(fp.clone()).or_insert(*t);
            *last = (*last).max(*t);
        }
        for t in &other.recent {
            let at = self.recent.partition_point(|x| x <= t);
            self.recent.insert(at, *t);
        }
    }
}

/// A rule's policy state as a memory snapshot keeps it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicySnapshot {
    /// (instance, trigger, episode acted on, when that episode started).
    pub acted: Vec<(String, Trigger, u64, i64)>,
    /// (instance, last acted on).
    pub last_action: Vec<(String, i64)>,
    /// Start times of the runs in the last hour.
    pub recent: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::act::config::{ActionFile, ActionLimits, compile};

    const S: i64 = 1_000_000_000;

    fn action(settings: &str) -> CompiledAction {
        #[derive(serde::Deserialize)]
        struct Rule {
            action: ActionFile,
        }
        let text = format!("[action]\ninline = \"1\"\n{settings}");
        let rule: Rule = toml::from_str(&text).unwrap();
        compile(
            std::path::Path::new("r.toml"),
            &text,
            &rule.action,
            &ActionLimits::default(),
            &mut sha2::Sha256::default(),
        )
        .unwrap()
    }

    fn subject(episode: u64) -> Subject<'static> {
        Subject {
            fingerprint: "fp",
            episode,
            since: 0,
            trigger: Trigger::Firing,
        }
    }

    #[test]
    fn once_per_episode() {
        let a = action("");
        let mut p = PolicyState::default();
        assert_eq!(p.check(&a, &subject(1), 0, 0, 16).verdict, Verdict::Allowed);
        let second = p.check(&a, &subject(1), S, 0, 16);
        assert_eq!(second.verdict, Verdict::Suppressed);
        assert_eq!(
            second.reason,
            "suppressed: already acted on firing of episode 1"
        );
        assert_eq!(
            p.check(&a, &subject(2), 2 * S, 0, 16).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn cooldown_spans_episodes() {
        let a = action("cooldown = \"5m\"");
        let mut p = PolicyState::default();
        assert!(p.check(&a, &subject(1), 0, 0, 16).verdict.runs());
        let cooled = p.check(&a, &subject(2), 60 * S, 0, 16);
        assert_eq!(cooled.verdict, Verdict::Suppressed);
        assert_eq!(
            cooled.reason,
            "suppressed: cooldown until 1970-01-01T00:05:00Z"
        );
        assert!(p.check(&a, &subject(3), 300 * S, 0, 16).verdict.runs());
    }

    #[test]
    fn rate_limit_is_a_rolling_hour() {
        let a = action("max_per_hour = 2");
        let mut p = PolicyState::default();
        let other = |fp: &'static str| Subject {
            fingerprint: fp,
            episode: 1,
            since: 0,
            trigger: Trigger::Firing,
        };
        assert!(p.check(&a, &other("a"), 0, 0, 16).verdict.runs());
        assert!(p.check(&a, &other("b"), 10 * S, 0, 16).verdict.runs());
        let limited = p.check(&a, &other("c"), 20 * S, 0, 16);
        assert_eq!(limited.verdict, Verdict::Suppressed);
        assert!(
            limited.reason.contains("rate limit of 2 per hour"),
            "{}",
            limited.reason
        );
        assert!(p.check(&a, &other("c"), HOUR + S, 0, 16).verdict.runs());
    }

    #[test]
    fn concurrency_per_rule_and_overall() {
        let a = action("max_concurrent = 1");
        let mut p = PolicyState {
            running: 1,
            ..Default::default()
        };
        let busy = p.check(&a, &subject(1), 0, 1, 16);
        assert_eq!(busy.verdict, Verdict::Suppressed);
        assert!(busy.reason.contains("max_concurrent = 1"));
        p.running = 0;
        let full = p.check(&a, &subject(1), 0, 16, 16);
        assert!(full.reason.contains("over all rules"), "{}", full.reason);
        assert!(p.check(&a, &subject(1), 0, 0, 16).verdict.runs());
    }

    #[test]
    fn approval_and_dry_run_are_recorded() {
        let a = action("approval = \"required\"\napproval_expiry = \"10m\"\ndry_run = true");
        let mut p = PolicyState::default();
        let policy = p.check(&a, &subject(1), 0, 0, 16);
        assert_eq!(policy.verdict, Verdict::AwaitingApproval);
        let names: Vec<&str> = policy.checks.iter().map(|c| c.policy).collect();
        assert_eq!(names, ["episode", "concurrency", "approval", "dry_run"]);
        assert!(policy.checks[2].detail.contains("00:10:00Z"));
        assert_eq!(a.approval_expiry, Duration::from_secs(600));
    }
}
