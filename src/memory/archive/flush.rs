//! Flushes: the rows memory holds and the archive does not, written as
//! Parquet and committed, so that memory may let them go and the
//! write-ahead log may forget them.
//!
//! A flush takes every batch inserted before its mark ([`Store::begin_flush`]),
//! records its intent (the files it will write) in the log's folder, writes
//! one file per table and UTC hour, named after the log folder's epoch and
//! the flush's number, and commits: in the store (the batches count as
//! archived; scans read files up to this number), then in the folder's
//! checkpoint (the log position covered, the newest event time written).
//! Nothing before the commit counts: a crash leaves an intent whose files
//! the next start deletes, and the log replays the rows, so every row is
//! in the archive once. A failed flush leaves its rows unflushed and its
//! files are deleted before any later flush commits.
//!
//! The flusher runs a flush every `flush_interval`, sooner when unflushed
//! rows pass the store's `flush_bytes` or fill the budget, and a last one
//! at shutdown. Between flushes it applies the memory retention, which only
//! ever drops rows the archive has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::parquet::file::metadata::KeyValue;
use tokio_util::sync::CancellationToken;

use super::codec::{encode_blocking, split_by_hour, time_column};
use super::layout::{Hour, flush_file_name};
use super::{Archive, ArchiveError, NODE_KEY};
use crate::ingest::{Signal, now_nanos};
use crate::internal_events::{
    ArchiveFlushFailed, ArchiveFlushed, ArchiveRowsDropped, Metrics, PartitionsExpired,
};
use crate::memory::storage::StorageError;
use crate::store::wal::{Checkpoint, Dir, Intent};
use crate::store::{FlushSnapshot, Store};

/// The longest wait between two attempts at a storage that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a flush wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    pub number: u64,
    pub files: Vec<FlushedFile>,
    pub rows: u64,
    /// Parquet bytes written.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// One file of a flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushedFile {
    pub table: &'static str,
    /// Relative to the storage root.
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug)]
struct State {
    /// The next flush's number: numbers are never reused, not even those
    /// of failed flushes.
    next: u64,
    /// Failed flushes whose files must be gone before another commits.
    garbage: Vec<Intent>,
    /// The newest event time of every committed flush, per table.
    max_times: [i64; 3],
    last: Instant,
    backoff: Duration,
}

/// Writes memory's unarchived rows to the archive; see the module docs.
#[derive(Debug)]
pub struct Flusher {
    archive: Arc<Archive>,
    store: Arc<Store>,
    dir: Option<Arc<Dir>>,
    epoch: u64,
    metrics: Arc<Metrics>,
    interval: Duration,
    state: tokio::sync::Mutex<State>,
}

