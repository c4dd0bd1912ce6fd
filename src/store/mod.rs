//! The in-memory store: per table, record batches grouped into event-time
//! partitions, bounded by one memory budget shared by all tables.
//!
//! Writers reserve the bytes of a batch before it is added; when the budget
//! is full the reservation fails and the receivers answer "retry later"
//! (HTTP 429, gRPC UNAVAILABLE) instead of growing. Accepted data leaves only
//! through retention or a drain at shutdown, which are counted and logged,
//! never silently, and which hand the batches back so that the archive
//! (`memory::archive`) keeps them instead of letting them vanish.
//!
//! A batch lands in the partition of its earliest row and widens that
//! partition's `[min, max]` time range, so pruning by time stays exact without
//! splitting batches.

mod provider;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::{RecordBatch, TimestampNanosecondArray};
use arrow::compute::{concat_batches, max, min};
use arrow::datatypes::SchemaRef;
use parking_lot::RwLock;

pub use provider::StoreTable;

use crate::ingest::Signal;

/// Limits of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Bytes of Arrow memory all tables together may hold.
    pub memory_budget: u64,
    /// How long data is kept after both its event time and its arrival.
    pub retention: Duration,
    /// Width of a time partition.
    pub partition: Duration,
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("memory budget full: {used} of {budget} bytes in use, {requested} more requested")]
    Full {
        used: u64,
        budget: u64,
        requested: u64,
    },
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
}

#[derive(Debug)]
struct Partition {
    batches: Vec<RecordBatch>,
    min_time: i64,
    max_time: i64,
    bytes: u64,
    rows: u64,
    /// Wall-clock nanoseconds of the last insert: data that arrives late
    /// (or with old timestamps) still gets the whole retention.
    last_insert: i64,
}

/// Batches smaller than this are merged once [`MERGE_AFTER`] of them gather
/// at the end of a partition.
pub const SMALL_BATCH_ROWS: usize = 8192;
/// How many small batches a partition collects before merging them.
pub const MERGE_AFTER: usize = 16;

impl Partition {
    /// Merges the trailing small batches into one once there are enough of
    /// them: SDKs export a few hundred items per request, and each batch
    /// costs buffers, alignment and per-batch work in every scan. Returns
    /// how many bytes the partition grew by (negative: freed).
    fn compact(&mut self, schema: &SchemaRef) -> i64 {
        let small = self
            .batches
            .iter()
            .rev()
            .take_while(|b| b.num_rows() < SMALL_BATCH_ROWS)
            .count();
        if small < MERGE_AFTER {
            return 0;
        }
        let tail = self.batches.split_off(self.batches.len() - small);
        let before: u64 = tail.iter().map(|b| b.get_array_memory_size() as u64).sum();
        match concat_batches(schema, &tail) {
            Ok(merged) => {
                let after = merged.get_array_memory_size() as u64;
                self.batches.push(merged);
                self.bytes = self.bytes - before + after;
                after as i64 - before as i64
            }
            Err(e) => {
                // Cannot happen for batches of one schema; keep them as they were.
                tracing::error!(error = %e, "could not merge small batches");
                self.batches.extend(tail);
                0
            }
        }
    }
}

/// One table: its schema and its partitions.
#[derive(Debug)]
pub struct Table {
    signal: Signal,
    schema: SchemaRef,
    time_column: usize,
    partitions: RwLock<BTreeMap<i64, Partition>>,
}

impl Table {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn name(&self) -> &'static str {
        self.signal.table()
    }

    /// The index of the column partitions are pruned by.
    pub fn time_column_index(&self) -> usize {
        self.time_column
    }

    /// The name of the column partitions are pruned by.
    pub fn time_column(&self) -> &str {
        self.schema.field(self.time_column).name()
    }

    /// The batches whose partitions may hold rows in `range`.
    pub fn batches(&self, range: TimeRange) -> Vec<RecordBatch> {
        self.partitions
            .read()
            .values()
            .filter(|p| range.overlaps(p.min_time, p.max_time))
            .flat_map(|p| p.batches.iter().cloned())
            .collect()
    }

    /// The batches whose partitions may hold rows in `range`, split in two:
    /// those of partitions wholly inside the range, and those of partitions
    /// that straddle one of its ends (whose rows need filtering).
    pub fn batches_within(&self, range: TimeRange) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
        let mut inside = Vec::new();
        let mut straddling = Vec::new();
        for p in self.partitions.read().values() {
            if !range.overlaps(p.min_time, p.max_time) {
                continue;
            }
            let contained = range.start.is_none_or(|s| p.min_time >= s)
                && range.end.is_none_or(|e| p.max_time < e);
            let into = if contained {
                &mut inside
            } else {
                &mut straddling
            };
            into.extend(p.batches.iter().cloned());
        }
        (inside, straddling)
    }

    /// Bytes and rows held.
    pub fn usage(&self) -> (u64, u64) {
        self.partitions
            .read()
            .values()
            .fold((0, 0), |(b, r), p| (b + p.bytes, r + p.rows))
    }
}

