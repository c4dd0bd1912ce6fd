//! The decision log: append-only, hash-chained, one chain per writer.
//!
//! Every entry is a line `HASH PAYLOAD`, where `PAYLOAD` is the entry as
//! JSON (with its `seq` and the `prev` hash of the writer's previous entry)
//! and `HASH` is the SHA-256 of exactly those bytes. Entries are written in
//! batches (group commit): one object per batch, named after its first
//! entry, `memory/{node}/log/{seq:020}.jsonl`, created once and never
//! rewritten. An entry counts as recorded when its object is durable
//! (fsync'd on a local folder): [`Journal::append`] answers then.
//!
//! Changing a byte breaks the entry's hash; removing an entry or an object
//! leaves a gap in `seq` and a `prev` that matches nothing. Both are found
//! by [`read_chain`], which `homeostat audit verify` and every start run.
//! Two things a chain cannot show by itself: entries cut from its very end
//! (compare with a head kept elsewhere: `audit verify` prints each one),
//! and a chain rewritten whole from some entry on by someone with write
//! access who recomputes every hash (that needs a key the writer holds and
//! the storage does not; not done).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::storage::{Storage, StorageError};
use crate::decisions::Decision;
use crate::decisions::memory::Fact;
use crate::rules::AlertState;

/// The `prev` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Entries waiting to be written at most; appends beyond fail at once.
pub const QUEUE: usize = 8192;
/// Entries written in one object at most.
pub const MAX_BATCH: usize = 512;

/// One entry of a writer's chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// The hash of the writer's previous entry ([`GENESIS`] for the first).
    pub prev: String,
    pub node: String,
    /// When it was written (UTC nanoseconds, the writer's clock).
    pub written_at: i64,
    pub record: Record,
}

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A decision as it stood at `stage`; the latest entry of an id wins.
    Decision {
        stage: Stage,
        decision: Box<Decision>,
    },
    /// A new version of a fact.
    Fact { fact: Fact },
    /// An alert instance changed state.
    Alert { alert: AlertChange },
    /// A process started writing this chain: durable before it restores
    /// anything, so that a second process with the same node name is
    /// refused before it acts.
    Start { pid: u32, version: String },
}

/// Where a decision was when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Decided, nothing to run (suppressed, denied, expired).
    Decided,
    /// Waiting for a person.
    AwaitingApproval,
    /// About to run: durable before the action starts.
    Intent,
    /// An attempt failed and will be retried.
    Retry,
    /// The run ended.
    Result,
    /// The outcome was verified.
    Outcome,
    /// Found running after a restart: marked interrupted.
    Interrupted,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decided => "decided",
            Stage::AwaitingApproval => "awaiting_approval",
            Stage::Intent => "intent",
            Stage::Retry => "retry",
            Stage::Result => "result",
            Stage::Outcome => "outcome",
            Stage::Interrupted => "interrupted",
        }
    }
}

/// An alert instance's transition, enough to rebuild its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertChange {
    pub rule: String,
    pub fingerprint: String,
    pub labels: BTreeMap<String, String>,
    pub episode: u64,
    pub from: AlertState,
    pub to: AlertState,
    /// Evaluation time of the transition (UTC nanoseconds).
    pub at: i64,
    /// When the episode started matching.
    pub since: i64,
}

/// Where an appended entry landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("the decision log's queue is full ({QUEUE} entries waiting to be written)")]
    Full,
    #[error("the decision log has stopped")]
    Stopped,
    #[error("cannot write the decision log: {0}")]
    Storage(String),
    #[error(
        "another process writes as node {node:?} in this storage ({path} exists with other content): give each replica its own node id"
    )]
    Conflict { node: String, path: String },
}

/// Answers when the entry is durable, or why it is not.
pub type Ack = oneshot::Receiver<Result<Receipt, JournalError>>;

/// Where a chain goes on: the next entry's `seq` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub next_seq: u64,
    pub prev: String,
}

impl Default for Tail {
    fn default() -> Self {
        Self {
            next_seq: 0,
            prev: GENESIS.to_owned(),
        }
    }
}

struct Pending {
    /// `None`: a flush, answered once everything queued before is durable.
    record: Option<Record>,
    ack: oneshot::Sender<Result<Receipt, JournalError>>,
}