impl Flusher {
    /// A flusher for `store` into `archive`, with the log folder `dir`
    /// when there is one (its checkpoint says where flushes stand, its
    /// intents what a crash left half written). Tells the store and the
    /// archive which flushes are committed; the files of uncommitted ones
    /// are deleted before the first flush.
    pub fn new(
        archive: Arc<Archive>,
        store: Arc<Store>,
        dir: Option<Arc<Dir>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ArchiveError> {
        let checkpoint = dir.as_ref().and_then(|d| d.checkpoint());
        let committed = checkpoint.as_ref().map_or(0, |c| c.flush);
        let mut garbage = Vec::new();
        if let Some(dir) = &dir {
            for intent in dir.intents().map_err(wal_error)? {
                if intent.flush > committed {
                    garbage.push(intent);
                } else {
                    dir.remove_intent(intent.flush).map_err(wal_error)?;
                }
            }
        }
        let next = garbage
            .iter()
            .map(|i| i.flush)
            .max()
            .unwrap_or(0)
            .max(committed)
            + 1;
        let mut max_times = [i64::MIN; 3];
        if let Some(c) = &checkpoint {
            for signal in Signal::ALL {
                if let Some(t) = c.max_times.get(signal.table()) {
                    max_times[signal as usize] = *t;
                }
            }
        }
        store.resume_flushes(committed);
        archive.set_flushes(dir.as_ref().map_or(archive.nonce, |d| d.epoch()), committed);
        let epoch = dir.as_ref().map_or(archive.nonce, |d| d.epoch());
        let interval = archive.config.flush_interval;
        Ok(Self {
            archive,
            store,
            dir,
            epoch,
            metrics,
            interval,
            state: tokio::sync::Mutex::new(State {
                next,
                garbage,
                max_times,
                last: Instant::now(),
                backoff: Duration::ZERO,
            }),
        })
    }

    /// Flushes when due, applies the memory retention every second, until
    /// `shutdown`; the last flush is [`Flusher::final_flush`]'s, once
    /// nothing more comes in.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                () = self.store.flush_wanted() => {}
            }
            for (signal, evicted) in self.store.expire(now_nanos()) {
                PartitionsExpired {
                    table: signal.table(),
                    partitions: evicted.partitions,
                    rows: evicted.rows,
                    bytes: evicted.bytes,
                }
                .emit(&self.metrics);
            }
            let due = {
                let state = self.state.lock().await;
                let wanted = self.store.unflushed_bytes() >= self.store.options().flush_bytes
                    || !self.store.has_room();
                state.last.elapsed() >= self.interval.max(state.backoff)
                    || (wanted && state.last.elapsed() >= state.backoff)
            };
            if due {
                let _ = self.flush().await;
            }
        }
    }

    /// Flushes until memory holds nothing unarchived, or the storage fails
    /// `attempts` times in a row: at shutdown. What stays unflushed is in
    /// the log (with durability `fsync` or `os`) for the next start.
    pub async fn final_flush(&self, attempts: usize) -> bool {
        for _ in 0..attempts {
            match self.flush().await {
                Ok(None) => return true,
                Ok(Some(_)) => {
                    if self.store.unflushed_bytes() == 0 {
                        return true;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        self.store.unflushed_bytes() == 0
    }

    /// One flush; `None` when nothing was waiting. Failures are counted and
    /// logged here too.
    pub async fn flush(&self) -> Result<Option<FlushReport>, ArchiveError> {
        let mut state = self.state.lock().await;
        let result = self.flush_locked(&mut state).await;
        state.last = Instant::now();
        match &result {
            Ok(Some(report)) => {
                state.backoff = Duration::ZERO;
                ArchiveFlushed { report }.emit(&self.metrics);
            }
            Ok(None) => state.backoff = Duration::ZERO,
            Err(error) => {
                state.backoff = (state.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                ArchiveFlushFailed { error }.emit(&self.metrics);
            }
        }
        result
    }

    async fn flush_locked(&self, state: &mut State) -> Result<Option<FlushReport>, ArchiveError> {
        let started = Instant::now();
        self.collect_garbage(state).await?;
        let Some(snapshot) = self.store.begin_flush() else {
            return Ok(None);
        };
        if snapshot.rows == 0 {
            self.store.abort_flush();
            return Ok(None);
        }
        let number = state.next;
        state.next += 1;
        let files = match self.plan(&snapshot, number) {
            Ok(files) => files,
            Err(e) => {
                self.store.abort_flush();
                return Err(e);
            }
        };
        let intent = Intent {
            flush: number,
            files: files.iter().map(|f| f.name.clone()).collect(),
        };
        if let Some(dir) = &self.dir {
            let (dir, written) = (dir.clone(), intent.clone());
            let recorded = tokio::task::spawn_blocking(move || dir.write_intent(&written))
                .await
                .map_err(|e| ArchiveError::Io(e.to_string()))
                .and_then(|r| r.map_err(wal_error));
            if let Err(e) = recorded {
                self.store.abort_flush();
                return Err(e);
            }
        }
        let mut report = FlushReport {
            number,
            ..FlushReport::default()
        };
        for file in files {
            let written = self.write(file).await;
            match written {
                Ok(file) => {
                    report.rows += file.rows;
                    report.bytes += file.bytes;
                    report.files.push(file);
                }
                Err(Dropped { table, rows, error }) if !error.retryable() => {
                    // Not the storage: the rows themselves cannot be
                    // written, and trying again will not change that.
                    ArchiveRowsDropped {
                        table,
                        rows,
                        reason: "unwritable",
                    }
                    .emit(&self.metrics);
                    tracing::error!(table, rows, %error, "rows that cannot be archived are dropped from the flush");
                }
                Err(Dropped { error, .. }) => {
                    self.store.abort_flush();
                    state.garbage.push(intent);
                    return Err(error);
                }
            }
        }
        // Committed: scans read these files from now on, and the batches
        // may leave memory.
        self.store.commit_flush(&snapshot, number);
        self.archive.committed.store(number, Ordering::Release);
        for (i, t) in snapshot.max_times.iter().enumerate() {
            state.max_times[i] = state.max_times[i].max(*t);
        }
        if let Some(dir) = &self.dir {
            let checkpoint = Checkpoint {
                epoch: self.epoch,
                flush: number,
                lsn: snapshot.wal_position,
                max_times: Signal::ALL
                    .iter()
                    .filter(|s| state.max_times[**s as usize] > i64::MIN)
                    .map(|s| (s.table().to_owned(), state.max_times[*s as usize]))
                    .collect(),
            };
            let dir = dir.clone();
            let saved = tokio::task::spawn_blocking(move || -> Result<usize, ArchiveError> {
                dir.write_checkpoint(&checkpoint).map_err(wal_error)?;
                for intent in dir.intents().map_err(wal_error)? {
                    if intent.flush <= checkpoint.flush {
                        dir.remove_intent(intent.flush).map_err(wal_error)?;
                    }
                }
                dir.truncate(checkpoint.lsn).map_err(wal_error)
            })
            .await
            .map_err(|e| ArchiveError::Io(e.to_string()))
            .and_then(|r| r);
            // The flush stands; the log keeps its records until a later
            // checkpoint is written, and a restart before then replays them
            // (after deleting this flush's files, whose intent is kept).
            if let Err(e) = saved {
                tracing::error!(error = %e, "the flush is written but its checkpoint is not: the next flush writes it");
            }
        }
        report.elapsed = started.elapsed();
        Ok(Some(report))
    }

    /// Deletes the files of failed or uncommitted flushes, and their
    /// intents.
    async fn collect_garbage(&self, state: &mut State) -> Result<(), ArchiveError> {
        while let Some(intent) = state.garbage.last().cloned() {
            for file in &intent.files {
                match self
                    .archive
                    .storage
                    .delete(&self.archive.storage.path(&[file]))
                    .await
                {
                    Ok(()) => {}
                    Err(StorageError::Store {
                        source: object_store::Error::NotFound { .. },
                        ..
                    }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(dir) = &self.dir {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || dir.remove_intent(intent.flush))
                    .await
                    .map_err(|e| ArchiveError::Io(e.to_string()))?
                    .map_err(wal_error)?;
            }
            state.garbage.pop();
        }
        Ok(())
    }

    /// The files of a flush: one per table and UTC hour.
    fn plan(
        &self,
        snapshot: &FlushSnapshot,
        number: u64,
    ) -> Result<Vec<PlannedFile>, ArchiveError> {
        let mut files = Vec::new();
        let mut n = 0;
        for (signal, batches) in &snapshot.tables {
            let hours: BTreeMap<Hour, Vec<arrow::array::RecordBatch>> =
                split_by_hour(*signal, batches.clone())?;
            for (hour, batches) in hours {
                let first = batches
                    .iter()
                    .filter_map(|b| arrow::compute::min(time_column(*signal, b).ok()?))
                    .min()
                    .unwrap_or(hour.start());
                let name = flush_file_name(
                    &self.archive.node,
                    first - hour.start(),
                    self.epoch,
                    number,
                    n,
                );
                n += 1;
                let path = self
                    .archive
                    .partition_path(*signal, hour)
                    .join(name.as_str());
                files.push(PlannedFile {
                    signal: *signal,
                    hour,
                    name: self.archive.storage.relative(&path),
                    path,
                    batches,
                });
            }
        }
        Ok(files)
    }

    /// Encodes and creates one file. A name already taken is fine when it
    /// holds these very bytes (a write that succeeded but whose answer was
    /// lost, tried again).
    async fn write(&self, file: PlannedFile) -> Result<FlushedFile, Dropped> {
        let table = file.signal.table();
        let rows: u64 = file.batches.iter().map(|b| b.num_rows() as u64).sum();
        let dropped = |error| Dropped { table, rows, error };
        let metadata = vec![KeyValue::new(NODE_KEY.into(), self.archive.node.clone())];
        let batches = file.batches;
        let bytes = encode_blocking(
            file.name.clone(),
            file.signal.schema(),
            metadata,
            None,
            move |w| batches.iter().try_for_each(|b| w.write(b)),
        )
        .await
        .map_err(dropped)?;
        let size = bytes.len() as u64;
        let storage = &self.archive.storage;
        match storage.create(&file.path, bytes.clone()).await {
            Ok(()) => {}
            Err(StorageError::Exists { .. }) => {
                let found = storage
                    .get(&file.path)
                    .await
                    .map_err(|e| dropped(e.into()))?;
                if found != bytes {
                    return Err(dropped(ArchiveError::Storage(StorageError::Exists {
                        path: file.name.clone(),
                    })));
                }
            }
            Err(e) => return Err(dropped(e.into())),
        }
        self.archive.dirty.lock().insert((file.signal, file.hour));
        Ok(FlushedFile {
            table,
            name: file.name,
            rows,
            bytes: size,
        })
    }
}

struct PlannedFile {
    signal: Signal,
    hour: Hour,
    /// Relative to the storage root.
    name: String,
    path: object_store::path::Path,
    batches: Vec<arrow::array::RecordBatch>,
}

struct Dropped {
    table: &'static str,
    rows: u64,
    error: ArchiveError,
}

fn wal_error(e: crate::store::wal::WalError) -> ArchiveError {
    ArchiveError::Io(e.to_string())
}
