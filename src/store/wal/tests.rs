use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::ingest::convert::spans::spans_at;
use crate::store::{Store, StoreOptions, TimeRange};

const MINUTE: i64 = 60_000_000_000;

fn store() -> Arc<Store> {
    Arc::new(Store::new(StoreOptions::unbounded(
        Duration::from_secs(3600),
        Duration::from_secs(60),
    )))
}

fn rows(store: &Store) -> usize {
    store
        .table(Signal::Traces)
        .batches(TimeRange::ALL)
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

/// Appends `n` one-span records through the log and waits for each.
async fn append(store: &Store, first: i64, n: i64) {
    let mut acks = Vec::new();
    for i in first..first + n {
        let admitted = store.admit(Signal::Traces, spans_at(&[MINUTE + i]), MINUTE);
        let reservation = store.reserve(admitted.bytes).unwrap();
        acks.push(store.append(Signal::Traces, admitted, reservation, MINUTE));
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Opens the folder, replays it into a new store and starts the writer.
fn open(path: &std::path::Path, durability: Durability) -> (Arc<Store>, Arc<Dir>, Replayed) {
    let dir = Arc::new(Dir::open(path).unwrap());
    let store = store();
    let replayed = dir.replay(&store).unwrap();
    store
        .start_wal(dir.clone(), durability, replayed.next_lsn)
        .unwrap();
    (store, dir, replayed)
}

fn close(store: Arc<Store>) {
    store.wal().unwrap().close();
}

#[tokio::test]
async fn what_was_acknowledged_comes_back_once_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, dir, replayed) = open(tmp.path(), Durability::Fsync);
    assert_eq!(replayed.records, 0);
    append(&s, 0, 50).await;
    assert_eq!(rows(&s), 50);
    assert!(dir.stats().syncs.load(Ordering::Relaxed) >= 1);
    // No flush, no shutdown: the process dies with the log as it is.
    close(s);
    drop(dir);
    let (s, dir, replayed) = open(tmp.path(), Durability::Fsync);
    assert_eq!((replayed.records, replayed.rows), (50, 50));
    assert!(replayed.cut.is_none());
    assert_eq!(rows(&s), 50, "every record once");
    // The log goes on after the replayed records.
    append(&s, 50, 5).await;
    close(s);
    drop(dir);
    let (s, _dir, replayed) = open(tmp.path(), Durability::Os);
    assert_eq!(replayed.records, 55);
    assert_eq!(rows(&s), 55);
    close(s);
}

#[tokio::test]
async fn concurrent_appends_share_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, dir, _) = open(tmp.path(), Durability::Fsync);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move { append(&s, t * 100, 100).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(rows(&s), 800);
    let syncs = dir.stats().syncs.load(Ordering::Relaxed);
    assert!(syncs < 800, "{syncs} syncs for 800 records");
    close(s);
}

#[tokio::test]
async fn a_committed_flush_skips_its_records_and_frees_old_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, dir, _) = open(tmp.path(), Durability::Fsync);
    append(&s, 0, 10).await;
    let snapshot = s.begin_flush().unwrap();
    assert_eq!(snapshot.rows, 10);
    assert_eq!(snapshot.wal_position, 10);
    s.commit_flush(&snapshot, 1);
    dir.write_checkpoint(&Checkpoint {
        epoch: dir.epoch(),
        flush: 1,
        lsn: snapshot.wal_position,
        max_times: Default::default(),
    })
    .unwrap();
    append(&s, 10, 3).await;
    close(s);
    drop(dir);
    let (s, dir, replayed) = open(tmp.path(), Durability::Fsync);
    assert_eq!(replayed.records, 3, "only what the flush did not cover");
    assert_eq!(rows(&s), 3);
    // The first segment holds records 10 to 12 too: it stays until the
    // checkpoint passes them, and the newest segment always stays.
    assert_eq!(dir.truncate(10).unwrap(), 0);
    assert_eq!(dir.truncate(13).unwrap(), 1);
    assert_eq!(dir.truncate(100).unwrap(), 0);
    close(s);
}

#[tokio::test]
async fn a_torn_tail_is_cut_counted_and_does_not_block_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, dir, _) = open(tmp.path(), Durability::Fsync);
    append(&s, 0, 4).await;
    close(s);
    drop(dir);
    let segment = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    // A crash in the middle of the last write.
    let file = OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(len - 7).unwrap();
    drop(file);
    let (s, dir, replayed) = open(tmp.path(), Durability::Fsync);
    assert_eq!(replayed.records, 3);
    let (path, _, reason, lost) = replayed.cut.clone().unwrap();
    assert_eq!(path, segment);
    assert!(reason.contains("torn"), "{reason}");
    assert!(lost > 0);
    assert_eq!(rows(&s), 3);
    // Appends go on in a new segment; the next start sees no damage.
    append(&s, 10, 1).await;
    close(s);
    drop(dir);
    let (s, _dir, replayed) = open(tmp.path(), Durability::Fsync);
    assert!(replayed.cut.is_none(), "{:?}", replayed.cut);
    assert_eq!(rows(&s), 4);
    close(s);
}

#[tokio::test]
async fn one_process_holds_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let _dir = Dir::open(tmp.path()).unwrap();
    let e = Dir::open(tmp.path()).unwrap_err();
    assert!(matches!(e, WalError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("wal_dir"), "{e}");
}

#[test]
fn intents_are_kept_until_removed_and_the_epoch_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = Dir::open(tmp.path()).unwrap();
    assert!(dir.is_fresh());
    let epoch = dir.epoch();
    let intent = Intent {
        flush: 3,
        files: vec!["archive/spans/a.parquet".into()],
    };
    dir.write_intent(&intent).unwrap();
    assert_eq!(dir.intents().unwrap(), [intent]);
    drop(dir);
    let dir = Dir::open(tmp.path()).unwrap();
    assert!(!dir.is_fresh());
    assert_eq!(dir.epoch(), epoch);
    dir.remove_intent(3).unwrap();
    assert!(dir.intents().unwrap().is_empty());
}
