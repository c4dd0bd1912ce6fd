//! What recording a decision costs, and how many the memory takes per
//! second.
//!
//! `cargo bench --bench memory` prints decisions recorded per second into
//! the decision log (each an entry with the whole decision, hashed and
//! chained), next to a baseline measured in the same run: encoding the same
//! entries (JSON and SHA-256) with no storage at all.
//! - one at a time: each append waits until its entry is durable before the
//!   next (an action's intent waits so); on a local folder that is an
//!   fsync of the object and of its folder per decision;
//! - 256 in flight: appends from many actions at once share objects (group
//!   commit), so one fsync covers many.
//!
//! Under `cargo test --benches` it runs a few appends and checks the chain,
//! without timing.

use std::time::{Duration, Instant};

use homeostat::decisions::Decision;
use homeostat::memory::Storage;
use homeostat::memory::journal::{Journal, Record, Stage, Tail, hash, read_chain};

/// A decision as the actor records it: a rule's evidence row, five policy
/// checks, reasoning, one host call, a running run.
fn decision(i: usize) -> Decision {
    serde_json::from_value(serde_json::json!({
        "id": format!("{i:016x}"),
        "trace_id": format!("{i:032x}"),
        "rule": "checkout_error_ratio",
        "fingerprint": "6c1f0e1a2b3c4d5e",
        "labels": {"service_name": "checkout", "namespace": "shop"},
        "episode": 3,
        "trigger": "firing",
        "at": 1_764_000_000_000_000_000i64 + i as i64,
        "detection": {
            "sql": "SELECT service_name, count(*) FILTER (WHERE status_code = 'ERROR') * 1.0 / count(*) AS ratio FROM spans GROUP BY service_name HAVING ratio > 0.05",
            "window_start": 1_764_000_000_000_000_000i64,
            "window_end": 1_764_000_060_000_000_000i64,
            "rows": 1,
            "state": "firing",
            "since": 1_763_999_990_000_000_000i64,
            "values": {"ratio": 0.12, "errors": 42, "total": 350},
            "evidence": [{"service_name": "checkout", "ratio": 0.12, "errors": 42, "total": 350,
                          "trace_ids": ["4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7a3ce929d0e0e4736"]}],
            "evidence_trace_ids": ["4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7a3ce929d0e0e4736"]
        },
        "policy": {
            "verdict": "allowed",
            "reason": "every policy passed",
            "checks": [
                {"policy": "episode", "passed": true, "detail": "first firing of episode 3"},
                {"policy": "cooldown", "passed": true, "detail": "last acted at 2025-11-24T14:10:00Z"},
                {"policy": "rate_limit", "passed": true, "detail": "2 of 6 runs in the last hour"},
                {"policy": "concurrency", "passed": true, "detail": "0 of 1 running"},
                {"policy": "dry_run", "passed": true, "detail": "host calls are recorded, not performed"}
            ],
            "dry_run": false,
            "approval": null,
            "decided_at": 1_764_000_000_000_000_000i64
        },
        "reasoning": {
            "considered": [{"option": "restart", "reason": "errors are local to one deployment"},
                           {"option": "wait", "reason": "a blip would pass by itself"}],
            "decision": {"option": "restart", "reason": "42 errors in 60s"},
            "expectation": {"description": "the error ratio falls below 5%", "within": "5m"},
            "skipped": null,
            "output": []
        },
        "host_calls": [{"module": "k8s", "function": "k8s::rollout_restart", "target": "shop/deployment/checkout",
                        "started_at": 1_764_000_000_100_000_000i64, "duration_ns": 1_200_000, "status": "ok",
                        "error": null, "detail": {"generation": 12}, "attempt": 1}],
        "run": {"script": "rules/checkout_error_ratio.rhai", "status": "running", "started_at": 1_764_000_000_000_000_000i64,
                "ended_at": null, "attempts": 1, "value": null, "error": null, "operations": 0},
        "outcome": "pending",
        "verification": null,
        "escalates": null,
        "updated_at": 1_764_000_000_000_000_000i64
    }))
    .expect("a valid decision")
}

fn record(i: usize) -> Record {
    Record::Decision {
        stage: Stage::Intent,
        decision: Box::new(decision(i)),
    }
}

/// Decisions per second, appending `n` with at most `in_flight` waiting.
async fn append(storage: &Storage, node: &str, n: usize, in_flight: usize) -> f64 {
    let journal = Journal::start(storage.clone(), node, Tail::default());
    let records: Vec<Record> = (0..n).map(record).collect();
    let start = Instant::now();
    let mut waiting = std::collections::VecDeque::new();
    for r in records {
        waiting.push_back(journal.append(r));
        if waiting.len() >= in_flight {
            waiting.pop_front().unwrap().await.unwrap().unwrap();
        }
    }
    for ack in waiting {
        ack.await.unwrap().unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The baseline: the same entries encoded and hashed, stored nowhere.
fn encode(n: usize) -> f64 {
    let records: Vec<Record> = (0..n).map(record).collect();
    let start = Instant::now();
    let mut prev = String::from("0");
    for (seq, r) in records.into_iter().enumerate() {
        let payload = serde_json::to_vec(&serde_json::json!({
            "seq": seq, "prev": prev, "node": "bench", "written_at": 0, "record": r,
        }))
        .unwrap();
        prev = hash(&payload);
    }
    std::hint::black_box(prev);
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let timing = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let local = Storage::open(dir.path().to_str().unwrap()).expect("local storage");
    let memory = Storage::in_memory();
    let (n_one, n_many) = if timing { (500, 20_000) } else { (20, 200) };

    let figures = runtime.block_on(async {
        let local_one = append(&local, "one", n_one, 1).await;
        let local_many = append(&local, "many", n_many, 256).await;
        let memory_one = append(&memory, "one", n_many, 1).await;
        let memory_many = append(&memory, "many", n_many, 256).await;
        for (storage, node, n) in [
            (&local, "one", n_one),
            (&local, "many", n_many),
            (&memory, "many", n_many),
        ] {
            let (entries, problems) = read_chain(storage, node).await.expect("readable");
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(entries.len(), n);
        }
        [local_one, local_many, memory_one, memory_many]
    });
    let baseline = encode(n_many);
    if !timing {
        println!(
            "memory bench: chains checked (run with `cargo bench --bench memory` for figures)"
        );
        return;
    }
    let [local_one, local_many, memory_one, memory_many] = figures;
    println!();
    println!("Decisions recorded per second (whole decision records, hashed and chained)");
    println!("| storage | appends | decisions/s | baseline: encode only | ratio |");
    println!("|---|---|---|---|---|");
    for (storage, mode, rate) in [
        ("local folder, fsync", "one at a time", local_one),
        ("local folder, fsync", "256 in flight", local_many),
        ("in memory", "one at a time", memory_one),
        ("in memory", "256 in flight", memory_many),
    ] {
        println!(
            "| {storage} | {mode} | {rate:.0} | {baseline:.0} | {:.3} |",
            rate / baseline
        );
    }
    let per = Duration::from_secs_f64(1.0 / local_one);
    println!();
    println!("An action's intent, durable on a local folder before it runs: {per:?}");
}