/// Counters of the writer, for `/metrics` and benches.
#[derive(Debug, Default)]
pub struct JournalStats {
    pub entries: AtomicU64,
    pub objects: AtomicU64,
    pub failures: AtomicU64,
}

/// A handle on one writer's chain; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Pending>,
    node: Arc<str>,
    storage: Storage,
    stats: Arc<JournalStats>,
    /// Sees every entry once it is durable (the SQL tables' index).
    observers: Arc<parking_lot::RwLock<Vec<Observer>>>,
}

type Observer = Arc<dyn Fn(&Entry, &str) + Send + Sync>;

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("node", &self.node).finish()
    }
}

pub fn log_prefix(storage: &Storage, node: &str) -> object_store::path::Path {
    storage.path(&["memory", node, "log"])
}

pub fn object_name(first_seq: u64) -> String {
    format!("{first_seq:020}.jsonl")
}

/// Hash of a payload, lowercase hex.
pub fn hash(payload: &[u8]) -> String {
    const_hex::encode(Sha256::digest(payload))
}

impl Journal {
    /// Starts the writer of `node`'s chain at `tail` on the current runtime.
    pub fn start(storage: Storage, node: &str, tail: Tail) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let journal = Self {
            tx,
            node: node.into(),
            storage: storage.clone(),
            stats: Arc::default(),
            observers: Arc::default(),
        };
        let writer = Writer {
            storage,
            node: node.to_owned(),
            tail,
            uncertain: None,
            conflict: None,
            stats: journal.stats.clone(),
            observers: journal.observers.clone(),
        };
        tokio::spawn(writer.run(rx));
        journal
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Where it writes.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Calls `f` with every entry once it is durable, and its hash.
    pub fn observe(&self, f: impl Fn(&Entry, &str) + Send + Sync + 'static) {
        self.observers.write().push(Arc::new(f));
    }

    /// Queues an entry; the answer comes when it is durable. Never blocks:
    /// a full queue is an error at once.
    pub fn append(&self, record: Record) -> Ack {
        let (ack, answer) = oneshot::channel();
        self.send(Some(record), ack);
        answer
    }

    /// Waits until every entry appended before is durable (or failed).
    pub async fn flush(&self) {
        let (ack, answer) = oneshot::channel();
        if self.tx.send(Pending { record: None, ack }).await.is_ok() {
            let _ = answer.await;
        }
    }

    fn send(&self, record: Option<Record>, ack: oneshot::Sender<Result<Receipt, JournalError>>) {
        if let Err(e) = self.tx.try_send(Pending { record, ack }) {
            let (error, pending) = match e {
                mpsc::error::TrySendError::Full(p) => (JournalError::Full, p),
                mpsc::error::TrySendError::Closed(p) => (JournalError::Stopped, p),
            };
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
            let _ = pending.ack.send(Err(error));
        }
    }

    /// Appends and waits until the entry is durable.
    pub async fn append_durable(&self, record: Record) -> Result<Receipt, JournalError> {
        self.append(record)
            .await
            .unwrap_or(Err(JournalError::Stopped))
    }
}

