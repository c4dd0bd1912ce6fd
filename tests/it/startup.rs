//! A start reads each writer's latest snapshot and the entries after it,
//! not the whole history: with a million entries in the decision log, the
//! instance is ready after reading at most about `snapshot_every` of them,
//! its alert state and facts back, and the whole history reaches the SQL
//! tables in the background. `/livez` answers while it recovers.

use std::time::{Duration, Instant};

use homeostat::act::actor::recovery::{Recovery, SnapshotConfig, Snapshotter};
use homeostat::decisions::memory::Fact;
use homeostat::memory::Storage;
use homeostat::memory::journal::{AlertChange, Journal, Record, Tail};
use homeostat::rules::AlertState;

use crate::common::start_with;

/// Appends `n` entries to `node`'s chain (facts of a few thousand keys,
/// alert transitions), writing snapshots as a running instance would every
/// `every` entries, then `tail` more after the last snapshot.
pub async fn generate(storage: &Storage, node: &str, n: u64, every: u64, tail: u64) {
    let journal = Journal::start(storage.clone(), node, Tail::default());
    let config = SnapshotConfig {
        snapshot_every: every,
        ..SnapshotConfig::default()
    };
    let snapshots = Snapshotter::start(storage.clone(), config, Recovery::new(node), &journal);
    let record = |i: u64| -> Record {
        if i % 10 == 9 {
            let instance = (i / 10) % 50;
            Record::Alert {
                alert: AlertChange {
                    rule: "generated".into(),
                    fingerprint: format!("{instance:016x}"),
                    labels: [("service_name".to_owned(), format!("svc-{instance}"))].into(),
                    episode: i / 500 + 1,
                    from: AlertState::Pending,
                    to: AlertState::Firing,
                    at: i as i64,
                    since: i as i64,
                },
            }
        } else {
            Record::Fact {
                fact: Fact {
                    key: format!("generated/{}", i % 5000),
                    version: i / 5000 + 1,
                    value: serde_json::json!({ "n": i }),
                    valid_from: i as i64,
                    valid_to: None,
                    written_by: "generated".into(),
                },
            }
        }
    };
    let mut i = 0;
    let end = n + tail;
    while i < end {
        let chunk = (end - i).min(4096).min(if i < n { n - i } else { end - i });
        let acks: Vec<_> = (i..i + chunk).map(|k| journal.append(record(k))).collect();
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
        i += chunk;
        if i <= n && snapshots.pending() >= every {
            snapshots
                .write(homeostat::ingest::now_nanos())
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_after_a_million_entries_reads_the_snapshot_and_the_rest() {
    const ENTRIES: u64 = 1_000_000;
    const EVERY: u64 = 10_000;
    const TAIL: u64 = 2_500;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_owned();
    let storage = Storage::open(&data).unwrap();
    let generating = Instant::now();
    generate(&storage, "startup", ENTRIES, EVERY, TAIL).await;
    let generated = generating.elapsed();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("generated.toml"),
        "window = \"1h\"\nsql = \"SELECT service_name FROM spans GROUP BY service_name\"\n",
    )
    .unwrap();
    let (d, r) = (data.clone(), rules.path().to_owned());
    let started = Instant::now();
    let h = start_with(move |c| {
        c.data = d;
        c.node = "startup".into();
        c.rules = r;
    })
    .await;
    let ready = started.elapsed();
    let read = h
        .metric("homeostat_memory_start_entries_read")
        .await
        .unwrap();
    eprintln!(
        "{} log entries (generated in {generated:?}): ready in {ready:?}, {read} entries read after the latest snapshot",
        ENTRIES + TAIL
    );
    assert!(
        read <= (EVERY + TAIL) as f64,
        "a start reads the entries after the latest snapshot: {read}"
    );
    // What the chain adds up to is back: every instance firing (its last
    // transition), and held so while the rule's window covers the time
    // nothing ran; the facts' latest versions.
    let rules: serde_json::Value = h.get_json("/api/v1/rules?instances=100").await;
    let instances = rules["rules"][0]["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 50, "{instances:?}");
    assert!(
        instances.iter().all(|i| i["state"] == "firing"),
        "{instances:?}"
    );
    let newest = (0..ENTRIES + TAIL)
        .filter(|i| i % 5000 == 4998)
        .map(|i| i / 5000 + 1)
        .max()
        .unwrap();
    let value = h
        .query("SELECT max(version) AS v FROM facts WHERE key = 'generated/4998'")
        .await;
    assert_eq!(value.get(0, "v"), newest, "the newest version of a fact");
    // The whole history reaches the SQL tables in the background: what a
    // start read before snapshots.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let complete = h
            .metric("homeostat_memory_index_complete")
            .await
            .unwrap_or(0.0);
        if complete == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the history never filled in");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "the whole history (what a start read before snapshots) was in {:?} after the start",
        started.elapsed()
    );
    let versions = h
        .count("SELECT count(*) FROM facts WHERE key = 'generated/0'")
        .await;
    let written = (0..ENTRIES + TAIL).filter(|i| i % 5000 == 0).count();
    assert_eq!(
        versions as usize, written,
        "every version of a fact, from the whole history"
    );
}
