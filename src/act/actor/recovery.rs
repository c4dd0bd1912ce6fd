//! What a writer's chain adds up to for a restart, folded entry by entry:
//! the alert instances, each rule's policy state (episodes acted on,
//! cooldowns, the last hour's runs), the repeats, the decisions still open
//! (running, awaiting approval, awaiting their outcome), the last
//! [`RECENT`] decisions, and the facts as memory keeps them.
//!
//! The same fold runs at start over the entries after the latest snapshot,
//! and live over every entry as it becomes durable, which is what the
//! [`Snapshotter`] writes out every `snapshot_every` entries or
//! `snapshot_interval`: a start reads one snapshot and at most that many
//! entries, however long the history.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::act::config::Trigger;
use crate::act::policy::{PolicySnapshot, PolicyState};
use crate::decisions::memory::{Fact, MAX_VERSIONS};
use crate::decisions::{Decision, Outcome, RunStatus, Verdict};
use crate::memory::journal::{AlertChange, ChainEntry, Entry, Journal, Record, Stage, Tail};
use crate::memory::snapshot::{self, Covers};
use crate::memory::{Storage, StorageError};
use crate::rules::AlertState;

/// Decisions kept besides the open ones: what the dashboard shows.
pub const RECENT: usize = crate::decisions::DECISIONS_KEPT;

const DAY: i64 = 24 * 3_600_000_000_000;

/// A decision as its latest entry left it, and where that entry is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub stage: Stage,
    pub decision: Decision,
    pub seq: u64,
    pub hash: String,
}

impl Kept {
    /// Still to be finished after a restart: running, waiting for a person,
    /// or waiting for its outcome.
    pub fn is_open(&self) -> bool {
        let d = &self.decision;
        d.run
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Running)
            || (self.stage == Stage::AwaitingApproval
                && d.policy.verdict == Verdict::AwaitingApproval)
            || (d.outcome == Outcome::Pending && d.verification.is_some())
    }
}

/// The fold of one writer's chain; see the module docs.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub node: String,
    /// Where the chain goes on after what is folded in.
    pub tail: Tail,
    /// Entries folded in, snapshot included.
    pub entries: u64,
    /// The last transition of every instance not inactive.
    pub alerts: BTreeMap<(String, String), AlertChange>,
    pub policies: HashMap<String, PolicyState>,
    /// Per (rule, instance): the episode and time of the last run.
    pub repeats: HashMap<(String, String), (u64, i64)>,
    /// The open decisions and the last [`RECENT`], by id.
    pub decisions: HashMap<String, Kept>,
    /// Ids of the last [`RECENT`] decisions, in the order first recorded.
    recent: VecDeque<String>,
    in_recent: HashSet<String>,
    /// Per key, the versions kept (at most [`MAX_VERSIONS`]).
    pub facts: BTreeMap<String, VecDeque<Fact>>,
}

