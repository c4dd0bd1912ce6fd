use arrow::array::RecordBatch;

use super::*;
use crate::ingest::convert::spans::spans_at;

const MINUTE: i64 = 60_000_000_000;

fn store(budget: u64) -> Store {
    Store::new(StoreOptions {
        memory_budget: budget,
        retention: Duration::from_secs(600),
        partition: Duration::from_secs(60),
        max_age: Duration::from_secs(24 * 3600),
        max_future: Duration::from_secs(600),
        flush_bytes: u64::MAX,
    })
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Flushes everything inserted so far, as the archive would.
fn flush(s: &Store) -> FlushSnapshot {
    let snapshot = s.begin_flush().expect("no flush in progress");
    let number = s.marks().committed_flush + 1;
    s.commit_flush(&snapshot, number);
    snapshot
}

/// The archive as a scan sees it: nothing, but present, so that scans
/// say which times they would read from it.
#[derive(Debug)]
struct NoArchive;

#[async_trait::async_trait]
impl ColdTier for NoArchive {
    async fn scan(
        &self,
        _: &dyn datafusion::catalog::Session,
        _: Signal,
        _: TimeRange,
        _: u64,
        _: Option<&Vec<usize>>,
    ) -> datafusion::common::Result<Option<Arc<dyn datafusion::physical_plan::ExecutionPlan>>> {
        Ok(None)
    }
}

#[test]
fn rows_are_placed_by_their_own_time_and_pruned_by_partition() {
    let s = store(u64::MAX);
    s.insert(Signal::Traces, spans_at(&[10 * MINUTE + 5]), 0)
        .unwrap();
    s.insert(Signal::Traces, spans_at(&[20 * MINUTE, 21 * MINUTE + 1]), 0)
        .unwrap();
    let t = s.table(Signal::Traces);
    let rows = |r: TimeRange| rows(&t.batches(r));
    assert_eq!(rows(TimeRange::ALL), 3);
    assert_eq!(t.state.read().partitions.len(), 3, "one row per minute");
    assert_eq!(
        rows(TimeRange {
            start: Some(11 * MINUTE),
            end: None
        }),
        2
    );
    assert_eq!(
        rows(TimeRange {
            start: Some(21 * MINUTE),
            end: None
        }),
        1,
        "the row at 20 min is in its own partition now"
    );
    assert_eq!(
        rows(TimeRange {
            start: None,
            end: Some(10 * MINUTE + 5)
        }),
        0
    );
}

#[test]
fn rows_outside_the_time_bounds_are_refused_with_a_reason() {
    let s = store(u64::MAX);
    let now = 1_000_000 * MINUTE;
    let far_future = i64::MAX - 1;
    let batch = spans_at(&[0, now - MINUTE, now, now + 5 * MINUTE, far_future]);
    let admitted = s.admit(Signal::Traces, batch, now);
    assert_eq!((admitted.rows, admitted.refused), (3, 2));
    let reason = admitted.reason.unwrap();
    assert!(
        reason.contains("2 rows") && reason.contains("max_age"),
        "{reason}"
    );
    let future = s.admit(Signal::Traces, spans_at(&[now + 20 * MINUTE]), now);
    assert_eq!((future.rows, future.refused), (0, 1));
    assert!(future.reason.unwrap().contains("max_future"));
    assert!(future.parts.is_empty());
}

#[test]
fn a_full_budget_drops_archived_partitions_and_keeps_taking_new_data() {
    let one = spans_at(&[MINUTE]).get_array_memory_size() as u64;
    let s = store(one * 2 + one / 2);
    s.insert(Signal::Traces, spans_at(&[MINUTE]), 0).unwrap();
    s.insert(Signal::Traces, spans_at(&[2 * MINUTE]), 0)
        .unwrap();
    // Nothing archived yet: the third is refused, with the archive named.
    let err = s
        .insert(Signal::Traces, spans_at(&[3 * MINUTE]), 0)
        .unwrap_err();
    assert!(err.to_string().contains("not yet archived"), "{err}");
    assert!(err.retryable());
    assert_eq!(s.table(Signal::Traces).usage().1, 2);
    // Once archived, the oldest partition makes room for the newest.
    flush(&s);
    assert_eq!(s.unflushed_bytes(), 0);
    s.insert(Signal::Traces, spans_at(&[3 * MINUTE]), 0)
        .unwrap();
    let t = s.table(Signal::Traces);
    let times: Vec<i64> = t.state.read().partitions.keys().copied().collect();
    assert_eq!(times, [2 * MINUTE, 3 * MINUTE], "the oldest left");
    assert!(s.used_bytes() <= one * 2 + one / 2);
    assert_eq!(t.complete_from(), 2 * MINUTE, "below, the archive is read");
    // More than the whole budget is no use retrying.
    let big = spans_at(&(0..500).map(|i| 4 * MINUTE + i).collect::<Vec<_>>());
    assert!(big.get_array_memory_size() as u64 > one * 3);
    let err = s.insert(Signal::Traces, big, 0).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }) && !err.retryable());
}

