//! One table of the store: event-time partitions of record batches, each
//! batch tagged with the sequence number of its insert, so that a flush
//! can tell what it has written to the archive from what it has not.
//!
//! A partition is *complete* when it holds every row this node accepted
//! for its time range; partitions below the table's `complete_from` may
//! have rows in the archive instead (they were evicted, or flushed before a
//! restart). Scans read complete partitions whole, and of the others only
//! what is not yet flushed; the rest comes from the archive (see
//! [`super::cold`]).

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use parking_lot::RwLock;

use std::sync::Arc;

use super::{FlushMarks, Shared, TimeRange};
use crate::ingest::Signal;

/// Batches smaller than this are merged once [`MERGE_AFTER`] of them gather
/// at the end of a partition.
pub const SMALL_BATCH_ROWS: usize = 8192;
/// How many small batches a partition collects before merging them.
pub const MERGE_AFTER: usize = 16;

/// A batch and the sequence number of the insert that brought it (a merge
/// keeps the largest of its inputs', which are all on the same side of
/// every flush boundary).
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) batch: RecordBatch,
    pub(super) seq: u64,
    pub(super) bytes: u64,
}

#[derive(Debug)]
pub(super) struct Partition {
    pub(super) batches: Vec<Stored>,
    pub(super) min_time: i64,
    pub(super) max_time: i64,
    pub(super) bytes: u64,
    pub(super) rows: u64,
    /// The largest sequence number of its batches: the partition is wholly
    /// in the archive once the committed flush mark passes it.
    pub(super) max_seq: u64,
    /// Wall-clock nanoseconds of the last insert: data that arrives late
    /// (or with old timestamps) still gets the whole retention.
    pub(super) last_insert: i64,
}

impl Partition {
    fn new(min_time: i64, max_time: i64, now: i64) -> Self {
        Self {
            batches: Vec::new(),
            min_time,
            max_time,
            bytes: 0,
            rows: 0,
            max_seq: 0,
            last_insert: now,
        }
    }

    pub(super) fn flushed(&self, marks: FlushMarks) -> bool {
        self.max_seq < marks.committed
    }

    /// Merges the trailing small batches into one once there are enough of
    /// them, never across a flush boundary: SDKs export a few hundred items
    /// per request, and each batch costs buffers, alignment and per-batch
    /// work in every scan. Returns how many bytes the partition grew by
    /// (negative: freed), and of those how many are not yet flushed.
    fn compact(&mut self, schema: &SchemaRef, marks: FlushMarks) -> (i64, i64) {
        let Some(last) = self.batches.last() else {
            return (0, 0);
        };
        let side = marks.side(last.seq);
        let small = self
            .batches
            .iter()
            .rev()
            .take_while(|b| b.batch.num_rows() < SMALL_BATCH_ROWS && marks.side(b.seq) == side)
            .count();
        if small < MERGE_AFTER {
            return (0, 0);
        }
        let tail = self.batches.split_off(self.batches.len() - small);
        let before: u64 = tail.iter().map(|b| b.bytes).sum();
        let seq = tail.iter().map(|b| b.seq).max().unwrap_or(0);
        let batches: Vec<&RecordBatch> = tail.iter().map(|b| &b.batch).collect();
        match concat_batches(schema, batches) {
            Ok(merged) => {
                let after = merged.get_array_memory_size() as u64;
                self.batches.push(Stored {
                    batch: merged,
                    seq,
                    bytes: after,
                });
                self.bytes = self.bytes - before + after;
                let growth = after as i64 - before as i64;
                let unflushed = if seq >= marks.committed { growth } else { 0 };
                (growth, unflushed)
            }
            Err(e) => {
                // Cannot happen for batches of one schema; keep them as they were.
                tracing::error!(error = %e, "could not merge small batches");
                self.batches.extend(tail);
                (0, 0)
            }
        }
    }
}

/// A batch bound for one partition: rows of one partition's time range.
#[derive(Debug, Clone)]
pub struct Part {
    pub(super) key: i64,
    pub(super) batch: RecordBatch,
    pub(super) min_time: i64,
    pub(super) max_time: i64,
    pub(super) bytes: u64,
}

