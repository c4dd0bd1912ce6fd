//! Alert instances and their state machine, as Prometheus defines it:
//! inactive → pending (while `for` has not elapsed) → firing → resolved
//! (once the instance has not matched for `keep_firing_for`). A resolved or
//! vanished instance that matches again starts a new episode.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

/// How long a resolved instance stays visible before it is forgotten.
pub const RESOLVED_RETENTION: Duration = Duration::from_secs(15 * 60);
/// Transitions kept per instance, and per rule for vanished instances.
pub const TRANSITIONS_KEPT: usize = 32;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
    Resolved,
}

impl AlertState {
    pub fn name(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One row of a rule's answer: its identity and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub labels: BTreeMap<String, String>,
    pub values: Map<String, Value>,
}

/// A change of an instance's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// Evaluation time (UTC nanoseconds) that caused it.
    pub at: i64,
    /// Sequence number of that evaluation of the rule.
    pub evaluation: u64,
    pub from: AlertState,
    pub to: AlertState,
    /// The instance's values then (empty when it stopped matching).
    pub values: Map<String, Value>,
}

/// One alert instance of a rule.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub values: Map<String, Value>,
    pub state: AlertState,
    /// Counts the instance's episodes: each start of a pending or firing
    /// spell after inactivity or resolution is a new one.
    pub episode: u64,
    /// When the current episode started matching.
    pub active_since: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    /// Last evaluation at which the query returned this instance.
    pub last_seen: i64,
    pub transitions: VecDeque<Transition>,
}

impl Instance {
    fn record(&mut self, t: Transition) {
        if self.transitions.len() == TRANSITIONS_KEPT {
            self.transitions.pop_front();
        }
        self.transitions.push_back(t);
    }
}

/// A transition together with the instance it happened to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub episode: u64,
    /// When the episode started matching: with `episode`, what tells one
    /// episode from another (an instance forgotten and seen again starts
    /// counting episodes anew).
    pub since: i64,
    pub transition: Transition,
}

/// The settings of a rule that drive its state machine.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub for_: Duration,
    pub keep_firing_for: Duration,
    /// The evaluation's window includes a time this process was down:
    /// telemetry of that time may be missing, so an instance that does not
    /// match keeps its state (no resolution, no vanishing) rather than take
    /// the gap for a recovery.
    pub held: bool,
}