impl Recovery {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            ..Self::default()
        }
    }

    /// Folds in one durable entry of this writer's chain.
    pub fn apply(&mut self, entry: &Entry, hash: &str) {
        self.entries += 1;
        self.tail = Tail {
            next_seq: entry.seq + 1,
            prev: hash.to_owned(),
        };
        match &entry.record {
            Record::Decision { stage, decision } => {
                self.decision(*stage, decision, entry.seq, hash);
            }
            Record::Fact { fact } => {
                let versions = self.facts.entry(fact.key.clone()).or_default();
                if let Some(current) = versions.back_mut()
                    && current.valid_to.is_none()
                {
                    current.valid_to = Some(fact.valid_from);
                }
                if versions.len() == MAX_VERSIONS {
                    versions.pop_front();
                }
                versions.push_back(fact.clone());
            }
            Record::Alert { alert } => {
                let key = (alert.rule.clone(), alert.fingerprint.clone());
                if alert.to == AlertState::Inactive {
                    self.alerts.remove(&key);
                } else {
                    self.alerts.insert(key, alert.clone());
                }
            }
            Record::Start { .. } => {}
        }
    }

    fn decision(&mut self, stage: Stage, d: &Decision, seq: u64, hash: &str) {
        let first = !self.decisions.contains_key(&d.id);
        // What the policies count is decided when the decision is made; its
        // later entries (result, outcome) do not change it.
        if first {
            self.policies.entry(d.rule.clone()).or_default().restore(d);
        }
        if matches!(d.trigger, Trigger::Firing | Trigger::Repeat) && d.run.is_some() {
            self.repeats
                .insert((d.rule.clone(), d.fingerprint.clone()), (d.episode, d.at));
        }
        let kept = Kept {
            stage,
            decision: d.clone(),
            seq,
            hash: hash.to_owned(),
        };
        let open = kept.is_open();
        if first {
            self.recent.push_back(d.id.clone());
            self.in_recent.insert(d.id.clone());
            if self.recent.len() > RECENT
                && let Some(old) = self.recent.pop_front()
            {
                self.in_recent.remove(&old);
                if !self.decisions.get(&old).is_some_and(Kept::is_open) {
                    self.decisions.remove(&old);
                }
            }
        }
        if open || self.in_recent.contains(&d.id) {
            self.decisions.insert(d.id.clone(), kept);
        } else {
            self.decisions.remove(&d.id);
        }
    }

    /// The decisions kept, the open ones older than the recent ones first,
    /// then the recent in the order first recorded.
    pub fn kept(&self) -> Vec<&Kept> {
        let mut older: Vec<&Kept> = self
            .decisions
            .iter()
            .filter(|(id, _)| !self.in_recent.contains(*id))
            .map(|(_, k)| k)
            .collect();
        older.sort_by_key(|k| k.seq);
        older.extend(self.recent.iter().filter_map(|id| self.decisions.get(id)));
        older
    }

    /// Every fact version kept, in the order written.
    pub fn facts(&self) -> Vec<Fact> {
        let mut all: Vec<Fact> = self.facts.values().flatten().cloned().collect();
        all.sort_by_key(|f| f.valid_from);
        all
    }

    /// What a snapshot keeps of the facts: each key's current version, and
    /// the versions of the last day (what `memory::count` windows look at);
    /// the older ones come back once the whole history is read.
    fn recent_facts(&self, now: i64) -> Vec<Fact> {
        let mut kept: Vec<Fact> = Vec::new();
        for versions in self.facts.values() {
            let last = versions.len().saturating_sub(1);
            kept.extend(
                versions
                    .iter()
                    .enumerate()
                    .filter(|(i, f)| *i == last || f.valid_from > now - DAY)
                    .map(|(_, f)| f.clone()),
            );
        }
        kept.sort_by_key(|f| f.valid_from);
        kept
    }

    /// What a snapshot of it keeps, as of `now`.
    pub fn to_file(&self, now: i64) -> (Covers, RecoveryFile) {
        let covers = Covers {
            node: self.node.clone(),
            seq: self.tail.next_seq,
            prev: self.tail.prev.clone(),
            written_at: now,
        };
        let mut policies: BTreeMap<String, PolicySnapshot> = self
            .policies
            .iter()
            .map(|(rule, p)| (rule.clone(), p.snapshot(now)))
            .collect();
        policies.retain(|_, p| *p != PolicySnapshot::default());
        let mut repeats: Vec<(String, String, u64, i64)> = self
            .repeats
            .iter()
            .filter(|(_, (_, at))| *at > now - DAY)
            .map(|((r, f), (e, at))| (r.clone(), f.clone(), *e, *at))
            .collect();
        repeats.sort();
        let file = RecoveryFile {
            entries: self.entries,
            alerts: self
                .alerts
                .values()
                // A resolution a day old settles nothing any more.
                .filter(|a| a.to != AlertState::Resolved || a.at > now - DAY)
                .cloned()
                .collect(),
            policies,
            repeats,
            decisions: self.kept().into_iter().cloned().collect(),
            recent: self.recent.iter().cloned().collect(),
            facts: self.recent_facts(now),
        };
        (covers, file)
    }

    /// The fold a snapshot kept, ready to go on from where it stands.
    pub fn from_file(covers: &Covers, file: RecoveryFile) -> Self {
        let mut r = Self::new(&covers.node);
        r.tail = Tail {
            next_seq: covers.seq,
            prev: covers.prev.clone(),
        };
        r.entries = file.entries;
        r.alerts = file
            .alerts
            .into_iter()
            .map(|a| ((a.rule.clone(), a.fingerprint.clone()), a))
            .collect();
        r.policies = file
            .policies
            .iter()
            .map(|(rule, p)| (rule.clone(), PolicyState::from_snapshot(p)))
            .collect();
        r.repeats = file
            .repeats
            .into_iter()
            .map(|(rule, fp, e, at)| ((rule, fp), (e, at)))
            .collect();
        r.in_recent = file.recent.iter().cloned().collect();
        r.recent = file.recent.into();
        r.decisions = file
            .decisions
            .into_iter()
            .map(|k| (k.decision.id.clone(), k))
            .collect();
        for fact in file.facts {
            r.facts.entry(fact.key.clone()).or_default().push_back(fact);
        }
        r
    }
}

/// A snapshot's payload: [`Recovery`] in plain data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryFile {
    pub entries: u64,
    pub alerts: Vec<AlertChange>,
    pub policies: BTreeMap<String, PolicySnapshot>,
    /// (rule, instance, episode, time of its last run).
    pub repeats: Vec<(String, String, u64, i64)>,
    /// The open decisions older than the recent ones, then the recent.
    pub decisions: Vec<Kept>,
    /// Ids of the recent decisions, oldest first.
    pub recent: Vec<String>,
    pub facts: Vec<Fact>,
}

/// Reads `node`'s latest snapshot and the entries after it; `Err` with the
/// first problem when what is read does not verify.
pub async fn recover(storage: &Storage, node: &str) -> Result<Recovered, StorageError> {
    let started = Instant::now();
    let (mut recovery, from_snapshot) =
        match snapshot::latest::<RecoveryFile>(storage, node).await? {
            Some((covers, file)) => (Recovery::from_file(&covers, file), Some(covers)),
            None => (Recovery::new(node), None),
        };
    let after = snapshot::read_after(storage, node, recovery.tail.clone()).await?;
    for e in &after.entries {
        recovery.apply(&e.entry, &e.hash);
    }
    Ok(Recovered {
        tail_entries: after.entries,
        problems: after.problems,
        last_object: after.last_object,
        recovery,
        from_snapshot,
        elapsed: started.elapsed(),
    })
}

