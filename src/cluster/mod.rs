//! Replicas of one binary sharing one storage: no consensus protocol of our
//! own, only the object store's create-only writes.
//!
//! - **Heartbeats**: each replica overwrites `cluster/nodes/{node}.json`
//!   every `heartbeat` with its process id and the time; a node is alive
//!   while its heartbeat is younger than the `lease`.
//! - **Claims**: before an action runs on an alert episode, the replica
//!   creates `cluster/claims/{rule}/{fingerprint}/{episode}/firing.json`
//!   (create-only). Exactly one replica's create succeeds: it acts; the
//!   others record a `claimed_by_other` decision and do not. The episode
//!   number is the cluster's, not the replica's: a replica that sees an
//!   instance start firing while the latest episode is still open (not
//!   marked `resolved`, its holder alive) is seeing that episode; otherwise
//!   it claims the next number.
//! - **Leases**: a claim protects its holder for `lease`. A replica that
//!   lost the claim and still sees the instance firing checks it; once the
//!   lease has expired, the holder is dead (its heartbeat is older than the
//!   lease or names another process) and no `done` marker says the result
//!   was recorded, it creates `takeover-{k}.json` (create-only again, so
//!   one replica takes over) and acts, marking the first attempt
//!   interrupted.
//! - **Markers**: `done` once the holder's result is durable, `resolved`
//!   once a replica saw the instance resolve, `on-resolved.json` claims the
//!   `resolved` trigger's action.
//! - [`follow`]: every replica reads every other writer's decision log, so
//!   the API, SQL and the dashboard show the whole cluster's decisions.
//!
//! Clocks: leases and heartbeats compare one node's wall clock with
//! another's, so replicas need synchronised clocks (NTP), as Kubernetes
//! nodes have; the lease should be much longer than their skew.

pub mod follow;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::act::config::Trigger;
use crate::ingest::now_nanos;
use crate::internal_events::{ClusterNodes, Metrics};
use crate::memory::{Storage, StorageError};

/// `[cluster]`: how replicas sharing the `data` storage coordinate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How long a claim on an episode protects its holder, and how long a
    /// silent node is still taken for alive: another replica takes over an
    /// episode whose claimant died only after this. Longer than a run
    /// takes to record its intent, and than the clocks' skew.
    #[serde(with = "crate::serde_duration")]
    pub lease: Duration,
    /// How often each replica writes its heartbeat. At most a third of
    /// `lease`.
    #[serde(with = "crate::serde_duration")]
    pub heartbeat: Duration,
    /// How often each replica reads the other replicas' new decisions and
    /// facts. At most half of `lease`.
    #[serde(with = "crate::serde_duration")]
    pub sync_interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            sync_interval: Duration::from_secs(2),
        }
    }
}

impl ClusterConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.sync_interval.is_zero() {
            return Err("cluster.heartbeat and cluster.sync_interval must be above zero".into());
        }
        if self.heartbeat * 3 > self.lease {
            return Err(format!(
                "cluster.heartbeat ({}) must be at most a third of cluster.lease ({}): a live node would look dead between two heartbeats",
                humantime::format_duration(self.heartbeat),
                humantime::format_duration(self.lease)
            ));
        }
        if self.sync_interval * 2 > self.lease {
            return Err(format!(
                "cluster.sync_interval ({}) must be at most half of cluster.lease ({}): a replica must have read a claimant's intent before it may take over",
                humantime::format_duration(self.sync_interval),
                humantime::format_duration(self.lease)
            ));
        }
        Ok(())
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// What a replica says of itself in `cluster/nodes/{node}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// This run of the process: a restarted node is another process.
    pub process: String,
    pub started_at: i64,
    /// When it was written (the node's clock, UTC nanoseconds).
    pub seen_at: i64,
    pub version: String,
    /// Where its API listens, as it bound it.
    pub api: String,
}

/// One claim object: who holds an episode (or took it over), since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    pub process: String,
    /// The decision that acts on it.
    pub decision: String,
    pub rule: String,
    pub fingerprint: String,
    pub trigger: Trigger,
    /// The cluster's episode number.
    pub episode: u64,
    /// The claimant's own episode number of the instance.
    pub local_episode: u64,
    /// When the claimant saw the episode start matching.
    pub since: i64,
    pub claimed_at: i64,
    pub lease_until: i64,
    /// 0 for the first claim, k for the k-th takeover.
    #[serde(default)]
    pub takeover: u32,
    /// The node whose claim this one took over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<String>,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// This replica acts. `took_over` is the dead claimant's claim.
    Won {
        claim: Claim,
        took_over: Option<Claim>,
    },
    /// Another replica holds it.
    Lost { holder: Claim },
}

