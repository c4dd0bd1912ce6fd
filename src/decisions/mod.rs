//! Decisions: what the engine saw, considered, chose and did, and whether it
//! worked, kept as records and emitted as rationale traces.
//!
//! - [`Decision`]: one decision's whole path, as the API shows it.
//! - [`DecisionLog`]: the recent decisions, newest first, bounded.
//! - [`trace`]: a decision as OpenTelemetry spans (the rationale trace).
//! - [`export`]: sends those spans to an OTLP endpoint, batched, retried.
//! - [`memory`]: versioned facts scripts remember.

pub mod export;
pub mod memory;
pub mod trace;

use std::collections::{BTreeMap, HashMap};

use parking_lot::RwLock;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::act::config::Trigger;
use crate::act::host::HostCall;
use crate::act::sandbox::Reasoning;
use crate::rules::AlertState;

/// Names the code compares against (`policy`, `kind`, `module`) are
/// `&'static str`; read back from the memory they are interned, once each.
pub fn static_name(name: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

/// [`Check`] as stored.
#[derive(serde::Deserialize)]
struct CheckRead {
    policy: String,
    passed: bool,
    detail: String,
}

impl From<CheckRead> for Check {
    fn from(c: CheckRead) -> Self {
        Self {
            policy: static_name(c.policy),
            passed: c.passed,
            detail: c.detail,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Check {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <CheckRead as serde::Deserialize>::deserialize(d).map(Into::into)
    }
}

/// [`RunError`] as stored.
#[derive(serde::Deserialize)]
struct RunErrorRead {
    kind: String,
    message: String,
}

impl From<RunErrorRead> for RunError {
    fn from(e: RunErrorRead) -> Self {
        Self {
            kind: static_name(e.kind),
            message: e.message,
        }
    }
}

impl<'de> serde::Deserialize<'de> for RunError {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <RunErrorRead as serde::Deserialize>::deserialize(d).map(Into::into)
    }
}

/// Decisions the log keeps (the dashboard shows the last 1000 actions).
pub const DECISIONS_KEPT: usize = 1000;

/// What the rule saw.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Detection {
    pub sql: String,
    /// The evaluation's window (UTC nanoseconds).
    pub window_start: i64,
    pub window_end: i64,
    /// Rows the whole evaluation returned.
    pub rows: usize,
    /// The instance's state when the decision was made.
    pub state: AlertState,
    /// When the instance's episode started matching.
    pub since: i64,
    pub values: Map<String, Value>,
    /// The instance's rows, up to the action's `evidence_rows`.
    pub evidence: Vec<Map<String, Value>>,
    /// Trace ids found in the evidence (`trace_id` and `trace_ids` columns).
    pub evidence_trace_ids: Vec<String>,
}

/// Where a policy check left the decision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every policy passed: the action runs.
    Allowed,
    /// A policy stopped it (episode already acted on, cooldown, rate,
    /// concurrency).
    Suppressed,
    AwaitingApproval,
    /// A person approved it: the action runs.
    Approved,
    Denied,
    /// Nobody answered the approval request in time.
    Expired,
    /// Another replica claimed the episode first and acts on it.
    ClaimedByOther,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Suppressed => "suppressed",
            Verdict::AwaitingApproval => "awaiting_approval",
            Verdict::Approved => "approved",
            Verdict::Denied => "denied",
            Verdict::Expired => "expired",
            Verdict::ClaimedByOther => "claimed_by_other",
        }
    }

    /// Whether the action runs.
    pub fn runs(self) -> bool {
        matches!(self, Verdict::Allowed | Verdict::Approved)
    }
}

/// One policy's verdict on a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// `episode`, `cooldown`, `rate_limit`, `concurrency`, `approval`,
    /// `dry_run`.
    pub policy: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// A human approval, asked and (perhaps) answered.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ApprovalRecord {
    pub requested_at: i64,
    pub expires_at: i64,
    pub answered_at: Option<i64>,
    pub approved: Option<bool>,
    pub by: Option<String>,
    pub comment: Option<String>,
}

/// The policies' verdict.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Policy {
    pub verdict: Verdict,
    /// Why, in a sentence: "suppressed: cooldown until 2024-01-01T00:05:00Z".
    pub reason: String,
    pub checks: Vec<Check>,
    pub dry_run: bool,
    pub approval: Option<ApprovalRecord>,
    /// When the verdict was final (after approval, if one was needed).
    pub decided_at: i64,
}

