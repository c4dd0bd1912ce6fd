use arrow::array::RecordBatch;

use super::*;
use crate::ingest::convert::spans::spans_at;

const MINUTE: i64 = 60_000_000_000;

fn store(budget: u64) -> Store {
    Store::new(StoreOptions {
        memory_budget: budget,
        retention: Duration::from_secs(600),
        partition: Duration::from_secs(60),
    })
}

#[test]
fn batches_are_pruned_by_partition_time_range() {
    let s = store(u64::MAX);
    s.insert(Signal::Traces, spans_at(&[10 * MINUTE + 5]), 0)
        .unwrap();
    s.insert(Signal::Traces, spans_at(&[20 * MINUTE, 21 * MINUTE + 1]), 0)
        .unwrap();
    let t = s.table(Signal::Traces);
    let rows = |r: TimeRange| {
        t.batches(r)
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>()
    };
    assert_eq!(rows(TimeRange::ALL), 3);
    assert_eq!(
        rows(TimeRange {
            start: Some(11 * MINUTE),
            end: None
        }),
        2
    );
    // The second batch widened its partition to 21 min: still found.
    assert_eq!(
        rows(TimeRange {
            start: Some(21 * MINUTE),
            end: None
        }),
        2
    );
    assert_eq!(
        rows(TimeRange {
            start: None,
            end: Some(10 * MINUTE + 5)
        }),
        0
    );
    assert_eq!(
        rows(TimeRange {
            start: None,
            end: Some(10 * MINUTE + 6)
        }),
        1
    );
}

#[test]
fn the_budget_refuses_what_does_not_fit_and_keeps_what_was_accepted() {
    let one = spans_at(&[MINUTE]).get_array_memory_size() as u64;
    let s = store(one * 2 + one / 2);
    s.insert(Signal::Traces, spans_at(&[MINUTE]), 0).unwrap();
    s.insert(Signal::Traces, spans_at(&[MINUTE]), 0).unwrap();
    let err = s
        .insert(Signal::Traces, spans_at(&[MINUTE]), 0)
        .unwrap_err();
    assert!(err.to_string().contains("memory budget full"), "{err}");
    assert_eq!(s.table(Signal::Traces).usage().1, 2);
    assert!(s.used_bytes() <= one * 2 + one / 2);
}

#[test]
fn retention_counts_from_event_time_and_arrival() {
    let s = store(u64::MAX);
    let now = 100 * MINUTE;
    // Old event time, arrived long ago: expires.
    s.insert(Signal::Traces, spans_at(&[MINUTE]), MINUTE)
        .unwrap();
    // Old event time, arrived just now: kept for the whole retention.
    s.insert(Signal::Traces, spans_at(&[2 * MINUTE]), now)
        .unwrap();
    // Recent event time: kept.
    s.insert(Signal::Traces, spans_at(&[now - MINUTE]), MINUTE)
        .unwrap();
    let before = s.used_bytes();
    let expired: Vec<_> = s.expire(now).into_iter().filter(|e| e.rows > 0).collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].table, "spans");
    assert_eq!(expired[0].rows, 1);
    assert_eq!(s.used_bytes(), before - expired[0].bytes);
    assert_eq!(s.table(Signal::Traces).usage().1, 2);
}

#[test]
fn expired_rows_are_handed_back_not_dropped() {
    let s = store(u64::MAX);
    let now = 100 * MINUTE;
    let old = spans_at(&[MINUTE, MINUTE + 1]);
    s.insert(Signal::Traces, old.clone(), MINUTE).unwrap();
    s.insert(Signal::Traces, spans_at(&[now]), now).unwrap();
    let expired = s.expire(now);
    let tables: Vec<_> = expired.iter().map(|e| e.table).collect();
    assert_eq!(tables, ["spans", "metrics", "logs"], "one entry per table");
    let spans = &expired[0];
    assert_eq!(spans.batches, [old], "the expired batch itself comes back");
    assert_eq!((spans.partitions, spans.rows), (1, 2));
    assert!(expired[1].batches.is_empty() && expired[2].batches.is_empty());
    // A second pass finds nothing more to expire.
    assert!(s.expire(now).iter().all(|e| e.batches.is_empty()));
}

#[test]
fn drain_takes_everything_and_frees_the_budget() {
    let s = store(u64::MAX);
    s.insert(Signal::Traces, spans_at(&[MINUTE]), 0).unwrap();
    s.insert(Signal::Traces, spans_at(&[30 * MINUTE, 31 * MINUTE]), 0)
        .unwrap();
    let drained = s.drain();
    let spans = &drained[0];
    assert_eq!(spans.table, "spans");
    assert_eq!((spans.partitions, spans.rows), (2, 3));
    assert_eq!(
        spans
            .batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>(),
        [1, 2],
        "oldest partition first"
    );
    assert_eq!(s.used_bytes(), 0);
    assert_eq!(s.table(Signal::Traces).usage(), (0, 0));
    assert!(
        s.drain()
            .iter()
            .all(|e| e.rows == 0 && e.batches.is_empty())
    );
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
}
