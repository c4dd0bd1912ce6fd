//! The write-ahead log: what the receivers acknowledge is on disk first.
//!
//! Requests hand their admitted rows to one writer thread, which frames
//! them ([`segment`]), writes every request waiting at that moment in one
//! go, syncs once for all of them (group commit), inserts them into the
//! store in log order, and only then answers each. With
//! [`Durability::Os`] the write reaches the operating system, not the
//! disk: a process crash loses nothing, a power loss may.
//!
//! The log's folder also holds what the archive flushes need to be exact
//! across restarts: the checkpoint (the last committed flush, the log
//! position it covers, the newest event time it wrote) and the intent of a
//! flush in progress (the archive files it is writing, deleted at start if
//! it never committed). Segments wholly before the checkpoint are deleted.
//! On start, the records after the checkpoint are inserted again; a torn
//! or corrupt tail is cut at the first bad record, counted and logged.
//! One process holds the folder at a time (a lock file).

pub mod segment;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Part, Reservation, Store, StoreError};
use crate::ingest::Signal;

/// How acknowledged telemetry is kept until the archive has it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Written and synced to disk before the answer (fdatasync per group
    /// of concurrent requests): survives a crash and a power loss.
    #[default]
    Fsync,
    /// Written to the operating system before the answer: survives a
    /// crash of the process, not a power loss or a kernel panic.
    Os,
    /// Not logged: what is in memory and not yet archived dies with the
    /// process.
    None,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
            Durability::None => "none",
        }
    }
}

/// Requests waiting for the writer at most; beyond, appends fail at once
/// (the memory budget bounds their bytes long before).
const QUEUE: usize = 65_536;
/// Bytes of frames written in one group at most.
const GROUP_BYTES: usize = 16 << 20;
/// A new segment is started once the current one is this long.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// Why the log's folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log folder {dir}: {message}")]
    Dir { dir: PathBuf, message: String },
    #[error(
        "another process uses the write-ahead log folder {dir} (lock {lock} is held): give each instance its own [ingest] wal_dir"
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("write-ahead log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The last committed flush, as the log's folder remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Names this folder's archive files (`_f{epoch}-…`), so that a new
    /// folder never reuses an old one's names.
    pub epoch: u64,
    /// Flushes committed so far.
    pub flush: u64,
    /// Records before this LSN are in the archive.
    pub lsn: u64,
    /// The newest event time written by any committed flush, per table:
    /// after a restart, older times are read from the archive too.
    pub max_times: BTreeMap<String, i64>,
}

/// A flush being written: its files, so that a crash before its commit
/// leaves nothing behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub flush: u64,
    /// Paths relative to the storage root.
    pub files: Vec<String>,
}

/// Counters of the log, for `/metrics`.
#[derive(Debug, Default)]
pub struct WalStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub failures: AtomicU64,
    pub segments_deleted: AtomicU64,
}

/// What the start found in the folder and put back into the store.
#[derive(Debug, Default, Clone)]
pub struct Replayed {
    pub segments: usize,
    pub records: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Where the log went bad, if it did: segment, offset, reason, and the
    /// bytes cut (that segment's rest and any later segments).
    pub cut: Option<(PathBuf, u64, String, u64)>,
    /// The next LSN.
    pub next_lsn: u64,
    pub elapsed: std::time::Duration,
    /// The newest arrival time among the records replayed.
    pub last_written_at: Option<i64>,
}

/// The log's folder, held by one process.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
    epoch: u64,
    /// Whether a checkpoint was found: a new folder knows nothing of what
    /// the archive may already hold.
    fresh: bool,
    checkpoint: Mutex<Option<Checkpoint>>,
    /// Segments by first LSN.
    segments: Mutex<BTreeMap<u64, PathBuf>>,
    stats: Arc<WalStats>,
    _lock: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Fsyncs a folder, so that files created or renamed in it stay.
