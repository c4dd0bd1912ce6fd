use std::time::Duration;

use super::*;

fn config(lease_ms: u64) -> ClusterConfig {
    ClusterConfig {
        lease: Duration::from_millis(lease_ms),
        heartbeat: Duration::from_millis(lease_ms / 3),
        sync_interval: Duration::from_millis(lease_ms / 2),
    }
}

fn replicas(storage: &Storage, lease_ms: u64, n: usize) -> Vec<Cluster> {
    (0..n)
        .map(|i| {
            Cluster::new(
                storage.clone(),
                &format!("n{i}"),
                String::new(),
                config(lease_ms),
            )
        })
        .collect()
}

fn request<'a>(decision: &'a str, local_episode: u64, since: i64) -> ClaimRequest<'a> {
    ClaimRequest {
        rule: "errors",
        fingerprint: "f00d",
        trigger: Trigger::Firing,
        decision,
        local_episode,
        since,
        closed: None,
        episode: None,
    }
}

fn won(c: Claimed) -> Claim {
    match c {
        Claimed::Won { claim, .. } => claim,
        Claimed::Lost { holder } => panic!("lost to {holder:?}"),
    }
}

fn lost(c: Claimed) -> Claim {
    match c {
        Claimed::Lost { holder } => holder,
        Claimed::Won { claim, .. } => panic!("won {claim:?}"),
    }
}

#[tokio::test]
async fn racing_replicas_one_wins_each_episode_and_a_resolved_one_opens_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
    let nodes = replicas(&storage, 60_000, 3);
    for n in &nodes {
        n.beat().await.unwrap();
    }
    let now = now_nanos();
    for episode in 1..=3u64 {
        let (r0, r1, r2) = (
            request("d0", episode, now),
            request("d1", episode, now),
            request("d2", episode, now),
        );
        let (a, b, c) = tokio::join!(
            nodes[0].claim(&r0),
            nodes[1].claim(&r1),
            nodes[2].claim(&r2),
        );
        let answers = [a.unwrap(), b.unwrap(), c.unwrap()];
        let winners: Vec<&Claim> = answers
            .iter()
            .filter_map(|a| match a {
                Claimed::Won { claim, .. } => Some(claim),
                Claimed::Lost { .. } => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "episode {episode}: {answers:?}");
        let winner = winners[0].clone();
        assert_eq!(winner.episode, episode);
        for a in &answers {
            if let Claimed::Lost { holder } = a {
                assert_eq!(holder, &winner, "the losers name the winner");
            }
        }
        // Still firing: a replica that lost sees the same episode again,
        // held. (The holder itself would claim again only for a new local
        // episode, which means its own one ended.)
        let loser = answers
            .iter()
            .position(|a| matches!(a, Claimed::Lost { .. }))
            .unwrap();
        let late = lost(
            nodes[loser]
                .claim(&request("late", episode, now))
                .await
                .unwrap(),
        );
        assert_eq!(late.episode, episode);
        nodes[2].resolved("errors", "f00d", episode).await.unwrap();
        // Marking twice is harmless.
        nodes[0].resolved("errors", "f00d", episode).await.unwrap();
    }
}

#[tokio::test]
async fn an_episode_seen_resolved_locally_is_closed_before_the_next_claim() {
    let storage = Storage::in_memory();
    let nodes = replicas(&storage, 60_000, 2);
    for n in &nodes {
        n.beat().await.unwrap();
    }
    let first = won(nodes[0].claim(&request("a", 1, 0)).await.unwrap());
    assert_eq!(first.episode, 1);
    // Node 1 lost episode 1, then saw it resolve and fire again before any
    // marker was written: its request closes 1 and claims 2.
    lost(nodes[1].claim(&request("b", 4, 0)).await.unwrap());
    let mut next = request("c", 5, 0);
    next.closed = Some(1);
    assert_eq!(won(nodes[1].claim(&next).await.unwrap()).episode, 2);
}

#[tokio::test]
async fn a_dead_claimant_is_taken_over_once_after_its_lease_and_not_after_done() {
    let storage = Storage::in_memory();
    let nodes = replicas(&storage, 300, 3);
    // Node 0 claims and dies: its heartbeat is never written again.
    nodes[0].beat().await.unwrap();
    nodes[1].beat().await.unwrap();
    nodes[2].beat().await.unwrap();
    let first = won(nodes[0].claim(&request("a", 1, 0)).await.unwrap());
    assert!(matches!(
        nodes[1].check("errors", "f00d", 1).await.unwrap(),
        Standing::Held(_)
    ));
    // The lease runs out (waiting for time itself to pass); the survivors
    // keep beating.
    tokio::time::sleep(Duration::from_millis(400)).await;
    nodes[1].beat().await.unwrap();
    nodes[2].beat().await.unwrap();
    let Standing::Abandoned(holder) = nodes[1].check("errors", "f00d", 1).await.unwrap() else {
        panic!("the dead node's claim should be abandoned")
    };
    assert_eq!(holder, first);
    let (rb, rc) = (request("b", 1, 0), request("c", 1, 0));
    let (b, c) = tokio::join!(
        nodes[1].take_over(&rb, 1, holder.clone()),
        nodes[2].take_over(&rc, 1, holder.clone()),
    );
    let answers = [b.unwrap(), c.unwrap()];
    let taken: Vec<Claim> = answers
        .iter()
        .filter_map(|a| match a {
            Claimed::Won { claim, took_over } => {
                assert_eq!(took_over.as_ref(), Some(&first));
                Some(claim.clone())
            }
            Claimed::Lost { .. } => None,
        })
        .collect();
    assert_eq!(taken.len(), 1, "{answers:?}");
    assert_eq!(taken[0].took_over_from.as_deref(), Some("n0"));
    assert_eq!(taken[0].takeover, 1);
    // The new holder is alive: held again, by it.
    let Standing::Held(now_held) = nodes[2].check("errors", "f00d", 1).await.unwrap() else {
        panic!("held by the taker")
    };
    assert_eq!(now_held, taken[0]);
    // Once its result is recorded nobody takes over, even after the lease.
    nodes[1].done("errors", "f00d", 1).await.unwrap();
    assert_eq!(
        nodes[2].check("errors", "f00d", 1).await.unwrap(),
        Standing::Settled
    );
}

#[tokio::test]
async fn heartbeats_list_every_node_and_settings_are_checked() {
    let storage = Storage::in_memory();
    let nodes = replicas(&storage, 60_000, 2);
    nodes[0].beat().await.unwrap();
    nodes[1].beat().await.unwrap();
    let beats = nodes[0].read_heartbeats().await.unwrap();
    let names: Vec<&str> = beats.iter().map(|b| b.node.as_str()).collect();
    assert_eq!(names, ["n0", "n1"]);
    assert!(config(300).validate().is_ok());
    let bad = ClusterConfig {
        heartbeat: Duration::from_secs(20),
        ..ClusterConfig::default()
    };
    assert!(bad.validate().unwrap_err().contains("cluster.heartbeat"));
}