struct Writer {
    storage: Storage,
    node: String,
    tail: Tail,
    /// A batch whose write failed in a way that may have written it anyway
    /// (a lost answer): its first seq and bytes.
    uncertain: Option<(u64, Bytes, Tail)>,
    conflict: Option<JournalError>,
    stats: Arc<JournalStats>,
    observers: Arc<parking_lot::RwLock<Vec<Observer>>>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.write(std::mem::take(&mut batch)).await;
        }
    }

    async fn write(&mut self, mut batch: Vec<Pending>) {
        // Flushes are answered once what came before them is written.
        let mut flushes = Vec::new();
        batch.retain_mut(|p| match p.record {
            Some(_) => true,
            None => {
                let (ack, _) = oneshot::channel();
                flushes.push(std::mem::replace(&mut p.ack, ack));
                false
            }
        });
        if !batch.is_empty() {
            self.write_entries(batch).await;
        }
        for f in flushes {
            let _ = f.send(Ok(Receipt {
                seq: self.tail.next_seq,
                hash: self.tail.prev.clone(),
            }));
        }
    }

    async fn write_entries(&mut self, batch: Vec<Pending>) {
        if let Some(conflict) = &self.conflict {
            for p in batch {
                let _ = p.ack.send(Err(conflict.clone()));
            }
            return;
        }
        if let Err(e) = self.settle_uncertain().await {
            self.fail(batch, e);
            return;
        }
        let first = self.tail.next_seq;
        let mut tail = self.tail.clone();
        let mut bytes = Vec::new();
        let mut written = Vec::with_capacity(batch.len());
        let now = crate::ingest::now_nanos();
        for p in &batch {
            let entry = Entry {
                seq: tail.next_seq,
                prev: tail.prev.clone(),
                node: self.node.clone(),
                written_at: now,
                record: p.record.clone().expect("flushes are taken out"),
            };
            let payload = serde_json::to_vec(&entry).expect("entries serialize");
            let h = hash(&payload);
            bytes.extend_from_slice(h.as_bytes());
            bytes.push(b' ');
            bytes.extend_from_slice(&payload);
            bytes.push(b'\n');
            tail = Tail {
                next_seq: tail.next_seq + 1,
                prev: h.clone(),
            };
            written.push((entry, h));
        }
        let bytes = Bytes::from(bytes);
        let path = log_prefix(&self.storage, &self.node).join(object_name(first));
        match self.storage.create(&path, bytes.clone()).await {
            Ok(()) => {}
            Err(StorageError::Exists { path }) => {
                let found = match self.storage.get(&path_of(&path)).await {
                    Ok(found) => found,
                    Err(e) => {
                        // Cannot tell yet whose it is: the next write checks.
                        self.uncertain = Some((first, bytes, tail));
                        self.fail(batch, JournalError::Storage(e.to_string()));
                        return;
                    }
                };
                if found != bytes {
                    let conflict = JournalError::Conflict {
                        node: self.node.clone(),
                        path,
                    };
                    tracing::error!(error = %conflict, "the decision log stopped writing");
                    self.conflict = Some(conflict.clone());
                    self.fail(batch, conflict);
                    return;
                }
            }
            Err(e) => {
                // The store may have written it and lost the answer: the
                // next write checks before reusing the name.
                self.uncertain = Some((first, bytes, tail));
                self.fail(batch, JournalError::Storage(e.to_string()));
                return;
            }
        }
        self.tail = tail;
        self.stats.objects.fetch_add(1, Ordering::Relaxed);
        self.stats
            .entries
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let observers = self.observers.read().clone();
        for (p, (entry, h)) in batch.into_iter().zip(written) {
            for observe in &observers {
                observe(&entry, &h);
            }
            let _ = p.ack.send(Ok(Receipt {
                seq: entry.seq,
                hash: h,
            }));
        }
    }

    /// After a failed write: if the object was written after all, the
    /// chain goes on after it (its entries were reported failed, and a
    /// restart reads them as they are).
    async fn settle_uncertain(&mut self) -> Result<(), JournalError> {
        let Some((first, bytes, tail)) = self.uncertain.take() else {
            return Ok(());
        };
        let path = log_prefix(&self.storage, &self.node).join(object_name(first));
        match self.storage.get(&path).await {
            Ok(found) if found == bytes => {
                self.tail = tail;
                Ok(())
            }
            Ok(_) => {
                let conflict = JournalError::Conflict {
                    node: self.node.clone(),
                    path: path.to_string(),
                };
                self.conflict = Some(conflict.clone());
                Err(conflict)
            }
            Err(StorageError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(()),
            Err(e) => {
                self.uncertain = Some((first, bytes, tail));
                Err(JournalError::Storage(e.to_string()))
            }
        }
    }

    fn fail(&self, batch: Vec<Pending>, error: JournalError) {
        self.stats
            .failures
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::error!(%error, entries = batch.len(), "decision log entries not recorded");
        for p in batch {
            let _ = p.ack.send(Err(error.clone()));
        }
    }
}

fn path_of(s: &str) -> object_store::path::Path {
    object_store::path::Path::from(s)
}

/// An entry read back, where it was found, and its hash.
#[derive(Debug, Clone)]
pub struct ChainEntry {
    pub entry: Entry,
    pub hash: String,
    /// The object, relative to the storage root.
    pub object: String,
    /// Line in the object, from 1.
    pub line: usize,
}

/// Something wrong in a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub node: String,
    pub object: String,
    pub line: usize,
    /// The entry's position in the chain, when known.
    pub seq: Option<u64>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.object, self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "entry {seq} of node {}: ", self.node)?;
        }
        f.write_str(&self.message)
    }
}