fn sync_dir(path: &Path) -> Result<(), WalError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

const CHECKPOINT: &str = "checkpoint.json";

impl Dir {
    /// Opens (creating it if needed) and locks the folder; reads its
    /// checkpoint and lists its segments.
    pub fn open(path: &Path) -> Result<Self, WalError> {
        std::fs::create_dir_all(path).map_err(|e| WalError::Dir {
            dir: path.to_owned(),
            message: format!("cannot create it: {e}"),
        })?;
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(WalError::Locked {
                    dir: path.to_owned(),
                    lock: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let checkpoint_path = path.join(CHECKPOINT);
        let checkpoint: Option<Checkpoint> = match std::fs::read(&checkpoint_path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| WalError::Dir {
                dir: path.to_owned(),
                message: format!("{CHECKPOINT} does not parse ({e}): move it away to start anew"),
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&checkpoint_path)(e)),
        };
        let mut segments = BTreeMap::new();
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            let name = entry.file_name();
            if let Some(lsn) = name.to_str().and_then(segment::parse_segment_name) {
                segments.insert(lsn, entry.path());
            }
        }
        let fresh = checkpoint.is_none();
        let epoch = checkpoint.as_ref().map_or_else(random_epoch, |c| c.epoch);
        let dir = Self {
            path: path.to_owned(),
            epoch,
            fresh,
            checkpoint: Mutex::new(checkpoint),
            segments: Mutex::new(segments),
            stats: Arc::default(),
            _lock: lock,
        };
        if fresh {
            // The epoch is remembered before any file is named after it.
            dir.write_checkpoint(&Checkpoint {
                epoch,
                flush: 0,
                lsn: dir.segments.lock().keys().next().copied().unwrap_or(0),
                max_times: BTreeMap::new(),
            })?;
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether the folder was new: no checkpoint was found.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub fn stats(&self) -> &Arc<WalStats> {
        &self.stats
    }

    pub fn checkpoint(&self) -> Option<Checkpoint> {
        self.checkpoint.lock().clone()
    }

    /// Replaces the checkpoint, durably (a new file, synced, renamed over
    /// the old, the folder synced).
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), WalError> {
        let bytes = serde_json::to_vec_pretty(checkpoint).expect("checkpoints serialize");
        write_atomic(&self.path, CHECKPOINT, &bytes)?;
        *self.checkpoint.lock() = Some(checkpoint.clone());
        Ok(())
    }

    fn intent_name(flush: u64) -> String {
        format!("flush-{flush:020}.json")
    }

    /// Records, durably, the files a flush is about to write.
    pub fn write_intent(&self, intent: &Intent) -> Result<(), WalError> {
        let bytes = serde_json::to_vec(intent).expect("intents serialize");
        write_atomic(&self.path, &Self::intent_name(intent.flush), &bytes)
    }

    /// Forgets a flush's intent once it is committed or undone.
    pub fn remove_intent(&self, flush: u64) -> Result<(), WalError> {
        let path = self.path.join(Self::intent_name(flush));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The intents left in the folder, oldest first. One that does not
    /// parse was cut short before it was synced: its flush wrote nothing.
    pub fn intents(&self) -> Result<Vec<Intent>, WalError> {
        let mut intents = Vec::new();
        for entry in std::fs::read_dir(&self.path).map_err(io(&self.path))? {
            let entry = entry.map_err(io(&self.path))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with("flush-") && name.ends_with(".json")) {
                continue;
            }
            match std::fs::read(entry.path()) {
                Ok(bytes) => match serde_json::from_slice::<Intent>(&bytes) {
                    Ok(i) => intents.push(i),
                    Err(e) => {
                        tracing::warn!(file = %entry.path().display(), error = %e, "ignoring an unreadable flush intent")
                    }
                },
                Err(e) => return Err(io(&entry.path())(e)),
            }
        }
        intents.sort_by_key(|i| i.flush);
        Ok(intents)
    }

    /// Deletes the segments wholly before `lsn` (never the newest one).
    pub fn truncate(&self, lsn: u64) -> Result<usize, WalError> {
        let doomed: Vec<(u64, PathBuf)> = {
            let segments = self.segments.lock();
            let firsts: Vec<u64> = segments.keys().copied().collect();
            firsts
                .windows(2)
                .filter(|w| w[1] <= lsn)
                .map(|w| (w[0], segments[&w[0]].clone()))
                .collect()
        };
        for (first, path) in &doomed {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(path)(e)),
            }
            self.segments.lock().remove(first);
            self.stats.segments_deleted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(doomed.len())
    }

