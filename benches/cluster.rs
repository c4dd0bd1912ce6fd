//! What acting once per episode across replicas costs on the storage.
//!
//! `cargo bench --bench cluster` prints, per alert episode, the time for
//! three replicas to claim it at once (each lists the instance's episodes
//! and races a create-only write; one wins, two read the winner's claim)
//! and for the episode to be marked resolved, next to a baseline measured
//! in the same run: one durable create-only write of a claim-sized object
//! on the same storage, which is the least any coordination through the
//! store can cost. On a local folder (each create fsync'd, with its folder)
//! and in memory.
//!
//! Under `cargo test --benches` it runs a few episodes and checks that each
//! had exactly one winner, without timing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use homeostat::act::config::Trigger;
use homeostat::cluster::{ClaimRequest, Claimed, Cluster, ClusterConfig};
use homeostat::memory::Storage;

/// Claims `episodes` episodes of one instance by three racing replicas;
/// returns the time per episode.
async fn episodes(storage: &Storage, episodes: u64) -> Duration {
    let replicas: Vec<Cluster> = (0..3)
        .map(|i| {
            Cluster::new(
                storage.clone(),
                &format!("bench-{i}"),
                String::new(),
                ClusterConfig::default(),
            )
        })
        .collect();
    for r in &replicas {
        r.beat().await.expect("heartbeat");
    }
    let started = Instant::now();
    for episode in 1..=episodes {
        let ids: Vec<String> = (0..3).map(|i| format!("d{episode}-{i}")).collect();
        let requests: Vec<ClaimRequest<'_>> = ids
            .iter()
            .map(|id| ClaimRequest {
                rule: "checkout_error_ratio",
                fingerprint: "6c1f0e1a2b3c4d5e",
                trigger: Trigger::Firing,
                decision: id,
                local_episode: episode,
                since: 0,
                closed: None,
                episode: None,
            })
            .collect();
        let (a, b, c) = tokio::join!(
            replicas[0].claim(&requests[0]),
            replicas[1].claim(&requests[1]),
            replicas[2].claim(&requests[2]),
        );
        let won: Vec<u64> = [a, b, c]
            .into_iter()
            .filter_map(|x| match x.expect("claim") {
                Claimed::Won { claim, .. } => Some(claim.episode),
                Claimed::Lost { .. } => None,
            })
            .collect();
        assert_eq!(won, [episode], "one winner per episode");
        replicas[0]
            .resolved("checkout_error_ratio", "6c1f0e1a2b3c4d5e", episode)
            .await
            .expect("resolved");
    }
    started.elapsed() / episodes as u32
}

/// One durable create of a claim-sized object per episode.
async fn baseline(storage: &Storage, n: u64) -> Duration {
    let body = Bytes::from(vec![b'x'; 400]);
    let started = Instant::now();
    for i in 0..n {
        let path = storage.path(&["baseline", &format!("{i:010}.json")]);
        storage.create(&path, body.clone()).await.expect("create");
    }
    started.elapsed() / n as u32
}

fn main() {
    let timing = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let n = if timing { 200 } else { 5 };
    let dir = tempfile::tempdir().expect("temp dir");
    let local = Storage::open(dir.path().to_str().unwrap()).expect("local storage");
    let memory = Storage::in_memory();
    let figures = runtime.block_on(async {
        [
            (
                "local folder",
                baseline(&local, n).await,
                episodes(&local, n).await,
            ),
            (
                "in memory",
                baseline(&memory, n).await,
                episodes(&memory, n).await,
            ),
        ]
    });
    if !timing {
        println!("cluster bench: {n} episodes claimed once each on every storage");
        return;
    }
    for (storage, base, claim) in figures {
        println!(
            "{storage}: one create {base:?} (baseline); an episode claimed by 3 racing replicas and resolved {claim:?} = {:.1}x the baseline",
            claim.as_secs_f64() / base.as_secs_f64()
        );
    }
}