#[test]
fn retention_drops_only_what_the_archive_has() {
    let s = store(u64::MAX);
    let now = 100 * MINUTE;
    // Old event time, arrived long ago: expires once archived.
    s.insert(Signal::Traces, spans_at(&[MINUTE]), MINUTE)
        .unwrap();
    // Old event time, arrived just now: kept for the whole retention.
    s.insert(Signal::Traces, spans_at(&[2 * MINUTE]), now)
        .unwrap();
    // Recent event time: kept.
    s.insert(Signal::Traces, spans_at(&[now - MINUTE]), MINUTE)
        .unwrap();
    let gone = |e: Vec<(Signal, Evicted)>| e.iter().map(|(_, e)| e.rows).sum::<u64>();
    assert_eq!(gone(s.expire(now)), 0, "not archived: stays");
    flush(&s);
    let before = s.used_bytes();
    let expired = s.expire(now);
    assert_eq!(gone(expired.clone()), 1);
    assert_eq!(expired[0].0, Signal::Traces);
    assert_eq!(s.used_bytes(), before - expired[0].1.bytes);
    assert_eq!(s.table(Signal::Traces).usage().1, 2);
    assert_eq!(gone(s.expire(now)), 0, "a second pass finds nothing more");
}

#[test]
fn a_flush_takes_what_was_inserted_before_it_and_nothing_twice() {
    let s = store(u64::MAX);
    s.insert(Signal::Traces, spans_at(&[MINUTE]), 0).unwrap();
    s.insert(Signal::Traces, spans_at(&[MINUTE + 1]), 0)
        .unwrap();
    let first = s.begin_flush().unwrap();
    assert_eq!(first.rows, 2);
    assert!(s.begin_flush().is_none(), "one flush at a time");
    // Inserted while the first flush is written: for the next one.
    s.insert(Signal::Traces, spans_at(&[MINUTE + 2]), 0)
        .unwrap();
    s.commit_flush(&first, 1);
    assert_eq!(s.marks().committed_flush, 1);
    let second = s.begin_flush().unwrap();
    assert_eq!(second.rows, 1);
    // A failed flush leaves its rows for the next attempt.
    s.abort_flush();
    let again = s.begin_flush().unwrap();
    assert_eq!(again.rows, 1);
    s.commit_flush(&again, 3);
    assert_eq!(s.begin_flush().map(|f| f.rows), Some(0));
}

#[test]
fn merges_never_mix_flushed_and_unflushed_batches() {
    let s = store(u64::MAX);
    for i in 0..MERGE_AFTER as i64 - 1 {
        s.insert(Signal::Traces, spans_at(&[MINUTE + i]), 0)
            .unwrap();
    }
    let snapshot = s.begin_flush().unwrap();
    // Enough small batches for a merge, but on both sides of the flush.
    for i in 0..3 {
        s.insert(Signal::Traces, spans_at(&[MINUTE + 100 + i]), 0)
            .unwrap();
    }
    let t = s.table(Signal::Traces);
    assert_eq!(t.batches(TimeRange::ALL).len(), MERGE_AFTER + 2);
    s.commit_flush(&snapshot, 1);
    // What the flush took is exactly what is now flushed.
    assert_eq!(snapshot.rows, MERGE_AFTER as u64 - 1);
    let unflushed = s.begin_flush().unwrap();
    assert_eq!(unflushed.rows, 3);
}

#[test]
fn scans_read_memory_whole_above_complete_from_and_unflushed_rows_below() {
    let s = store(u64::MAX);
    s.set_cold(Arc::new(NoArchive));
    s.insert(Signal::Traces, spans_at(&[MINUTE, 5 * MINUTE]), 0)
        .unwrap();
    flush(&s);
    // A restart said rows before 3 min may be in the archive.
    s.set_complete_from(Signal::Traces, 2 * MINUTE + 1);
    assert_eq!(s.table(Signal::Traces).complete_from(), 3 * MINUTE);
    // A late row below it, not yet archived.
    s.insert(Signal::Traces, spans_at(&[MINUTE + 1]), 0)
        .unwrap();
    let snapshot = s.scan(Signal::Traces, TimeRange::ALL);
    assert_eq!(snapshot.archive_below, Some(3 * MINUTE));
    // The archived row at 1 min comes from the archive, the late one and
    // the one at 5 min from memory.
    assert_eq!(rows(&snapshot.batches), 2);
    assert_eq!(snapshot.committed_flush, 1);
    // A range wholly above reads no archive.
    let recent = s.scan(
        Signal::Traces,
        TimeRange {
            start: Some(4 * MINUTE),
            end: None,
        },
    );
    assert_eq!(recent.archive_below, None);
    assert_eq!(rows(&recent.batches), 1);
}

#[test]
fn small_batches_are_merged_and_memory_accounting_follows() {
    let s = store(u64::MAX);
    let mut sizes = 0;
    for i in 0..MERGE_AFTER as i64 {
        let b = spans_at(&[MINUTE + i, MINUTE + i + 1]);
        sizes += b.get_array_memory_size() as u64;
        s.insert(Signal::Traces, b, 0).unwrap();
    }
    let t = s.table(Signal::Traces);
    let batches = t.batches(TimeRange::ALL);
    assert_eq!(batches.len(), 1, "merged into one batch");
    assert_eq!(batches[0].num_rows(), 2 * MERGE_AFTER);
    let (bytes, rows) = t.usage();
    assert_eq!(rows, 2 * MERGE_AFTER as u64);
    assert_eq!(bytes, batches[0].get_array_memory_size() as u64);
    assert!(
        bytes < sizes / 2,
        "merging saves the per-batch overhead: {bytes} vs {sizes}"
    );
    assert_eq!(s.used_bytes(), bytes);
    assert_eq!(s.unflushed_bytes(), bytes);
}