    /// Bytes of the segments on disk.
    pub fn size(&self) -> u64 {
        self.segments
            .lock()
            .values()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Inserts the records after the checkpoint into `store`, in order.
    /// A bad record cuts the log there: that segment is truncated to its
    /// good part and later segments are deleted, so that nothing after a
    /// gap is ever replayed.
    pub fn replay(&self, store: &Store) -> Result<Replayed, WalError> {
        let started = Instant::now();
        let from = self.checkpoint().map_or(0, |c| c.lsn);
        let segments: Vec<(u64, PathBuf)> = self
            .segments
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut replayed = Replayed {
            next_lsn: from,
            ..Replayed::default()
        };
        let mut cut_at: Option<usize> = None;
        for (i, (first, path)) in segments.iter().enumerate() {
            // A segment wholly before the checkpoint (its successor starts
            // at or before it) holds nothing to replay.
            if segments.get(i + 1).is_some_and(|(next, _)| *next <= from) {
                continue;
            }
            let bytes = std::fs::read(path).map_err(io(path))?;
            let read = segment::read(&bytes, from);
            replayed.segments += 1;
            if read.epoch.is_some_and(|e| e != self.epoch) {
                tracing::warn!(segment = %path.display(), "a log segment of another epoch: replayed all the same");
            }
            for record in read.records {
                let rows: u64 = record.batches.iter().map(|b| b.num_rows() as u64).sum();
                replayed.records += 1;
                replayed.rows += rows;
                replayed.last_written_at = Some(
                    replayed
                        .last_written_at
                        .map_or(record.written_at, |t| t.max(record.written_at)),
                );
                for batch in record.batches {
                    replayed.bytes += batch.get_array_memory_size() as u64;
                    store.restore(record.signal, batch, record.written_at, record.lsn + 1);
                }
            }
            if let Some(last) = read.last_lsn {
                replayed.next_lsn = replayed.next_lsn.max(last + 1);
            } else {
                replayed.next_lsn = replayed.next_lsn.max(*first);
            }
            if let Some(cut) = read.cut {
                let lost = bytes.len() as u64 - cut.offset;
                replayed.cut = Some((path.clone(), cut.offset, cut.reason, lost));
                cut_at = Some(i);
                break;
            }
        }
        if let Some(i) = cut_at {
            let (_, path) = &segments[i];
            let keep = replayed.cut.as_ref().map_or(0, |c| c.1);
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(path))?;
            file.set_len(keep)
                .and_then(|()| file.sync_all())
                .map_err(io(path))?;
            let mut later = 0u64;
            for (first, path) in &segments[i + 1..] {
                later += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(path).map_err(io(path))?;
                self.segments.lock().remove(first);
            }
            sync_dir(&self.path)?;
            if let Some(cut) = replayed.cut.as_mut() {
                cut.3 += later;
            }
        }
        replayed.elapsed = started.elapsed();
        Ok(replayed)
    }
}

fn random_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(crate::ingest::now_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// Writes `name` in `dir` durably: a staging file, synced, renamed, and
/// the folder synced.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), WalError> {
    let staging = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = File::create(&staging).map_err(io(&staging))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(&staging))?;
    std::fs::rename(&staging, &target).map_err(io(&target))?;
    sync_dir(dir)
}