/// The instances of one rule.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RuleState {
    pub instances: BTreeMap<String, Instance>,
    /// Transitions of instances that are gone (pending that vanished,
    /// resolved that expired), most recent last.
    pub vanished: VecDeque<Event>,
    pub evaluations: u64,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl RuleState {
    /// Applies the answer of one evaluation at `now`; returns what changed.
    pub fn apply(&mut self, timing: Timing, now: i64, matches: Vec<(String, Match)>) -> Vec<Event> {
        self.apply_counting(timing, now, matches).0
    }

    /// [`RuleState::apply`], and how many instances were held because the
    /// window includes an outage.
    pub fn apply_counting(
        &mut self,
        timing: Timing,
        now: i64,
        matches: Vec<(String, Match)>,
    ) -> (Vec<Event>, usize) {
        let mut held = 0;
        self.evaluations += 1;
        let evaluation = self.evaluations;
        let mut events = Vec::new();
        let mut seen = std::collections::BTreeSet::new();

        for (fingerprint, m) in matches {
            seen.insert(fingerprint.clone());
            let instance = self
                .instances
                .entry(fingerprint.clone())
                .or_insert_with(|| Instance {
                    fingerprint: fingerprint.clone(),
                    labels: m.labels.clone(),
                    values: Map::new(),
                    state: AlertState::Inactive,
                    episode: 0,
                    active_since: now,
                    fired_at: None,
                    resolved_at: None,
                    last_seen: now,
                    transitions: VecDeque::new(),
                });
            instance.values = m.values;
            instance.last_seen = now;
            let from = instance.state;
            if matches!(from, AlertState::Inactive | AlertState::Resolved) {
                instance.episode += 1;
                instance.active_since = now;
                instance.fired_at = None;
                instance.resolved_at = None;
            }
            let to = match from {
                AlertState::Firing => AlertState::Firing,
                _ if now - instance.active_since >= nanos(timing.for_) => AlertState::Firing,
                _ => AlertState::Pending,
            };
            if to != from {
                if to == AlertState::Firing {
                    instance.fired_at = Some(now);
                }
                instance.state = to;
                let t = Transition {
                    at: now,
                    evaluation,
                    from,
                    to,
                    values: instance.values.clone(),
                };
                instance.record(t.clone());
                events.push(Event {
                    fingerprint: fingerprint.clone(),
                    labels: instance.labels.clone(),
                    episode: instance.episode,
                    since: instance.active_since,
                    transition: t,
                });
            }
        }

        let mut gone = Vec::new();
        for (fingerprint, instance) in &mut self.instances {
            if seen.contains(fingerprint) {
                continue;
            }
            if timing.held && matches!(instance.state, AlertState::Pending | AlertState::Firing) {
                held += 1;
                continue;
            }
            let to = match instance.state {
                AlertState::Pending => AlertState::Inactive,
                AlertState::Firing if now - instance.last_seen < nanos(timing.keep_firing_for) => {
                    continue;
                }
                AlertState::Firing => AlertState::Resolved,
                AlertState::Resolved => {
                    if now - instance.resolved_at.unwrap_or(now) >= nanos(RESOLVED_RETENTION) {
                        gone.push(fingerprint.clone());
                    }
                    continue;
                }
                AlertState::Inactive => {
                    gone.push(fingerprint.clone());
                    continue;
                }
            };
            let from = instance.state;
            instance.state = to;
            if to == AlertState::Resolved {
                instance.resolved_at = Some(now);
            }
            let t = Transition {
                at: now,
                evaluation,
                from,
                to,
                values: Map::new(),
            };
            instance.record(t.clone());
            let event = Event {
                fingerprint: fingerprint.clone(),
                labels: instance.labels.clone(),
                episode: instance.episode,
                since: instance.active_since,
                transition: t,
            };
            if to == AlertState::Inactive {
                gone.push(fingerprint.clone());
                if self.vanished.len() == TRANSITIONS_KEPT {
                    self.vanished.pop_front();
                }
                self.vanished.push_back(event.clone());
            }
            events.push(event);
        }
        for fingerprint in gone {
            self.instances.remove(&fingerprint);
        }
        (events, held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn m(v: f64) -> Vec<(String, Match)> {
        let mut values = Map::new();
        values.insert("v".into(), v.into());
        vec![(
            "fp".into(),
            Match {
                labels: BTreeMap::new(),
                values,
            },
        )]
    }

    fn states(events: &[Event]) -> Vec<(AlertState, AlertState)> {
        events
            .iter()
            .map(|e| (e.transition.from, e.transition.to))
            .collect()
    }

    #[test]
    fn pending_then_firing_then_resolved_then_a_new_episode() {
        use AlertState::*;
        let timing = Timing {
            for_: Duration::from_secs(10),
            keep_firing_for: Duration::ZERO,
            held: false,
        };
        let mut s = RuleState::default();
        assert_eq!(states(&s.apply(timing, 0, m(1.0))), [(Inactive, Pending)]);
        assert_eq!(states(&s.apply(timing, 5 * S, m(2.0))), []);
        assert_eq!(
            states(&s.apply(timing, 10 * S, m(3.0))),
            [(Pending, Firing)]
        );
        assert_eq!(s.instances["fp"].fired_at, Some(10 * S));
        assert_eq!(s.instances["fp"].values["v"], 3.0);
        assert_eq!(
            states(&s.apply(timing, 15 * S, vec![])),
            [(Firing, Resolved)]
        );
        let e = s.apply(timing, 20 * S, m(1.0));
        assert_eq!(states(&e), [(Resolved, Pending)]);
        assert_eq!(e[0].episode, 2);
        assert_eq!(s.instances["fp"].transitions.len(), 4);
    }

    #[test]
    fn a_pending_instance_that_vanishes_is_forgotten() {
        let timing = Timing {
            for_: Duration::from_secs(60),
            keep_firing_for: Duration::ZERO,
            held: false,
        };
        let mut s = RuleState::default();
        s.apply(timing, 0, m(1.0));
        let e = s.apply(timing, S, vec![]);
        assert_eq!(states(&e), [(AlertState::Pending, AlertState::Inactive)]);
        assert!(s.instances.is_empty());
        assert_eq!(s.vanished.len(), 1);
    }

    #[test]
    fn keep_firing_for_holds_a_firing_instance() {
        use AlertState::*;
        let timing = Timing {
            for_: Duration::ZERO,
            keep_firing_for: Duration::from_secs(30),
            held: false,
        };
        let mut s = RuleState::default();
        assert_eq!(states(&s.apply(timing, 0, m(1.0))), [(Inactive, Firing)]);
        assert_eq!(states(&s.apply(timing, 20 * S, vec![])), []);
        assert_eq!(states(&s.apply(timing, 29 * S, vec![])), []);
        assert_eq!(
            states(&s.apply(timing, 30 * S, vec![])),
            [(Firing, Resolved)]
        );
    }

    #[test]
    fn resolved_instances_are_forgotten_after_the_retention() {
        let timing = Timing {
            for_: Duration::ZERO,
            keep_firing_for: Duration::ZERO,
            held: false,
        };
        let mut s = RuleState::default();
        s.apply(timing, 0, m(1.0));
        s.apply(timing, S, vec![]);
        s.apply(timing, S + nanos(RESOLVED_RETENTION) - 1, vec![]);
        assert_eq!(s.instances.len(), 1);
        s.apply(timing, S + nanos(RESOLVED_RETENTION), vec![]);
        assert!(s.instances.is_empty());
    }

    #[test]
    fn a_window_over_an_outage_resolves_nothing_and_forgets_nothing() {
        use AlertState::*;
        let timing = Timing {
            for_: Duration::from_secs(10),
            keep_firing_for: Duration::ZERO,
            held: false,
        };
        let held = Timing {
            held: true,
            ..timing
        };
        let mut s = RuleState::default();
        s.apply(timing, 0, m(1.0));
        s.apply(timing, 10 * S, m(1.0));
        assert_eq!(s.instances["fp"].state, Firing);
        // A second instance, pending when the process went down.
        let mut both = m(1.0);
        both.push((
            "other".into(),
            Match {
                labels: BTreeMap::new(),
                values: Map::new(),
            },
        ));
        s.apply(timing, 11 * S, both);
        assert_eq!(s.instances["other"].state, Pending);
        // After the restart the window holds the gap: neither matches, and
        // nothing changes.
        let (events, n) = s.apply_counting(held, 20 * S, vec![]);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(n, 2);
        assert_eq!(s.instances["fp"].state, Firing);
        assert_eq!(s.instances["other"].state, Pending);
        assert_eq!(s.instances["fp"].episode, 1);
        // Once the window is past the gap, what does not match resolves.
        assert_eq!(
            states(&s.apply(timing, 30 * S, vec![])),
            [(Firing, Resolved), (Pending, Inactive)]
        );
    }
}
