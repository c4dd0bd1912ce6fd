//! The store: per table, record batches in event-time partitions, under one
//! memory budget shared by all tables; behind it, the archive, and in front
//! of it, a write-ahead log.
//!
//! # What happens to a batch
//!
//! 1. **Admitted** ([`Store::admit`]): rows whose time is too far in the
//!    past (`max_age`) or the future (`max_future`) are refused with a
//!    count and a reason; the others are split by partition, each row
//!    placed by its own time.
//! 2. **Reserved** ([`Store::reserve`]): its bytes are counted against the
//!    budget. When the budget is full, the oldest partitions that are
//!    already in the archive leave memory to make room: the newest data is
//!    always taken. Only when memory is full of rows *not yet* archived
//!    (the archive is behind) is the batch refused, and the receivers
//!    answer "retry later".
//! 3. **Made durable** ([`wal`]): appended to the write-ahead log, group
//!    committed, before anyone is told it was accepted.
//! 4. **Inserted**, in log order, under a sequence number.
//!
//! # Flushes
//!
//! A flush ([`Store::begin_flush`], [`Store::commit_flush`]) writes every
//! batch inserted before a mark to the archive, while the batches stay in
//! memory for queries. Once committed, those batches may leave memory at
//! any time (budget, retention) without losing anything, and the log
//! before the mark can be deleted. Archive files carry the number of the
//! flush that wrote them, so that a scan can tell a committed file from
//! one being written.
//!
//! # Scans
//!
//! A scan ([`Store::scan`]) reads memory and, for the times memory no
//! longer holds whole (below a table's `complete_from`), the archive
//! ([`cold`]): each row exactly once, whatever flushes and evictions run
//! meanwhile.

pub mod cold;
mod provider;
mod table;
pub mod wal;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{RecordBatch, TimestampNanosecondArray, UInt32Array};
use arrow::compute::{filter_record_batch, max, min, take_record_batch};
use parking_lot::Mutex;
use tokio::sync::Notify;

pub use cold::ColdTier;
pub use provider::StoreTable;
pub use table::{Evicted, MERGE_AFTER, Part, SMALL_BATCH_ROWS, ScanSnapshot, Table};

use crate::ingest::Signal;

/// Limits of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bytes of Arrow memory all tables together may hold.
    pub memory_budget: u64,
    /// How long data stays in memory after both its event time and its
    /// arrival, when the budget allows; older rows are read from the archive.
    pub retention: Duration,
    /// Width of a time partition.
    pub partition: Duration,
    /// Rows older than this (event time against the wall clock) are refused.
    pub max_age: Duration,
    /// Rows further in the future than this are refused.
    pub max_future: Duration,
    /// Unflushed bytes that make the archive flush at once rather than at
    /// its interval.
    pub flush_bytes: u64,
}

impl StoreOptions {
    /// Options without time bounds and with no budget to speak of: for
    /// harnesses that feed the store directly (tests, replay).
    pub fn unbounded(retention: Duration, partition: Duration) -> Self {
        Self {
            memory_budget: u64::MAX,
            retention,
            partition,
            max_age: Duration::MAX,
            max_future: Duration::MAX,
            flush_bytes: u64::MAX,
        }
    }
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "memory budget full of telemetry not yet archived ({unflushed} of {used} bytes held, budget {budget}, {requested} more requested): the archive is behind"
    )]
    Full {
        used: u64,
        unflushed: u64,
        budget: u64,
        requested: u64,
    },
    #[error(
        "the request needs {requested} bytes of memory, more than the whole budget of {budget}"
    )]
    TooLarge { requested: u64, budget: u64 },
    #[error("the write-ahead log failed: {0}")]
    Wal(String),
}

impl StoreError {
    /// Whether the sender should try again later.
    pub fn retryable(&self) -> bool {
        !matches!(self, StoreError::TooLarge { .. })
    }
}