/// Every writer's chain as [`recover`] reads it: this node's, and the
/// others' (replicas sharing the storage).
#[derive(Debug)]
pub struct Memories {
    pub own: Recovered,
    pub others: Vec<Recovered>,
}

impl Memories {
    /// Every writer's facts, in the order written.
    pub fn facts(&self) -> Vec<Fact> {
        let mut all: Vec<Fact> = std::iter::once(&self.own)
            .chain(&self.others)
            .flat_map(|r| r.recovery.facts.values().flatten().cloned())
            .collect();
        all.sort_by_key(|f| f.valid_from);
        all
    }

    /// Entries read, snapshots and tails, over all writers.
    pub fn entries_read(&self) -> usize {
        std::iter::once(&self.own)
            .chain(&self.others)
            .map(|r| r.tail_entries.len())
            .sum()
    }
}

/// Reads this node's chain and every other writer's, each from its latest
/// snapshot.
pub async fn recover_all(storage: &Storage, node: &str) -> Result<Memories, StorageError> {
    let own = recover(storage, node).await?;
    let mut others = Vec::new();
    for other in crate::memory::journal::nodes(storage).await? {
        if other != node {
            others.push(recover(storage, &other).await?);
        }
    }
    Ok(Memories { own, others })
}

/// What [`recover`] read of one writer.
#[derive(Debug)]
pub struct Recovered {
    pub recovery: Recovery,
    /// The snapshot it started from, if any.
    pub from_snapshot: Option<Covers>,
    /// The entries read after the snapshot.
    pub tail_entries: Vec<ChainEntry>,
    pub problems: Vec<crate::memory::journal::Problem>,
    /// The last log object read, for following the chain from there.
    pub last_object: Option<object_store::path::Path>,
    pub elapsed: Duration,
}

/// When snapshots are written: `[memory]` in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// A snapshot is written once this many entries were added since the
    /// last one: a start reads at most about this many entries.
    pub snapshot_every: u64,
    /// ... or once this much time passed with entries added.
    #[serde(with = "crate::serde_duration")]
    pub snapshot_interval: Duration,
    /// Snapshots kept per node (older ones are deleted).
    pub snapshots_kept: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            snapshot_every: 10_000,
            snapshot_interval: Duration::from_secs(600),
            snapshots_kept: 3,
        }
    }
}

/// Keeps this node's fold current and writes it out as snapshots.
#[derive(Debug)]
pub struct Snapshotter {
    storage: Storage,
    config: SnapshotConfig,
    recovery: Mutex<Recovery>,
    /// Entries folded when the last snapshot was written.
    written: AtomicU64,
}

impl Snapshotter {
    /// Folds every entry `journal` makes durable from now on into
    /// `recovery` (the fold of the chain up to where the journal starts).
    pub fn start(
        storage: Storage,
        config: SnapshotConfig,
        recovery: Recovery,
        journal: &Journal,
    ) -> Arc<Self> {
        let written = recovery.entries;
        let this = Arc::new(Self {
            storage,
            config,
            recovery: Mutex::new(recovery),
            written: AtomicU64::new(written),
        });
        let folding = Arc::downgrade(&this);
        journal.observe(move |entry, hash| {
            if let Some(s) = folding.upgrade() {
                s.recovery.lock().apply(entry, hash);
            }
        });
        this
    }

    /// Entries folded in since the last snapshot.
    pub fn pending(&self) -> u64 {
        self.recovery.lock().entries - self.written.load(Ordering::Acquire)
    }

    /// Writes a snapshot of the chain as it stands, if anything was added
    /// since the last one; returns its size. Old snapshots are pruned.
    pub async fn write(&self, now: i64) -> Result<Option<u64>, StorageError> {
        let (covers, file, entries) = {
            let recovery = self.recovery.lock();
            if recovery.entries == self.written.load(Ordering::Acquire) {
                return Ok(None);
            }
            let (covers, file) = recovery.to_file(now);
            (covers, file, recovery.entries)
        };
        let size = snapshot::write(&self.storage, &covers, &file).await?;
        self.written.store(entries, Ordering::Release);
        if let Err(e) =
            snapshot::prune(&self.storage, &covers.node, self.config.snapshots_kept).await
        {
            tracing::warn!(error = %e, "old snapshots were not deleted");
        }
        tracing::debug!(seq = covers.seq, bytes = size, "memory snapshot written");
        Ok(Some(size))
    }

    /// Writes snapshots as configured until `shutdown`, then a last one.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let pending = self.pending();
            if pending >= self.config.snapshot_every
                || (pending > 0 && last.elapsed() >= self.config.snapshot_interval)
            {
                match self.write(crate::ingest::now_nanos()).await {
                    Ok(_) => last = Instant::now(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write a memory snapshot; the next tick tries again")
                    }
                }
            }
        }
    }
}
