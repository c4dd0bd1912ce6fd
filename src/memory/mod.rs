//! The episodic memory: what the engine decided and remembered, kept on
//! object storage, append-only and hash-chained, so that it survives
//! restarts and crashes and cannot be rewritten unnoticed.
//!
//! - [`storage`]: a local folder or object-store URL, create-only writes.
//! - [`archive`]: telemetry that left memory, as hive-partitioned Parquet.
//! - [`journal`]: the decision log, one hash chain per writer.
//! - [`tables`]: the `decisions` and `facts` SQL tables.
//! - [`audit`]: `homeostat audit verify` and `audit log`.
//! - [`replay`]: rules over archived telemetry, beside the record.

pub mod archive;
pub mod audit;
pub mod journal;
pub mod replay;
pub mod snapshot;
pub mod storage;
pub mod tables;

pub use storage::{Storage, StorageError};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use journal::{AlertChange, ChainEntry, Journal, Problem, Record, Stage};
use tables::MemoryIndex;

use crate::decisions::Decision;
use crate::decisions::memory::Fact;

/// Why the memory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot start the decision log of node {node:?}: {error}")]
    Journal {
        node: String,
        error: journal::JournalError,
    },
    #[error(
        "the decision log of node {node:?} in {location} does not verify: {problem}; `homeostat audit verify --data {location}` lists every problem"
    )]
    Broken {
        node: String,
        location: String,
        problem: Problem,
    },
}

/// Everything read back at start, every writer's chain.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Per node, its entries in chain order.
    pub chains: BTreeMap<String, Vec<ChainEntry>>,
    /// Problems in other writers' chains (this node's must have none).
    pub problems: Vec<Problem>,
}

/// A decision read back: the latest entry of its id.
#[derive(Debug, Clone)]
pub struct StoredDecision {
    pub stage: Stage,
    pub decision: Decision,
}

impl Loaded {
    /// The latest entry of each of `node`'s decisions, in the order they
    /// were first recorded.
    pub fn decisions(&self, node: &str) -> Vec<StoredDecision> {
        let mut order: Vec<StoredDecision> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for e in self.chains.get(node).into_iter().flatten() {
            if let Record::Decision { stage, decision } = &e.entry.record {
                let stored = StoredDecision {
                    stage: *stage,
                    decision: (**decision).clone(),
                };
                match at.get(decision.id.as_str()) {
                    Some(&i) => order[i] = stored,
                    None => {
                        at.insert(&decision.id, order.len());
                        order.push(stored);
                    }
                }
            }
        }
        order
    }

    /// Every fact version of every writer, in the order written.
    pub fn facts(&self) -> Vec<Fact> {
        let mut facts: Vec<(i64, Fact)> = self
            .chains
            .values()
            .flatten()
            .filter_map(|e| match &e.entry.record {
                Record::Fact { fact } => Some((fact.valid_from, fact.clone())),
                _ => None,
            })
            .collect();
        facts.sort_by_key(|(t, _)| *t);
        facts.into_iter().map(|(_, f)| f).collect()
    }

    /// The last transition of each of `node`'s alert instances.
    pub fn alerts(&self, node: &str) -> Vec<AlertChange> {
        let mut last: BTreeMap<(String, String), AlertChange> = BTreeMap::new();
        for e in self.chains.get(node).into_iter().flatten() {
            if let Record::Alert { alert } = &e.entry.record {
                last.insert(
                    (alert.rule.clone(), alert.fingerprint.clone()),
                    alert.clone(),
                );
            }
        }
        last.into_values().collect()
    }

    /// Entries over all chains.
    pub fn len(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads every writer's chain.
pub async fn load(storage: &Storage) -> Result<Loaded, StorageError> {
    let mut loaded = Loaded::default();
    for node in journal::nodes(storage).await? {
        let (entries, problems) = journal::read_chain(storage, &node).await?;
        loaded.problems.extend(problems);
        loaded.chains.insert(node, entries);
    }
    Ok(loaded)
}

/// The memory of a running instance: its writer and what SQL sees.
#[derive(Debug, Clone)]
pub struct Memory {
    pub storage: Storage,
    pub journal: Journal,
    pub index: Arc<MemoryIndex>,
}

impl Memory {
    /// Starts this node's writer where its chain ends (`tail`, as a start
    /// read and verified it) and makes every durable entry go into `index`.
    /// Nothing is written until [`Memory::record_start`]. Must run inside a
    /// tokio runtime.
    pub fn start(
        storage: Storage,
        node: &str,
        tail: journal::Tail,
        index: Arc<MemoryIndex>,
    ) -> Self {
        let journal = Journal::start(storage.clone(), node, tail);
        let observed = index.clone();
        journal.observe(move |entry, hash| observed.apply(entry, hash));
        Self {
            storage,
            journal,
            index,
        }
    }

    /// Records that a process started writing this chain: durable before it
    /// restores anything, so that a second process with the same node name
    /// is refused before it acts.
    pub async fn record_start(&self) -> Result<(), MemoryError> {
        self.journal
            .append_durable(Record::Start {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .await
            .map(drop)
            .map_err(|e| MemoryError::Journal {
                node: self.journal.node().to_owned(),
                error: e,
            })
    }
}