/// A time range in UTC nanoseconds: `[start, end)`, either side open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange {
        start: None,
        end: None,
    };

    /// Whether rows with times in `[min, max]` can fall in this range.
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        self.start.is_none_or(|s| max >= s) && self.end.is_none_or(|e| min < e)
    }

    /// The intersection of two ranges.
    pub fn intersect(self, other: TimeRange) -> TimeRange {
        let pick = |a: Option<i64>, b: Option<i64>, f: fn(i64, i64) -> i64| match (a, b) {
            (Some(a), Some(b)) => Some(f(a, b)),
            (a, b) => a.or(b),
        };
        TimeRange {
            start: pick(self.start, other.start, i64::max),
            end: pick(self.end, other.end, i64::min),
        }
    }

    /// Whether no time can fall in it.
    pub fn is_empty(&self) -> bool {
        matches!((self.start, self.end), (Some(s), Some(e)) if s >= e)
    }
}

/// Where flushes stand, read together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushMarks {
    /// Batches with sequence numbers below this are in the archive.
    pub committed: u64,
    /// A flush in progress writes the batches below this one.
    pub in_progress: Option<u64>,
    /// How many flushes have been committed (archive files name theirs).
    pub committed_flush: u64,
}

impl FlushMarks {
    /// Which side of the flush boundaries a sequence number is on: merges
    /// never mix sides.
    fn side(&self, seq: u64) -> u8 {
        if seq < self.committed {
            0
        } else if self.in_progress.is_some_and(|f| seq < f) {
            1
        } else {
            2
        }
    }
}

#[derive(Debug, Default)]
struct Sequencer {
    next_seq: u64,
    /// The write-ahead log position after the last record inserted.
    wal_next: u64,
}

#[derive(Debug)]
struct Progress {
    marks: FlushMarks,
    /// The log position the last committed flush covers.
    wal_committed: u64,
}

/// What every table of a store shares: the flush marks and the archive.
#[derive(Debug)]
pub(crate) struct Shared {
    progress: Mutex<Progress>,
    cold: OnceLock<Arc<dyn ColdTier>>,
}

impl Shared {
    pub(crate) fn marks(&self) -> FlushMarks {
        self.progress.lock().marks
    }

    pub(crate) fn cold(&self) -> Option<&Arc<dyn ColdTier>> {
        self.cold.get()
    }
}

/// Rows admitted for one table, split by partition.
#[derive(Debug, Default)]
pub struct Admitted {
    pub parts: Vec<Part>,
    pub rows: u64,
    pub bytes: u64,
    /// Rows refused for their time.
    pub refused: u64,
    /// Why, for the first refused row.
    pub reason: Option<String>,
}

/// Bytes counted against the budget for a batch on its way in; given
/// back if the batch never arrives.
#[derive(Debug)]
pub struct Reservation {
    used: Arc<AtomicU64>,
    bytes: u64,
}