struct Request {
    signal: Signal,
    payload: Vec<u8>,
    /// The budget the payload takes, given back once it is written.
    copy: Reservation,
    parts: Vec<Part>,
    reservation: Reservation,
    now: i64,
    ack: oneshot::Sender<Result<(), StoreError>>,
}

/// The writer's handle: requests go to its thread.
#[derive(Debug)]
pub struct Wal {
    tx: Mutex<Option<SyncSender<Request>>>,
    durability: Durability,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Wal {
    /// Starts the writer thread on a new segment at `next_lsn`. It holds
    /// the store weakly: it stops once the store and this handle are gone.
    pub fn start(
        dir: Arc<Dir>,
        store: Weak<Store>,
        durability: Durability,
        next_lsn: u64,
    ) -> Result<Self, WalError> {
        let (tx, rx) = sync_channel(QUEUE);
        let mut writer = Writer {
            dir,
            store,
            durability,
            next_lsn,
            file: None,
            written: 0,
            broken: None,
        };
        writer.rotate()?;
        let thread = std::thread::Builder::new()
            .name("homeostat-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| WalError::Dir {
                dir: PathBuf::new(),
                message: format!("cannot start the log writer thread: {e}"),
            })?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            durability,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops taking writes, lets the writer finish what is queued and waits
    /// for its thread (which releases the folder once the last handle on
    /// it goes). Blocks: call from a blocking context.
    pub fn close(&self) {
        self.tx.lock().take();
        if let Some(thread) = self.thread.lock().take()
            && thread.join().is_err()
        {
            tracing::error!("the log writer thread panicked");
        }
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Queues rows for the log; the answer comes once they are durable and
    /// inserted. The caller's thread does the encoding.
    pub(super) fn append(
        &self,
        store: &Store,
        signal: Signal,
        parts: Vec<Part>,
        reservation: Reservation,
        now: i64,
    ) -> oneshot::Receiver<Result<(), StoreError>> {
        let (ack, answer) = oneshot::channel();
        let batches: Vec<&arrow::array::RecordBatch> = parts.iter().map(|p| &p.batch).collect();
        let payload = match segment::encode(signal, &batches) {
            Ok(p) => p,
            Err(e) => {
                let _ = ack.send(Err(StoreError::Wal(e)));
                return answer;
            }
        };
        // The encoded copy waits for the disk within the budget too.
        let copy = match store.reserve(payload.capacity() as u64) {
            Ok(r) => r,
            Err(e) => {
                let _ = ack.send(Err(e));
                return answer;
            }
        };
        let request = Request {
            signal,
            payload,
            copy,
            parts,
            reservation,
            now,
            ack,
        };
        let sent = match self.tx.lock().as_ref() {
            Some(tx) => tx.try_send(request),
            None => Err(TrySendError::Disconnected(request)),
        };
        if let Err(e) = sent {
            let (request, why) = match e {
                TrySendError::Full(r) => (r, "the log writer's queue is full"),
                TrySendError::Disconnected(r) => (r, "the log writer stopped"),
            };
            let _ = request.ack.send(Err(StoreError::Wal(why.into())));
        }
        answer
    }
}

struct Writer {
    dir: Arc<Dir>,
    store: Weak<Store>,
    durability: Durability,
    next_lsn: u64,
    file: Option<(File, PathBuf)>,
    /// Bytes in the current segment.
    written: u64,
    /// Why the log cannot be written any more, once it cannot.
    broken: Option<String>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut bytes = group[0].payload.len();
            while bytes < GROUP_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.payload.len();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.write(group);
        }
        if let Some((file, path)) = &self.file
            && let Err(e) = file.sync_data()
        {
            tracing::error!(segment = %path.display(), error = %e, "the log's last writes were not synced");
        }
    }