/// What a replica asks to claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub rule: &'a str,
    pub fingerprint: &'a str,
    pub trigger: Trigger,
    pub decision: &'a str,
    pub local_episode: u64,
    pub since: i64,
    /// A cluster episode this replica saw resolve (its instance fired
    /// again since): closed before anything else.
    pub closed: Option<u64>,
    /// For `resolved`: the cluster episode that resolved, when known.
    pub episode: Option<u64>,
}

/// Where an episode stands, for a replica watching another's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Resolved, or its result recorded: nothing left to watch.
    Settled,
    /// Its holder is alive, or its lease runs.
    Held(Claim),
    /// Its holder died before recording a result and the lease expired.
    Abandoned(Claim),
}

/// The objects of one episode's folder.
#[derive(Debug, Default, Clone)]
struct Episode {
    firing: bool,
    resolved: bool,
    done: bool,
    takeovers: u32,
}

/// A node as `GET /api/v1/cluster` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// Seconds since its last heartbeat, on this node's clock.
    pub age_seconds: f64,
    pub alive: bool,
    /// This node.
    #[serde(rename = "self")]
    pub is_self: bool,
}

/// This replica's handle on the cluster.
#[derive(Debug)]
pub struct Cluster {
    storage: Storage,
    node: String,
    process: String,
    started_at: i64,
    config: ClusterConfig,
    api: String,
    peers: RwLock<Vec<Heartbeat>>,
}