impl Part {
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[derive(Debug)]
pub(super) struct TableState {
    pub(super) partitions: BTreeMap<i64, Partition>,
    /// Partitions whose key is at least this hold every row of their range;
    /// rows below may be in the archive only.
    pub(super) complete_from: i64,
}

/// What a scan reads from memory, taken under one lock with the flush
/// marks, so that together with the archive it sees every row once.
#[derive(Debug, Clone)]
pub struct ScanSnapshot {
    /// Batches to read from memory (rows outside the requested range may
    /// be among them: partitions are selected, not rows).
    pub batches: Vec<RecordBatch>,
    /// Rows with times below this must be read from the archive (for the
    /// part of the requested range below it); `None`: memory holds them all.
    pub archive_below: Option<i64>,
    /// The flushes committed when the snapshot was taken: archive files of
    /// later flushes are not to be read (their rows came from memory).
    pub committed_flush: u64,
    /// Batches of partitions wholly inside the requested range, then those
    /// of partitions that straddle one of its ends (whose rows need
    /// filtering): `batches[..inside]` and `batches[inside..]`.
    pub inside: usize,
}

/// One table: its schema and its partitions.
#[derive(Debug)]
pub struct Table {
    pub(super) signal: Signal,
    pub(super) schema: SchemaRef,
    pub(super) time_column: usize,
    /// Width of a partition, nanoseconds.
    pub(super) width: i64,
    pub(super) state: RwLock<TableState>,
    pub(super) shared: Arc<Shared>,
    /// Archived rows dropped early to make room (the budget was full).
    pub(super) evicted_rows: std::sync::atomic::AtomicU64,
}

impl Table {
    pub(super) fn new(signal: Signal, width: i64, shared: Arc<Shared>) -> Self {
        let schema = signal.schema();
        let time_column = schema
            .index_of(signal.time_column())
            .expect("every signal's schema has its time column");
        Self {
            signal,
            schema,
            time_column,
            width: width.max(1),
            state: RwLock::new(TableState {
                partitions: BTreeMap::new(),
                complete_from: i64::MIN,
            }),
            shared,
            evicted_rows: Default::default(),
        }
    }

    /// Archived rows dropped from memory early to make room for new ones.
    pub fn evicted_rows(&self) -> u64 {
        self.evicted_rows.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn name(&self) -> &'static str {
        self.signal.table()
    }

    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// The index of the column partitions are pruned by.
    pub fn time_column_index(&self) -> usize {
        self.time_column
    }

    /// The name of the column partitions are pruned by.
    pub fn time_column(&self) -> &str {
        self.schema.field(self.time_column).name()
    }

    /// The batches in memory whose partitions may hold rows in `range`,
    /// flushed or not (memory's view alone, without the archive).
    pub fn batches(&self, range: TimeRange) -> Vec<RecordBatch> {
        self.state
            .read()
            .partitions
            .values()
            .filter(|p| range.overlaps(p.min_time, p.max_time))
            .flat_map(|p| p.batches.iter().map(|b| b.batch.clone()))
            .collect()
    }

    /// Bytes and rows held in memory.
    pub fn usage(&self) -> (u64, u64) {
        self.state
            .read()
            .partitions
            .values()
            .fold((0, 0), |(b, r), p| (b + p.bytes, r + p.rows))
    }

    /// Partitions below this key may have rows in the archive only.
    pub fn complete_from(&self) -> i64 {
        self.state.read().complete_from
    }

    /// The archive behind the table, if any.
    pub fn cold(&self) -> Option<&Arc<dyn super::ColdTier>> {
        self.shared.cold()
    }

    /// What a scan of `range` reads from memory, and below which time it
    /// must read the archive.
    ///
    /// The flush marks are read under the table's lock: an eviction (which
    /// holds it to write) can then only be wholly before the snapshot, with
    /// marks at least as new as those it evicted under, or wholly after.
    pub fn snapshot(&self, range: TimeRange) -> ScanSnapshot {
        let state = self.state.read();
        let marks = self.shared.marks();
        let mut inside = Vec::new();
        let mut straddling = Vec::new();
        for (&key, p) in &state.partitions {
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
            let complete = key >= state.complete_from;
            into.extend(
                p.batches
                    .iter()
                    // Below `complete_from`, what is flushed is read from the
                    // archive instead: reading it here too would count it twice.
                    .filter(|b| complete || b.seq >= marks.committed)
                    .map(|b| b.batch.clone()),
            );
        }
        let archive_below = (self.shared.cold().is_some()
            && state.complete_from > i64::MIN
            && range.start.is_none_or(|s| s < state.complete_from))
        .then_some(state.complete_from);
        let n = inside.len();
        inside.extend(straddling);
        ScanSnapshot {
            batches: inside,
            archive_below,
            committed_flush: marks.committed_flush,
            inside: n,
        }
    }