/// The nodes that have written to this storage.
pub async fn nodes(storage: &Storage) -> Result<Vec<String>, StorageError> {
    let prefix = storage.path(&["memory"]);
    Ok(storage
        .folders(&prefix)
        .await?
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .collect())
}

/// Reads and checks one node's chain: every hash, every link, every seq.
/// Entries after a problem are still read (and checked against each
/// other), so one bad entry does not hide the rest.
pub async fn read_chain(
    storage: &Storage,
    node: &str,
) -> Result<(Vec<ChainEntry>, Vec<Problem>), StorageError> {
    let objects = storage.list(&log_prefix(storage, node)).await?;
    let (entries, problems, _) = read_objects(storage, node, objects, Tail::default()).await?;
    Ok((entries, problems))
}

/// Reads and checks `objects` of `node`'s chain, in order, the first of
/// which must go on from `expected`: what [`read_chain`] does for a whole
/// chain, and what a replica following another's chain does for the
/// objects it has not read yet. Returns where the chain goes on.
pub async fn read_objects(
    storage: &Storage,
    node: &str,
    objects: Vec<object_store::ObjectMeta>,
    expected: Tail,
) -> Result<(Vec<ChainEntry>, Vec<Problem>, Tail), StorageError> {
    read_objects_skipping(storage, node, objects, expected, 0).await
}

/// [`read_objects`] where the first object may begin before the entry
/// `expected` names: entries before it are skipped, the rest must go on
/// from it.
pub async fn read_objects_from(
    storage: &Storage,
    node: &str,
    objects: Vec<object_store::ObjectMeta>,
    expected: Tail,
) -> Result<(Vec<ChainEntry>, Vec<Problem>, Tail), StorageError> {
    let from = expected.next_seq;
    read_objects_skipping(storage, node, objects, expected, from).await
}

async fn read_objects_skipping(
    storage: &Storage,
    node: &str,
    objects: Vec<object_store::ObjectMeta>,
    mut expected: Tail,
    skip_before: u64,
) -> Result<(Vec<ChainEntry>, Vec<Problem>, Tail), StorageError> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for meta in objects {
        let object = storage.relative(&meta.location);
        let problem = |line: usize, seq: Option<u64>, message: String| Problem {
            node: node.to_owned(),
            object: object.clone(),
            line,
            seq,
            message,
        };
        let named = meta
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".jsonl"))
            .and_then(|s| s.parse::<u64>().ok());
        let Some(named) = named else {
            problems.push(problem(0, None, "not a decision log object".into()));
            continue;
        };
        let bytes = storage.get(&meta.location).await?;
        if !bytes.ends_with(b"\n") {
            problems.push(problem(
                0,
                None,
                "truncated: the object does not end with a newline".into(),
            ));
        }
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let n = i + 1;
            let Some(space) = line.iter().position(|&b| b == b' ') else {
                problems.push(problem(n, None, "not `HASH PAYLOAD`".into()));
                continue;
            };
            let (stated, payload) = (&line[..space], &line[space + 1..]);
            let actual = hash(payload);
            let entry: Option<Entry> = serde_json::from_slice(payload).ok();
            let seq = entry.as_ref().map(|e| e.seq);
            // Covered by a snapshot: the chain is read from after it.
            if seq.is_some_and(|s| s < skip_before) {
                continue;
            }
            if stated != actual.as_bytes() {
                problems.push(problem(
                    n,
                    seq,
                    format!(
                        "content does not match its hash (stated {}, computed {actual}): the entry was altered",
                        String::from_utf8_lossy(stated)
                    ),
                ));
                // The next entry links to the hash as it was written.
                if let Some(seq) = seq {
                    expected = Tail {
                        next_seq: seq + 1,
                        prev: String::from_utf8_lossy(stated).into_owned(),
                    };
                }
                continue;
            }
            let Some(entry) = entry else {
                problems.push(problem(
                    n,
                    None,
                    "hash matches but the entry does not parse".into(),
                ));
                continue;
            };

            if n == 1 && entry.seq != named {
                problems.push(problem(
                    n,
                    seq,
                    format!(
                        "object is named for entry {named} but starts with entry {}",
                        entry.seq
                    ),
                ));
            }
            if entry.node != node {
                problems.push(problem(
                    n,
                    seq,
                    format!(
                        "entry says node {:?}, found under node {node:?}",
                        entry.node
                    ),
                ));
            }
            if entry.seq != expected.next_seq {
                let message = if entry.seq > expected.next_seq {
                    format!(
                        "entries {}..{} are missing (removed?)",
                        expected.next_seq, entry.seq
                    )
                } else {
                    format!("entry {} appears again", entry.seq)
                };
                problems.push(problem(n, seq, message));
            } else if entry.prev != expected.prev {
                problems.push(problem(
                    n,
                    seq,
                    "chain broken: `prev` is not the previous entry's hash".into(),
                ));
            }
            expected = Tail {
                next_seq: entry.seq + 1,
                prev: actual.clone(),
            };
            entries.push(ChainEntry {
                entry,
                hash: actual,
                object: object.clone(),
                line: n,
            });
        }
    }
    Ok((entries, problems, expected))
}