/// What left one table's memory in an expiry pass or a drain: the counts,
/// and the batches themselves, for the archive to keep.
#[derive(Debug, Default, Clone)]
pub struct Expired {
    pub table: &'static str,
    pub partitions: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Oldest partition first. No longer counted against the budget.
    pub batches: Vec<RecordBatch>,
}

/// All tables and the memory budget they share.
#[derive(Debug)]
pub struct Store {
    tables: [Arc<Table>; 3],
    options: StoreOptions,
    used: AtomicU64,
    /// The episodic memory's `decisions` and `facts`, registered beside
    /// the telemetry tables wherever SQL runs.
    memory: Arc<crate::memory::tables::MemoryIndex>,
}

impl Store {
    pub fn new(options: StoreOptions) -> Self {
        let table = |signal: Signal| {
            let schema = signal.schema();
            let time_column = schema
                .index_of(signal.time_column())
                .expect("every signal's schema has its time column");
            Arc::new(Table {
                signal,
                schema,
                time_column,
                partitions: RwLock::new(BTreeMap::new()),
            })
        };
        Self {
            tables: Signal::ALL.map(table),
            options,
            used: AtomicU64::new(0),
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

    /// Bytes held by all tables.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Whether no more data fits: lets receivers refuse before decoding.
    pub fn is_full(&self) -> bool {
        self.used_bytes() >= self.options.memory_budget
    }

    /// Adds a batch if the budget allows; `now` is wall-clock nanoseconds.
    pub fn insert(&self, signal: Signal, batch: RecordBatch, now: i64) -> Result<(), StoreError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let bytes = batch.get_array_memory_size() as u64;
        let budget = self.options.memory_budget;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= budget).then_some(used + bytes)
            })
            .map_err(|used| StoreError::Full {
                used,
                budget,
                requested: bytes,
            })?;

        let table = self.table(signal);
        let times = batch
            .column(table.time_column)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .expect("time columns are nanosecond timestamps");
        let (lo, hi) = (
            min(times).expect("a non-empty, non-null column has a minimum"),
            max(times).expect("a non-empty, non-null column has a maximum"),
        );
        let width = self.options.partition.as_nanos().max(1) as i64;
        let key = lo.div_euclid(width) * width;
        let rows = batch.num_rows() as u64;
        let mut partitions = table.partitions.write();
        let p = partitions.entry(key).or_insert_with(|| Partition {
            batches: Vec::new(),
            min_time: lo,
            max_time: hi,
            bytes: 0,
            rows: 0,
            last_insert: now,
        });
        p.batches.push(batch);
        p.min_time = p.min_time.min(lo);
        p.max_time = p.max_time.max(hi);
        p.bytes += bytes;
        p.rows += rows;
        p.last_insert = p.last_insert.max(now);
        let growth = p.compact(&table.schema);
        drop(partitions);
        if growth >= 0 {
            self.used.fetch_add(growth as u64, Ordering::AcqRel);
        } else {
            self.used.fetch_sub(growth.unsigned_abs(), Ordering::AcqRel);
        }
        Ok(())
    }

    /// Takes out partitions whose newest row and last insert are both older
    /// than the retention, one entry per table (empty when nothing expired);
    /// `now` is wall-clock nanoseconds.
    pub fn expire(&self, now: i64) -> Vec<Expired> {
        let horizon = now.saturating_sub(self.options.retention.as_nanos() as i64);
        self.take(|p| p.max_time < horizon && p.last_insert < horizon)
    }

    /// Takes out everything, one entry per table: at shutdown, so that the
    /// archive can keep what memory held.
    pub fn drain(&self) -> Vec<Expired> {
        self.take(|_| true)
    }

    fn take(&self, leaves: impl Fn(&Partition) -> bool) -> Vec<Expired> {
        let mut all = Vec::with_capacity(self.tables.len());
        for table in &self.tables {
            let mut expired = Expired {
                table: table.name(),
                ..Expired::default()
            };
            let mut partitions = table.partitions.write();
            for (_, p) in partitions.extract_if(.., |_, p| leaves(p)) {
                expired.partitions += 1;
                expired.rows += p.rows;
                expired.bytes += p.bytes;
                expired.batches.extend(p.batches);
            }
            drop(partitions);
            self.used.fetch_sub(expired.bytes, Ordering::AcqRel);
            all.push(expired);
        }
        all
    }
}

#[cfg(test)]
mod tests;