    /// Adds parts under the caller's sequence number; returns the bytes the
    /// table grew by beyond the parts (merges), and of those the unflushed.
    pub(super) fn push(&self, parts: Vec<Part>, seq: u64, now: i64) -> (i64, i64) {
        let mut state = self.state.write();
        let mut growth = (0, 0);
        for part in parts {
            let rows = part.batch.num_rows() as u64;
            let p = state
                .partitions
                .entry(part.key)
                .or_insert_with(|| Partition::new(part.min_time, part.max_time, now));
            p.batches.push(Stored {
                batch: part.batch,
                seq,
                bytes: part.bytes,
            });
            p.min_time = p.min_time.min(part.min_time);
            p.max_time = p.max_time.max(part.max_time);
            p.bytes += part.bytes;
            p.rows += rows;
            p.max_seq = p.max_seq.max(seq);
            p.last_insert = p.last_insert.max(now);
            let (g, u) = p.compact(&self.schema, self.shared.marks());
            growth.0 += g;
            growth.1 += u;
        }
        growth
    }

    /// The unflushed batches with sequence numbers below `before`, and the
    /// largest event time among them.
    pub(super) fn unflushed(&self, committed: u64, before: u64) -> (Vec<RecordBatch>, i64) {
        let state = self.state.read();
        let mut batches = Vec::new();
        let mut max_time = i64::MIN;
        for p in state.partitions.values() {
            if p.max_seq < committed {
                continue;
            }
            let mut any = false;
            for b in &p.batches {
                if b.seq >= committed && b.seq < before {
                    batches.push(b.batch.clone());
                    any = true;
                }
            }
            if any {
                max_time = max_time.max(p.max_time);
            }
        }
        (batches, max_time)
    }

    /// Bytes of batches not yet flushed.
    pub(super) fn unflushed_bytes(&self, committed: u64) -> u64 {
        self.state
            .read()
            .partitions
            .values()
            .filter(|p| p.max_seq >= committed)
            .flat_map(|p| p.batches.iter())
            .filter(|b| b.seq >= committed)
            .map(|b| b.bytes)
            .sum()
    }

    /// Takes out flushed partitions chosen by `leaves` (oldest first, until
    /// it says stop by returning `None`), raising `complete_from` past them.
    pub(super) fn evict(
        &self,
        marks: FlushMarks,
        mut leaves: impl FnMut(&Partition) -> Option<bool>,
    ) -> Evicted {
        let mut state = self.state.write();
        let mut evicted = Evicted::default();
        let mut keys = Vec::new();
        for (&key, p) in &state.partitions {
            if !p.flushed(marks) {
                continue;
            }
            match leaves(p) {
                Some(true) => keys.push(key),
                Some(false) => {}
                None => break,
            }
        }
        for key in keys {
            if let Some(p) = state.partitions.remove(&key) {
                evicted.partitions += 1;
                evicted.rows += p.rows;
                evicted.bytes += p.bytes;
                // The end of the partition's range, not of its rows: rows
                // arriving later for the rest of the range must count as
                // incomplete too.
                evicted.complete_from = evicted.complete_from.max(key.saturating_add(self.width));
                evicted.oldest = evicted.oldest.min(p.min_time);
            }
        }
        // Partitions below are incomplete from now on: their flushed rows
        // are read from the archive.
        state.complete_from = state.complete_from.max(evicted.complete_from);
        evicted
    }

    /// The key of the oldest flushed partition, for choosing which table
    /// gives up memory first.
    pub(super) fn oldest_flushed(&self, marks: FlushMarks) -> Option<i64> {
        self.state
            .read()
            .partitions
            .iter()
            .find(|(_, p)| p.flushed(marks))
            .map(|(&k, _)| k)
    }
}

/// What left a table's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub partitions: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Oldest row time among them.
    pub oldest: i64,
    pub(super) complete_from: i64,
}

impl Default for Evicted {
    fn default() -> Self {
        Self {
            partitions: 0,
            rows: 0,
            bytes: 0,
            oldest: i64::MAX,
            complete_from: i64::MIN,
        }
    }
}