impl Reservation {
    fn settle(mut self) -> u64 {
        std::mem::take(&mut self.bytes)
    }

    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// What a flush writes: every batch inserted before its mark and not yet
/// flushed, per table.
#[derive(Debug)]
pub struct FlushSnapshot {
    /// Batches with sequence numbers below this are written.
    pub seq: u64,
    /// Log records before this position are covered.
    pub wal_position: u64,
    pub tables: Vec<(Signal, Vec<RecordBatch>)>,
    /// The largest event time per table among the rows written.
    pub max_times: [i64; 3],
    pub rows: u64,
}

/// All tables and the memory budget they share.
#[derive(Debug)]
pub struct Store {
    tables: [Arc<Table>; 3],
    options: StoreOptions,
    used: Arc<AtomicU64>,
    unflushed: AtomicU64,
    sequencer: Mutex<Sequencer>,
    shared: Arc<Shared>,
    flush_wanted: Notify,
    wal: OnceLock<wal::Wal>,
    wal_dir: OnceLock<Arc<wal::Dir>>,
    /// The episodic memory's `decisions` and `facts`, registered beside
    /// the telemetry tables wherever SQL runs.
    memory: Arc<crate::memory::tables::MemoryIndex>,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl Store {
    pub fn new(options: StoreOptions) -> Self {
        let width = nanos(options.partition).max(1);
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress {
                marks: FlushMarks {
                    committed: 0,
                    in_progress: None,
                    committed_flush: 0,
                },
                wal_committed: 0,
            }),
            cold: OnceLock::new(),
        });
        Self {
            tables: Signal::ALL.map(|s| Arc::new(Table::new(s, width, shared.clone()))),
            options,
            used: Arc::default(),
            unflushed: AtomicU64::new(0),
            sequencer: Mutex::default(),
            shared,
            flush_wanted: Notify::new(),
            wal: OnceLock::new(),
            wal_dir: OnceLock::new(),
            memory: Arc::default(),
        }
    }

    pub fn memory_index(&self) -> &Arc<crate::memory::tables::MemoryIndex> {
        &self.memory
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    pub fn table(&self, signal: Signal) -> &Arc<Table> {
        &self.tables[signal as usize]
    }

    pub fn tables(&self) -> &[Arc<Table>] {
        &self.tables
    }

    /// Bytes held by all tables (and reserved for batches on their way in).
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Bytes held that the archive does not have yet.
    pub fn unflushed_bytes(&self) -> u64 {
        self.unflushed.load(Ordering::Acquire)
    }

    /// The archive, read by scans for what memory no longer holds.
    pub fn set_cold(&self, cold: Arc<dyn ColdTier>) {
        let _ = self.shared.cold.set(cold);
    }

    pub fn cold(&self) -> Option<&Arc<dyn ColdTier>> {
        self.shared.cold()
    }

    pub(crate) fn wal(&self) -> Option<&wal::Wal> {
        self.wal.get()
    }

    /// The write-ahead log's folder, once the log is started.
    pub fn wal_dir(&self) -> Option<&Arc<wal::Dir>> {
        self.wal_dir.get()
    }

    /// Where flushes stand.
    pub fn marks(&self) -> FlushMarks {
        self.shared.marks()
    }

    /// After a restart: rows of `signal` with times below `t` may be in the
    /// archive, so partitions below it are read with it.
    pub fn set_complete_from(&self, signal: Signal, t: i64) {
        let table = self.table(signal);
        let width = table.width;
        let aligned = t.div_euclid(width).saturating_add(1).saturating_mul(width);
        let mut state = table.state.write();
        state.complete_from = state.complete_from.max(aligned);
    }

    /// Whether a request could be taken now: the budget has room, or holds
    /// archived rows that can make room. Lets receivers refuse before
    /// decoding.
    pub fn has_room(&self) -> bool {
        if self.used_bytes() < self.options.memory_budget {
            return true;
        }
        let marks = self.marks();
        self.tables
            .iter()
            .any(|t| t.oldest_flushed(marks).is_some())
    }

    /// Keeps the rows of `batch` whose time the store accepts at `now`,
    /// split by partition.
    pub fn admit(&self, signal: Signal, batch: RecordBatch, now: i64) -> Admitted {
        let table = self.table(signal);
        let mut admitted = Admitted::default();
        if batch.num_rows() == 0 {
            return admitted;
        }
        let times = time_array(&batch, table.time_column);
        let oldest = now.saturating_sub(nanos(self.options.max_age));
        let newest = now.saturating_add(nanos(self.options.max_future));
        let (lo, hi) = (
            min(times).unwrap_or(i64::MIN),
            max(times).unwrap_or(i64::MAX),
        );
        let batch = if lo < oldest || hi > newest {
            let keep: arrow::array::BooleanArray = times
                .iter()
                .map(|t| Some(t.is_some_and(|t| t >= oldest && t <= newest)))
                .collect();
            let kept = keep.true_count();
            admitted.refused = (batch.num_rows() - kept) as u64;
            let past = times.iter().flatten().any(|t| t < oldest);
            admitted.reason = Some(if past {
                format!(
                    "{} rows with times more than {} in the past (store.max_age)",
                    admitted.refused,
                    humantime::format_duration(self.options.max_age)
                )
            } else {
                format!(
                    "{} rows with times more than {} in the future (store.max_future)",
                    admitted.refused,
                    humantime::format_duration(self.options.max_future)
                )
            });
            if kept == 0 {
                return admitted;
            }
            match filter_record_batch(&batch, &keep) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "could not filter rows by time");
                    return admitted;
                }
            }
        } else {
            batch
        };
        admitted.rows = batch.num_rows() as u64;
        admitted.parts = self.split(table, batch);
        admitted.bytes = admitted.parts.iter().map(|p| p.bytes).sum();
        admitted
    }

    /// Splits a batch by partition, each row by its own time.
    fn split(&self, table: &Table, batch: RecordBatch) -> Vec<Part> {
        let width = table.width;
        let times = time_array(&batch, table.time_column);
        let (Some(lo), Some(hi)) = (min(times), max(times)) else {
            return Vec::new();
        };
        let key = |t: i64| t.div_euclid(width).saturating_mul(width);
        if key(lo) == key(hi) {
            let bytes = batch.get_array_memory_size() as u64;
            return vec![Part {
                key: key(lo),
                batch,
                min_time: lo,
                max_time: hi,
                bytes,
            }];
        }
        let mut rows: std::collections::BTreeMap<i64, Vec<u32>> = Default::default();
        for (i, t) in times.values().iter().enumerate() {
            rows.entry(key(*t)).or_default().push(i as u32);
        }
        let mut parts = Vec::with_capacity(rows.len());
        for (k, indices) in rows {
            let indices = UInt32Array::from(indices);
            match take_record_batch(&batch, &indices) {
                Ok(part) => {
                    let t = time_array(&part, table.time_column);
                    let (lo, hi) = (min(t).unwrap_or(k), max(t).unwrap_or(k));
                    let bytes = part.get_array_memory_size() as u64;
                    parts.push(Part {
                        key: k,
                        batch: part,
                        min_time: lo,
                        max_time: hi,
                        bytes,
                    });
                }
                Err(e) => tracing::error!(error = %e, "could not split a batch by partition"),
            }
        }
        parts
    }

    /// Counts `bytes` against the budget, making room by dropping the
    /// oldest archived partitions when it is full.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, StoreError> {
        let budget = self.options.memory_budget;
        if bytes > budget {
            return Err(StoreError::TooLarge {
                requested: bytes,
                budget,
            });
        }
        loop {
            let used = self.used_bytes();
            if used.saturating_add(bytes) <= budget {
                if self
                    .used
                    .compare_exchange(used, used + bytes, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(Reservation {
                        used: self.used.clone(),
                        bytes,
                    });
                }
                continue;
            }
            if self.evict_oldest().is_none() {
                self.flush_wanted.notify_one();
                return Err(StoreError::Full {
                    used,
                    unflushed: self.unflushed_bytes(),
                    budget,
                    requested: bytes,
                });
            }
        }
    }

    /// Makes `reservation` hold `bytes`: gives back what is not needed, or
    /// reserves the difference (which may fail as [`Store::reserve`] does;
    /// the reservation is then given back whole).
    pub fn resize(&self, reservation: Reservation, bytes: u64) -> Result<Reservation, StoreError> {
        let held = reservation.bytes;
        if bytes <= held {
            self.used.fetch_sub(held - bytes, Ordering::AcqRel);
            let mut r = reservation;
            r.bytes = bytes;
            return Ok(r);
        }
        let more = self.reserve(bytes - held)?;
        let mut r = reservation;
        r.bytes += more.settle();
        Ok(r)
    }

    /// Drops the oldest archived partition of any table; `None` when no
    /// partition in memory is archived yet.
    fn evict_oldest(&self) -> Option<(Signal, Evicted)> {
        let marks = self.marks();
        let (table, _) = self
            .tables
            .iter()
            .filter_map(|t| Some((t, t.oldest_flushed(marks)?)))
            .min_by_key(|(_, key)| *key)?;
        let mut first = true;
        let evicted = table.evict(marks, |_| std::mem::take(&mut first).then_some(true));
        self.used.fetch_sub(evicted.bytes, Ordering::AcqRel);
        table
            .evicted_rows
            .fetch_add(evicted.rows, Ordering::Relaxed);
        // Another eviction may have taken it meanwhile: that made room too.
        Some((table.signal, evicted))
    }

    /// Adds a batch at once, without the log: for the engine's harnesses
    /// and tests. No time bounds; the budget applies. `now` is wall-clock
    /// nanoseconds.
    pub fn insert(&self, signal: Signal, batch: RecordBatch, now: i64) -> Result<(), StoreError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let parts = self.split(self.table(signal), batch);
        let bytes = parts.iter().map(|p| p.bytes).sum();
        let reservation = self.reserve(bytes)?;
        self.commit_insert(signal, parts, reservation, now, None);
        Ok(())
    }

    /// Stores a batch of the engine's own (no time bounds), through the log
    /// when one is open; the returned future may be dropped: the write goes
    /// on, it is only not waited for.
    pub fn append_batch(
        &self,
        signal: Signal,
        batch: RecordBatch,
        now: i64,
    ) -> Result<Appended, StoreError> {
        let parts = self.split(self.table(signal), batch);
        let admitted = Admitted {
            rows: parts.iter().map(|p| p.batch.num_rows() as u64).sum(),
            bytes: parts.iter().map(|p| p.bytes).sum(),
            parts,
            ..Admitted::default()
        };
        let reservation = self.reserve(admitted.bytes)?;
        Ok(self.append(signal, admitted, reservation, now))
    }

    /// Puts back a batch read from the log at start: over the budget if need
    /// be (it was accepted once), as it was inserted the first time.
    pub(crate) fn restore(&self, signal: Signal, batch: RecordBatch, arrived: i64, wal_next: u64) {
        if batch.num_rows() == 0 {
            return;
        }
        let parts = self.split(self.table(signal), batch);
        let bytes = parts.iter().map(|p| p.bytes).sum();
        self.used.fetch_add(bytes, Ordering::AcqRel);
        let reservation = Reservation {
            used: self.used.clone(),
            bytes,
        };
        self.commit_insert(signal, parts, reservation, arrived, Some(wal_next));
    }

    /// Opens the write-ahead log on `dir`: from here on, [`Store::append`]
    /// answers once rows are on disk. Call after [`wal::Dir::replay`].
    pub fn start_wal(
        self: &Arc<Self>,
        dir: Arc<wal::Dir>,
        durability: wal::Durability,
        next_lsn: u64,
    ) -> Result<(), wal::WalError> {
        let wal = wal::Wal::start(dir.clone(), Arc::downgrade(self), durability, next_lsn)?;
        let _ = self.wal.set(wal);
        let _ = self.wal_dir.set(dir);
        Ok(())
    }

    /// Makes admitted rows durable (when a write-ahead log is open) and
    /// inserts them; the future answers once they are both. Dropping the
    /// future does not cancel the write.
    pub fn append(
        &self,
        signal: Signal,
        admitted: Admitted,
        reservation: Reservation,
        now: i64,
    ) -> Appended {
        if admitted.parts.is_empty() {
            return Appended(None);
        }
        match self.wal.get() {
            Some(wal) => Appended(Some(wal.append(
                self,
                signal,
                admitted.parts,
                reservation,
                now,
            ))),
            None => {
                self.commit_insert(signal, admitted.parts, reservation, now, None);
                Appended(None)
            }
        }
    }

    /// Inserts parts whose bytes are reserved, under the next sequence
    /// number; `wal_next` is the log position after their record.
    pub(crate) fn commit_insert(
        &self,
        signal: Signal,
        parts: Vec<Part>,
        reservation: Reservation,
        now: i64,
        wal_next: Option<u64>,
    ) {
        let bytes = reservation.settle() as i64;
        let table = self.table(signal);
        let mut sequencer = self.sequencer.lock();
        let seq = sequencer.next_seq;
        sequencer.next_seq += 1;
        if let Some(next) = wal_next {
            sequencer.wal_next = sequencer.wal_next.max(next);
        }
        let (growth, unflushed_growth) = table.push(parts, seq, now);
        adjust(&self.used, growth);
        adjust(&self.unflushed, bytes + unflushed_growth);
        drop(sequencer);
        if self.unflushed_bytes() >= self.options.flush_bytes {
            self.flush_wanted.notify_one();
        }
    }

    /// Waits until unflushed rows pass `flush_bytes` or memory is full of
    /// them (the archive's flusher waits on this beside its interval).
    pub async fn flush_wanted(&self) {
        self.flush_wanted.notified().await;
    }

    /// Asks the flusher to run now.
    pub fn want_flush(&self) {
        self.flush_wanted.notify_one();
    }

    /// What memory holds of `range` for a scan, with the flush marks read
    /// under the same lock, and below which time the archive must be read.
    pub fn scan(&self, signal: Signal, range: TimeRange) -> ScanSnapshot {
        self.table(signal).snapshot(range)
    }

    /// Starts a flush: every batch inserted so far and not yet flushed.
    /// `None` while another flush is in progress.
    pub fn begin_flush(&self) -> Option<FlushSnapshot> {
        let sequencer = self.sequencer.lock();
        let (seq, wal_position) = (sequencer.next_seq, sequencer.wal_next);
        let committed = {
            let mut progress = self.shared.progress.lock();
            if progress.marks.in_progress.is_some() {
                return None;
            }
            progress.marks.in_progress = Some(seq);
            progress.marks.committed
        };
        drop(sequencer);
        let mut snapshot = FlushSnapshot {
            seq,
            wal_position,
            tables: Vec::new(),
            max_times: [i64::MIN; 3],
            rows: 0,
        };
        for table in &self.tables {
            let (batches, max_time) = table.unflushed(committed, seq);
            if batches.is_empty() {
                continue;
            }
            snapshot.rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            snapshot.max_times[table.signal as usize] = max_time;
            snapshot.tables.push((table.signal, batches));
        }
        Some(snapshot)
    }

    /// The flush numbered `number` is in the archive: its batches may leave
    /// memory, scans read its files, and the log before its position may go.
    pub fn commit_flush(&self, snapshot: &FlushSnapshot, number: u64) {
        // Under the sequencer, so that no insert changes the count meanwhile.
        let _sequencer = self.sequencer.lock();
        let committed = {
            let mut progress = self.shared.progress.lock();
            progress.marks.committed = snapshot.seq;
            progress.marks.committed_flush = number;
            progress.marks.in_progress = None;
            progress.wal_committed = snapshot.wal_position;
            snapshot.seq
        };
        let unflushed = self
            .tables
            .iter()
            .map(|t| t.unflushed_bytes(committed))
            .sum();
        self.unflushed.store(unflushed, Ordering::Release);
    }

    /// The flush failed: its batches stay unflushed, for the next one.
    pub fn abort_flush(&self) {
        self.shared.progress.lock().marks.in_progress = None;
    }

    /// Continues the flush count after a restart, so that file names of
    /// committed and abandoned flushes are never reused.
    pub fn resume_flushes(&self, committed_flush: u64) {
        let mut progress = self.shared.progress.lock();
        progress.marks.committed_flush = progress.marks.committed_flush.max(committed_flush);
    }

    /// Takes out archived partitions whose newest row and last insert are
    /// both older than the retention; `now` is wall-clock nanoseconds.
    /// Unarchived ones wait for the next flush.
    pub fn expire(&self, now: i64) -> Vec<(Signal, Evicted)> {
        let horizon = now.saturating_sub(nanos(self.options.retention));
        let marks = self.marks();
        let mut all = Vec::with_capacity(self.tables.len());
        for table in &self.tables {
            let evicted = table.evict(marks, |p| {
                Some(p.max_time < horizon && p.last_insert < horizon)
            });
            self.used.fetch_sub(evicted.bytes, Ordering::AcqRel);
            all.push((table.signal, evicted));
        }
        all
    }
}

/// The answer to [`Store::append`]: ready once the rows are durable and
/// inserted.
#[derive(Debug)]
pub struct Appended(Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl std::future::Future for Appended {
    type Output = Result<(), StoreError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            None => std::task::Poll::Ready(Ok(())),
            Some(rx) => std::pin::Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| Err(StoreError::Wal("the log writer stopped".into())))
            }),
        }
    }
}

fn adjust(counter: &AtomicU64, by: i64) {
    if by >= 0 {
        counter.fetch_add(by as u64, Ordering::AcqRel);
    } else {
        counter.fetch_sub(by.unsigned_abs(), Ordering::AcqRel);
    }
}

/// A table's time column.
fn time_array(batch: &RecordBatch, column: usize) -> &TimestampNanosecondArray {
    batch
        .column(column)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("time columns are nanosecond timestamps")
}

#[cfg(test)]
mod tests;