/// How the run went.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    /// The script chose to do nothing (`skip`).
    Skipped,
    Failed,
    /// The process stopped (crash, kill) after the intent was recorded and
    /// before the result was: whether the action took effect is unknown.
    /// Not run again unless the action is declared `idempotent`.
    Interrupted,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Skipped => "skipped",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunError {
    /// A stable name: `deadline`, `operations`, `call_depth`, `too_large`,
    /// `capability_denied`, `host_timeout`, `host_error`, `script_error`.
    pub kind: &'static str,
    pub message: String,
}

/// What happened when the action ran.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ActionRun {
    pub script: String,
    pub status: RunStatus,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub attempts: u32,
    /// The script's last value.
    pub value: Value,
    pub error: Option<RunError>,
    pub operations: u64,
}

/// Whether the action worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not known yet: awaiting approval, running, or waiting to verify.
    Pending,
    /// The instance resolved within the expected time.
    Effective,
    /// It did not.
    Ineffective,
    /// Nothing to verify: nothing was done (suppressed, denied, expired,
    /// skipped, failed, dry-run), or the action ran on resolve.
    None,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Effective => "effective",
            Outcome::Ineffective => "ineffective",
            Outcome::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Some(match s {
            "pending" => Outcome::Pending,
            "effective" => Outcome::Effective,
            "ineffective" => Outcome::Ineffective,
            "none" => Outcome::None,
            _ => return None,
        })
    }
}

/// The outcome check.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Verification {
    /// The instance should have resolved by then (UTC nanoseconds).
    pub deadline: i64,
    /// What was expected: the script's `expect`, or the rule's
    /// `verify_within`.
    pub expected: String,
    pub checked_at: Option<i64>,
    /// When the instance resolved, if it did.
    pub resolved_at: Option<i64>,
    /// The escalation decision started because the action was ineffective.
    pub escalation: Option<String>,
}

/// One decision's whole path.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Decision {
    pub id: String,
    /// The rationale trace's id (lowercase hex).
    pub trace_id: String,
    pub rule: String,
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub episode: u64,
    pub trigger: Trigger,
    /// When it was triggered (UTC nanoseconds).
    pub at: i64,
    pub detection: Detection,
    pub policy: Policy,
    /// Options considered, the choice, the expectation, skip, output.
    pub reasoning: Reasoning,
    pub host_calls: Vec<HostCall>,
    pub run: Option<ActionRun>,
    pub outcome: Outcome,
    pub verification: Option<Verification>,
    /// The decision whose ineffectiveness triggered this one.
    pub escalates: Option<String>,
    /// Last change (UTC nanoseconds).
    pub updated_at: i64,
    /// The replica that made it (its `--node`); empty outside a server.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The cluster claim on the episode, when replicas share the storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimRecord>,
}

/// What the cluster's claim on an episode said, for this decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClaimRecord {
    /// The cluster's number of the episode of (rule, fingerprint): the same
    /// on every replica, unlike the local `episode`.
    pub episode: u64,
    /// The node holding the claim (this decision's own node when it won).
    pub holder: String,
    /// When the holder claimed it (UTC nanoseconds).
    pub claimed_at: i64,
    /// The node whose claim this decision took over, its lease expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<String>,
}

/// Filters of `GET /api/v1/decisions`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub rule: Option<String>,
    pub outcome: Option<Outcome>,
    /// Only decisions changed after this version of the log (see
    /// [`DecisionLog::list_versioned`]).
    pub changed_after: Option<u64>,
    pub limit: usize,
}

/// The recent decisions, bounded to [`DECISIONS_KEPT`]; the oldest go first.
#[derive(Debug)]
pub struct DecisionLog {
    inner: RwLock<Entries>,
    changed: tokio::sync::watch::Sender<u64>,
}

/// Decisions in the order they were first recorded, and where each is.
#[derive(Debug, Default)]
struct Entries {
    by_seq: BTreeMap<u64, Decision>,
    seq_of: HashMap<String, u64>,
    next: u64,
    /// Counts changes: each upsert makes a new version of the log.
    version: u64,
    /// The version at which each decision last changed.
    changed_at: HashMap<String, u64>,
}