/// Where a chain read by [`read_chain`] goes on.
pub fn tail_of(entries: &[ChainEntry]) -> Tail {
    entries.last().map_or_else(Tail::default, |e| Tail {
        next_seq: e.entry.seq + 1,
        prev: e.hash.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(key: &str, v: i64) -> Record {
        Record::Fact {
            fact: Fact {
                key: key.into(),
                version: 1,
                value: v.into(),
                valid_from: v,
                valid_to: None,
                written_by: "r".into(),
            },
        }
    }

    #[tokio::test]
    async fn entries_chain_and_verify_then_tampering_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
        let journal = Journal::start(storage.clone(), "n1", Tail::default());
        for i in 0..5 {
            let r = journal.append_durable(fact("k", i)).await.unwrap();
            assert_eq!(r.seq, i as u64);
        }
        let (entries, problems) = read_chain(&storage, "n1").await.unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].entry.prev, GENESIS);
        assert_eq!(entries[3].entry.prev, entries[2].hash);

        // A restart goes on where the chain ends.
        let journal = Journal::start(storage.clone(), "n1", tail_of(&entries));
        assert_eq!(journal.append_durable(fact("k", 9)).await.unwrap().seq, 5);
        assert!(read_chain(&storage, "n1").await.unwrap().1.is_empty());

        // Flip a byte of entry 2's value.
        let file = dir.path().join("memory/n1/log").join(object_name(2));
        let mut text = std::fs::read_to_string(&file).unwrap();
        text = text.replacen("\"value\":2", "\"value\":3", 1);
        std::fs::write(&file, text).unwrap();
        let (_, problems) = read_chain(&storage, "n1").await.unwrap();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].seq, Some(2));
        assert!(problems[0].message.contains("altered"), "{}", problems[0]);

        // Remove entry 4: a gap.
        std::fs::remove_file(dir.path().join("memory/n1/log").join(object_name(4))).unwrap();
        let (_, problems) = read_chain(&storage, "n1").await.unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[1].message.contains("entries 4..5 are missing"),
            "{}",
            problems[1]
        );
    }

    #[tokio::test]
    async fn a_second_writer_with_the_same_node_is_refused() {
        let storage = Storage::in_memory();
        let a = Journal::start(storage.clone(), "n", Tail::default());
        let b = Journal::start(storage.clone(), "n", Tail::default());
        a.append_durable(fact("a", 1)).await.unwrap();
        let e = b.append_durable(fact("b", 1)).await.unwrap_err();
        assert!(matches!(e, JournalError::Conflict { .. }), "{e}");
        // And stays refused: nothing is ever overwritten.
        assert!(b.append_durable(fact("b", 2)).await.is_err());
        let (entries, problems) = read_chain(&storage, "n").await.unwrap();
        assert!(problems.is_empty());
        assert_eq!(entries.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_appends_share_objects_and_keep_order() {
        let storage = Storage::in_memory();
        let journal = Journal::start(storage.clone(), "n", Tail::default());
        let acks: Vec<Ack> = (0..200).map(|i| journal.append(fact("k", i))).collect();
        for (i, ack) in acks.into_iter().enumerate() {
            assert_eq!(ack.await.unwrap().unwrap().seq, i as u64);
        }
        let (entries, problems) = read_chain(&storage, "n").await.unwrap();
        assert!(problems.is_empty());
        assert_eq!(entries.len(), 200);
        assert!(journal.stats().objects.load(Ordering::Relaxed) < 200);
    }
}