    fn write(&mut self, group: Vec<Request>) {
        if let Some(why) = &self.broken {
            fail(group, why);
            return;
        }
        let first_lsn = self.next_lsn;
        let now = crate::ingest::now_nanos();
        let heads: Vec<_> = group
            .iter()
            .enumerate()
            .map(|(i, r)| segment::frame_head(first_lsn + i as u64, now, r.signal, &r.payload))
            .collect();
        let frames: Vec<&[u8]> = heads
            .iter()
            .zip(&group)
            .flat_map(|(h, r)| [&h[..], &r.payload[..]])
            .collect();
        let size: usize = frames.iter().map(|f| f.len()).sum();
        if let Err(e) = self.persist(&frames, size) {
            let why = e.to_string();
            tracing::error!(error = %why, requests = group.len(), "write-ahead log write failed");
            self.dir.stats.failures.fetch_add(1, Ordering::Relaxed);
            fail(group, &why);
            return;
        }
        self.next_lsn += group.len() as u64;
        let stats = &self.dir.stats;
        stats
            .records
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        let Some(store) = self.store.upgrade() else {
            fail(group, "the store is gone");
            return;
        };
        for (i, r) in group.into_iter().enumerate() {
            let lsn = first_lsn + i as u64;
            drop(r.payload);
            drop(r.copy);
            store.commit_insert(r.signal, r.parts, r.reservation, r.now, Some(lsn + 1));
            let _ = r.ack.send(Ok(()));
        }
        if self.written >= SEGMENT_BYTES
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %e, "cannot start a new log segment; the current one goes on");
        }
    }

    /// Writes and (with `fsync`) syncs a group. On failure the segment is
    /// cut back to its last good length, so that a record whose sender was
    /// told it failed is never replayed; if even that fails, the log stops
    /// taking writes.
    fn persist(&mut self, frames: &[&[u8]], size: usize) -> Result<(), WalError> {
        let (file, path) = self.file.as_mut().expect("a segment is open");
        let good = self.written;
        // Heads and small payloads gather in the buffer; a payload larger
        // than it goes to the file as it is.
        let written = {
            let mut out = std::io::BufWriter::with_capacity(64 << 10, &*file);
            frames
                .iter()
                .try_for_each(|f| out.write_all(f))
                .and_then(|()| out.flush())
        };
        let result = written.and_then(|()| match self.durability {
            Durability::Fsync => {
                self.dir.stats.syncs.fetch_add(1, Ordering::Relaxed);
                file.sync_data()
            }
            _ => Ok(()),
        });
        match result {
            Ok(()) => {
                self.written += size as u64;
                Ok(())
            }
            Err(e) => {
                let restored = file
                    .set_len(good)
                    .and_then(|()| file.sync_data())
                    .and_then(|()| {
                        use std::io::Seek as _;
                        file.seek(std::io::SeekFrom::Start(good)).map(|_| ())
                    });
                if let Err(again) = restored {
                    self.broken = Some(format!(
                        "the log could not be written ({e}) nor cut back ({again}); restart to replay what it holds"
                    ));
                }
                Err(io(path)(e))
            }
        }
    }

    /// Starts a new segment named after the next LSN.
    fn rotate(&mut self) -> Result<(), WalError> {
        if let Some((file, path)) = self.file.take() {
            file.sync_data().map_err(io(&path))?;
        }
        let path = self.dir.path.join(segment::segment_name(self.next_lsn));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(&segment::header(self.dir.epoch))
            .and_then(|()| file.sync_data())
            .map_err(io(&path))?;
        sync_dir(&self.dir.path)?;
        self.dir.segments.lock().insert(self.next_lsn, path.clone());
        self.written = segment::HEADER as u64;
        self.file = Some((file, path));
        Ok(())
    }
}

fn fail(group: Vec<Request>, why: &str) {
    for r in group {
        let _ = r.ack.send(Err(StoreError::Wal(why.to_owned())));
    }
}

#[cfg(test)]
mod tests;
