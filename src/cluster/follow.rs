//! The shared view: each replica reads the other writers' decision logs as
//! they grow, so that its SQL tables (`decisions`, `facts`), its decision
//! list (API, dashboard) and `memory::history` hold the whole cluster's.
//!
//! Chain objects are created once and never change, so following a chain
//! is listing the objects after the last one read and checking that they
//! go on from its tail, as `homeostat audit verify` would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path;
use tokio_util::sync::CancellationToken;

use crate::act::actor::Actor;
use crate::decisions::DecisionLog;
use crate::decisions::memory::Facts;
use crate::memory::journal::{self, ChainEntry, Record, Stage, Tail};
use crate::memory::tables::MemoryIndex;
use crate::memory::{Storage, StorageError};

/// Where one writer's chain was last read up to.
#[derive(Debug, Clone)]
struct Position {
    last_object: Option<Path>,
    tail: Tail,
}

/// What the entries of other writers go into.
#[derive(Clone)]
pub struct Views {
    pub index: Arc<MemoryIndex>,
    pub log: Arc<DecisionLog>,
    pub facts: Arc<Facts>,
    /// Counts other replicas' runs in this one's cooldowns and rates.
    pub actor: Option<Arc<Actor>>,
}

impl Views {
    /// Takes in one entry of another writer's chain.
    pub fn apply(&self, e: &ChainEntry) {
        self.index.apply(&e.entry, &e.hash);
        match &e.entry.record {
            Record::Decision { decision, stage } => {
                let mut d = (**decision).clone();
                if d.node.is_empty() {
                    d.node.clone_from(&e.entry.node);
                }
                // A run is counted once, when its intent is recorded.
                if *stage == Stage::Intent
                    && let Some(actor) = &self.actor
                {
                    actor.observe_remote(&d);
                }
                self.log.upsert(&d);
            }
            Record::Fact { fact } => self.facts.restore(vec![fact.clone()]),
            _ => {}
        }
    }
}

/// Follows every writer's chain but this node's own.
#[derive(Debug)]
pub struct Follower {
    storage: Storage,
    node: String,
    positions: BTreeMap<String, Position>,
}

impl Follower {
    /// Starts where the memory read at start ended: per other writer, the
    /// last log object read and where its chain goes on.
    pub fn new(
        storage: Storage,
        node: &str,
        read: impl IntoIterator<Item = (String, Option<Path>, Tail)>,
    ) -> Self {
        let positions = read
            .into_iter()
            .filter(|(n, ..)| n != node)
            .map(|(n, last_object, tail)| (n, Position { last_object, tail }))
            .collect();
        Self {
            storage,
            node: node.to_owned(),
            positions,
        }
    }

    /// Reads what the other writers appended since the last call and hands
    /// it to `views`. Returns how many entries were new.
    pub async fn sync(&mut self, views: &Views) -> Result<usize, StorageError> {
        let mut new = 0;
        for node in journal::nodes(&self.storage).await? {
            if node == self.node {
                continue;
            }
            let prefix = journal::log_prefix(&self.storage, &node);
            let position = self.positions.entry(node.clone()).or_insert(Position {
                last_object: None,
                tail: Tail::default(),
            });
            let objects = match &position.last_object {
                Some(last) => self.storage.list_after(&prefix, last).await?,
                None => self.storage.list(&prefix).await?,
            };
            let Some(last) = objects.last().map(|m| m.location.clone()) else {
                continue;
            };
            let (entries, problems, tail) =
                journal::read_objects(&self.storage, &node, objects, position.tail.clone()).await?;
            for problem in &problems {
                tracing::error!(%problem, "another writer's decision log does not verify");
            }
            for e in &entries {
                views.apply(e);
            }
            new += entries.len();
            position.last_object = Some(last);
            position.tail = tail;
        }
        Ok(new)
    }

    /// Syncs every `interval` until `shutdown`.
    pub async fn run(mut self, views: Views, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sync(&views).await {
                tracing::warn!(error = %e, "cannot read the other replicas' decisions");
            }
        }
    }
}