impl Cluster {
    pub fn new(storage: Storage, node: &str, api: String, config: ClusterConfig) -> Self {
        let started_at = now_nanos();
        Self {
            storage,
            node: node.to_owned(),
            process: format!("{}.{started_at}", std::process::id()),
            started_at,
            config,
            api,
            peers: RwLock::default(),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    fn nodes_prefix(&self) -> Path {
        self.storage.path(&["cluster", "nodes"])
    }

    fn instance_prefix(&self, rule: &str, fingerprint: &str) -> Path {
        self.storage.path(&["cluster", "claims", rule, fingerprint])
    }

    fn episode_path(&self, rule: &str, fingerprint: &str, n: u64, name: &str) -> Path {
        self.instance_prefix(rule, fingerprint)
            .join(format!("{n:010}"))
            .join(name)
    }

    /// Writes this node's heartbeat now.
    pub async fn beat(&self) -> Result<(), StorageError> {
        let beat = Heartbeat {
            node: self.node.clone(),
            process: self.process.clone(),
            started_at: self.started_at,
            seen_at: now_nanos(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api: self.api.clone(),
        };
        let path = self.nodes_prefix().join(format!("{}.json", self.node));
        let bytes = serde_json::to_vec(&beat).expect("heartbeats serialize");
        self.storage.replace(&path, Bytes::from(bytes)).await
    }

    /// This node's heartbeat as the storage holds it: before the first
    /// [`Cluster::beat`], the previous process's last sign of life.
    pub async fn own_heartbeat(&self) -> Result<Option<Heartbeat>, StorageError> {
        let path = self.nodes_prefix().join(format!("{}.json", self.node));
        Ok(self
            .storage
            .get_opt(&path)
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Every node's last heartbeat, read from the storage now.
    pub async fn read_heartbeats(&self) -> Result<Vec<Heartbeat>, StorageError> {
        let mut beats = Vec::new();
        for meta in self.storage.list(&self.nodes_prefix()).await? {
            let Some(bytes) = self.storage.get_opt(&meta.location).await? else {
                continue;
            };
            match serde_json::from_slice::<Heartbeat>(&bytes) {
                Ok(beat) => beats.push(beat),
                Err(e) => {
                    tracing::warn!(object = %meta.location, error = %e, "not a heartbeat; ignored");
                }
            }
        }
        Ok(beats)
    }

    /// Writes the heartbeat every `heartbeat`, and reads the others', until
    /// `shutdown`.
    pub async fn run_heartbeats(&self, metrics: &Metrics, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.beat().await {
                tracing::warn!(error = %e, "cannot write this node's heartbeat");
            }
            match self.read_heartbeats().await {
                Ok(beats) => {
                    *self.peers.write() = beats;
                    let peers = self.peers();
                    let alive = peers.iter().filter(|p| p.alive).count();
                    ClusterNodes {
                        alive,
                        dead: peers.len() - alive,
                    }
                    .emit(metrics);
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the cluster's heartbeats"),
            }
        }
    }

    /// The nodes as last read, this one first, then by name.
    pub fn peers(&self) -> Vec<Peer> {
        let now = now_nanos();
        let mut peers: Vec<Peer> = self
            .peers
            .read()
            .iter()
            .map(|h| {
                let age = now.saturating_sub(h.seen_at);
                Peer {
                    heartbeat: h.clone(),
                    age_seconds: age.max(0) as f64 / 1e9,
                    alive: age < nanos(self.config.lease),
                    is_self: h.node == self.node,
                }
            })
            .collect();
        peers.sort_by(|a, b| {
            b.is_self
                .cmp(&a.is_self)
                .then_with(|| a.heartbeat.node.cmp(&b.heartbeat.node))
        });
        peers
    }

    /// `node`'s last heartbeat, if it wrote one that reads.
    async fn heartbeat(&self, node: &str) -> Result<Option<Heartbeat>, StorageError> {
        let path = self.nodes_prefix().join(format!("{node}.json"));
        Ok(self
            .storage
            .get_opt(&path)
            .await?
            .and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// Whether the process behind `claim` still runs, given its node's
    /// heartbeat: one that names that process and is younger than the lease.
    fn runs(&self, claim: &Claim, beat: Option<&Heartbeat>) -> bool {
        if claim.node == self.node {
            return claim.process == self.process;
        }
        beat.is_some_and(|b| {
            b.process == claim.process
                && now_nanos().saturating_sub(b.seen_at) < nanos(self.config.lease)
        })
    }

    /// [`Cluster::runs`], reading the heartbeat.
    async fn alive(&self, claim: &Claim) -> Result<bool, StorageError> {
        if claim.node == self.node {
            return Ok(self.runs(claim, None));
        }
        let beat = self.heartbeat(&claim.node).await?;
        Ok(self.runs(claim, beat.as_ref()))
    }

    /// The episodes of an instance, by number.
    async fn episodes(
        &self,
        rule: &str,
        fingerprint: &str,
    ) -> Result<BTreeMap<u64, Episode>, StorageError> {
        let prefix = self.instance_prefix(rule, fingerprint);
        let mut episodes: BTreeMap<u64, Episode> = BTreeMap::new();
        for meta in self.storage.list(&prefix).await? {
            let mut parts = meta.location.prefix_match(&prefix).into_iter().flatten();
            let (Some(folder), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(n) = folder.as_ref().parse::<u64>() else {
                continue;
            };
            let e = episodes.entry(n).or_default();
            match name.as_ref() {
                "firing.json" => e.firing = true,
                "resolved" => e.resolved = true,
                "done" => e.done = true,
                t if t.starts_with("takeover-") => e.takeovers += 1,
                _ => {}
            }
        }
        Ok(episodes)
    }

    async fn read_claim(&self, path: &Path) -> Result<Claim, StorageError> {
        let bytes = self.storage.get(path).await?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::Store {
            path: path.to_string(),
            source: object_store::Error::Generic {
                store: "cluster",
                source: format!("not a claim: {e}").into(),
            },
        })
    }

    /// The claim that holds episode `n`: its last takeover, else the first.
    async fn holder(
        &self,
        rule: &str,
        fingerprint: &str,
        n: u64,
        e: &Episode,
    ) -> Result<Claim, StorageError> {
        let name = match e.takeovers {
            0 => "firing.json".to_owned(),
            k => format!("takeover-{k:04}.json"),
        };
        self.read_claim(&self.episode_path(rule, fingerprint, n, &name))
            .await
    }

    /// Creates `name` in episode `n`: won, or lost to whoever created it.
    async fn create(
        &self,
        req: &ClaimRequest<'_>,
        n: u64,
        name: &str,
        took_over: Option<Claim>,
    ) -> Result<Claimed, StorageError> {
        let now = now_nanos();
        let takeover = took_over.as_ref().map_or(0, |c| c.takeover + 1);
        let claim = Claim {
            node: self.node.clone(),
            process: self.process.clone(),
            decision: req.decision.to_owned(),
            rule: req.rule.to_owned(),
            fingerprint: req.fingerprint.to_owned(),
            trigger: req.trigger,
            episode: n,
            local_episode: req.local_episode,
            since: req.since,
            claimed_at: now,
            lease_until: now.saturating_add(nanos(self.config.lease)),
            takeover,
            took_over_from: took_over.as_ref().map(|c| c.node.clone()),
        };
        let path = self.episode_path(req.rule, req.fingerprint, n, name);
        let bytes = serde_json::to_vec(&claim).expect("claims serialize");
        match self.storage.create(&path, Bytes::from(bytes)).await {
            Ok(()) => Ok(Claimed::Won { claim, took_over }),
            Err(StorageError::Exists { .. }) => Ok(Claimed::Lost {
                holder: self.read_claim(&path).await?,
            }),
            Err(e) => Err(e),
        }
    }

    /// Claims the episode of `req`'s instance that `req` sees (see the
    /// module doc for how a replica tells a running episode from a new one).
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claimed, StorageError> {
        if let Some(n) = req.closed {
            self.resolved(req.rule, req.fingerprint, n).await?;
        }
        let mut episodes = self.episodes(req.rule, req.fingerprint).await?;
        if req.trigger == Trigger::Resolved {
            let n = req
                .episode
                .or_else(|| episodes.keys().next_back().copied())
                .unwrap_or(1);
            return self.create(req, n, "on-resolved.json", None).await;
        }
        let latest = episodes.pop_last();
        if let Some((n, e)) = &latest
            && e.firing
            && !e.resolved
        {
            let holder = self.holder(req.rule, req.fingerprint, *n, e).await?;
            if holder.node == self.node {
                // This node fires again only after its own episode ended
                // (or, after a restart, its restored instance would not
                // have fired anew).
                self.resolved(req.rule, req.fingerprint, *n).await?;
            } else if e.done {
                // The result is recorded; the episode goes on while its
                // holder lives, or if this replica saw it start before the
                // holder went silent (the Collector moved its telemetry here).
                let beat = self.heartbeat(&holder.node).await?;
                let silent_since = beat.as_ref().map_or(0, |b| b.seen_at);
                if self.runs(&holder, beat.as_ref())
                    || req.since <= silent_since.saturating_add(nanos(self.config.lease))
                {
                    return Ok(Claimed::Lost { holder });
                }
            } else {
                match self.standing(e, holder).await? {
                    Standing::Abandoned(holder) => {
                        return self.take_over(req, *n, holder).await;
                    }
                    Standing::Held(holder) => return Ok(Claimed::Lost { holder }),
                    Standing::Settled => {}
                }
            }
        }
        let next = latest.map_or(1, |(n, _)| n + 1);
        self.create(req, next, "firing.json", None).await
    }

    async fn standing(&self, e: &Episode, holder: Claim) -> Result<Standing, StorageError> {
        if e.resolved || e.done {
            return Ok(Standing::Settled);
        }
        if now_nanos() < holder.lease_until || self.alive(&holder).await? {
            return Ok(Standing::Held(holder));
        }
        Ok(Standing::Abandoned(holder))
    }

    /// Where episode `n` stands now, for a replica that lost its claim.
    pub async fn check(
        &self,
        rule: &str,
        fingerprint: &str,
        n: u64,
    ) -> Result<Standing, StorageError> {
        let episodes = self.episodes(rule, fingerprint).await?;
        let Some(e) = episodes.get(&n) else {
            return Ok(Standing::Settled);
        };
        if episodes.keys().any(|&m| m > n) {
            return Ok(Standing::Settled);
        }
        let holder = self.holder(rule, fingerprint, n, e).await?;
        self.standing(e, holder).await
    }

    /// Takes over episode `n` from its dead `holder`: create-only, so one
    /// replica does.
    pub async fn take_over(
        &self,
        req: &ClaimRequest<'_>,
        n: u64,
        holder: Claim,
    ) -> Result<Claimed, StorageError> {
        let name = format!("takeover-{:04}.json", holder.takeover + 1);
        self.create(req, n, &name, Some(holder)).await
    }

    /// Takes episode `n` over from this node's previous process (a restart
    /// found its run interrupted): won unless another replica took it over
    /// already or its result was recorded.
    pub async fn reclaim(&self, req: &ClaimRequest<'_>, n: u64) -> Result<Claimed, StorageError> {
        let episodes = self.episodes(req.rule, req.fingerprint).await?;
        let e = episodes.get(&n).cloned().unwrap_or_default();
        let holder = self.holder(req.rule, req.fingerprint, n, &e).await?;
        if holder.node != self.node || holder.process == self.process || e.done {
            return Ok(Claimed::Lost { holder });
        }
        self.take_over(req, n, holder).await
    }

    /// Marks episode `n` resolved (a replica saw it end); idempotent.
    pub async fn resolved(
        &self,
        rule: &str,
        fingerprint: &str,
        n: u64,
    ) -> Result<(), StorageError> {
        self.marker(rule, fingerprint, n, "resolved").await
    }

    /// Marks episode `n`'s result recorded; idempotent.
    pub async fn done(&self, rule: &str, fingerprint: &str, n: u64) -> Result<(), StorageError> {
        self.marker(rule, fingerprint, n, "done").await
    }

    async fn marker(
        &self,
        rule: &str,
        fingerprint: &str,
        n: u64,
        name: &str,
    ) -> Result<(), StorageError> {
        let path = self.episode_path(rule, fingerprint, n, name);
        let body = serde_json::json!({ "node": self.node, "at": now_nanos() }).to_string();
        match self.storage.create(&path, Bytes::from(body)).await {
            Ok(()) | Err(StorageError::Exists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;