impl Default for DecisionLog {
    fn default() -> Self {
        Self {
            inner: RwLock::new(Entries::default()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl DecisionLog {
    /// Adds a decision or replaces the one with the same id.
    pub fn upsert(&self, decision: &Decision) {
        let version = {
            let mut e = self.inner.write();
            e.version += 1;
            let version = e.version;
            e.changed_at.insert(decision.id.clone(), version);
            match e.seq_of.get(&decision.id).copied() {
                Some(seq) => {
                    e.by_seq.insert(seq, decision.clone());
                }
                None => {
                    if e.by_seq.len() == DECISIONS_KEPT
                        && let Some((_, oldest)) = e.by_seq.pop_first()
                    {
                        e.seq_of.remove(&oldest.id);
                        e.changed_at.remove(&oldest.id);
                    }
                    let seq = e.next;
                    e.next += 1;
                    e.seq_of.insert(decision.id.clone(), seq);
                    e.by_seq.insert(seq, decision.clone());
                }
            }
            version
        };
        self.changed.send_replace(version);
    }

    pub fn get(&self, id: &str) -> Option<Decision> {
        let e = self.inner.read();
        e.seq_of.get(id).and_then(|s| e.by_seq.get(s)).cloned()
    }

    /// Newest first.
    pub fn list(&self, filter: &Filter) -> Vec<Decision> {
        self.list_versioned(filter).0
    }

    /// [`DecisionLog::list`], and the log's version it reflects: asking
    /// again with `changed_after` set to it gets exactly what changed since,
    /// with no clock involved.
    pub fn list_versioned(&self, filter: &Filter) -> (Vec<Decision>, u64) {
        let e = self.inner.read();
        let changed = |d: &Decision| {
            filter
                .changed_after
                .is_none_or(|v| e.changed_at.get(&d.id).is_some_and(|&at| at > v))
        };
        let list = e
            .by_seq
            .values()
            .rev()
            .filter(|d| filter.rule.as_ref().is_none_or(|r| &d.rule == r))
            .filter(|d| filter.outcome.is_none_or(|o| d.outcome == o))
            .filter(|d| changed(d))
            .take(filter.limit)
            .cloned()
            .collect();
        (list, e.version)
    }

    /// Changes after every update: lets tests and the dashboard wait for
    /// decisions instead of polling.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until some decision satisfies `f`, and returns it.
    pub async fn wait_for(&self, f: impl Fn(&Decision) -> bool) -> Decision {
        let mut changes = self.subscribe();
        loop {
            if let Some(d) = self.inner.read().by_seq.values().rev().find(|d| f(d)) {
                return d.clone();
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: &str, rule: &str, outcome: Outcome) -> Decision {
        Decision {
            id: id.into(),
            trace_id: String::new(),
            rule: rule.into(),
            fingerprint: String::new(),
            labels: BTreeMap::new(),
            episode: 1,
            trigger: Trigger::Firing,
            at: 0,
            detection: Detection {
                sql: String::new(),
                window_start: 0,
                window_end: 0,
                rows: 0,
                state: AlertState::Firing,
                since: 0,
                values: Map::new(),
                evidence: Vec::new(),
                evidence_trace_ids: Vec::new(),
            },
            policy: Policy {
                verdict: Verdict::Allowed,
                reason: String::new(),
                checks: Vec::new(),
                dry_run: false,
                approval: None,
                decided_at: 0,
            },
            reasoning: Reasoning::default(),
            host_calls: Vec::new(),
            run: None,
            outcome,
            verification: None,
            escalates: None,
            updated_at: 0,
            node: String::new(),
            claim: None,
        }
    }

    #[test]
    fn newest_first_filtered_updated_in_place_and_bounded() {
        let log = DecisionLog::default();
        log.upsert(&decision("a", "r1", Outcome::Pending));
        log.upsert(&decision("b", "r2", Outcome::None));
        log.upsert(&decision("a", "r1", Outcome::Effective));
        let all = log.list(&Filter {
            limit: 10,
            ..Default::default()
        });
        let ids: Vec<&str> = all.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"], "an update keeps the first position");
        assert_eq!(log.get("a").unwrap().outcome, Outcome::Effective);
        let effective = log.list(&Filter {
            outcome: Some(Outcome::Effective),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(effective.len(), 1);
        let r2 = log.list(&Filter {
            rule: Some("r2".into()),
            limit: 10,
            ..Default::default()
        });
        assert_eq!(r2[0].id, "b");
        let (_, version) = log.list_versioned(&Filter {
            limit: 1,
            ..Default::default()
        });
        log.upsert(&decision("c", "r1", Outcome::Pending));
        log.upsert(&decision("b", "r2", Outcome::Effective));
        let (changed, now) = log.list_versioned(&Filter {
            changed_after: Some(version),
            limit: 10,
            ..Default::default()
        });
        let ids: Vec<&str> = changed.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["c", "b"], "only what changed after the version given");
        assert_eq!(now, version + 2);
        for i in 0..DECISIONS_KEPT {
            log.upsert(&decision(&format!("x{i}"), "r", Outcome::None));
        }
        assert!(log.get("a").is_none(), "the oldest went first");
        assert!(log.get("b").is_none());
        assert!(log.get("x0").is_some());
        let limited = log.list(&Filter {
            limit: 3,
            ..Default::default()
        });
        assert_eq!(limited[0].id, format!("x{}", DECISIONS_KEPT - 1));
        assert_eq!(limited.len(), 3);
    }
}
