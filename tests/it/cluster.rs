//! Three `homeostat run` processes sharing one storage, as replicas behind
//! a Collector would: one action per alert episode across them, a takeover
//! when the claimant is killed mid-action, and every replica's API showing
//! every replica's decisions. On a local folder and on S3 (moto).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use serde_json::Value;

use crate::actions::write;
use crate::common::{address_in, ready_line, spans_now_json};

/// Leases short enough for a test, in the ratios the settings require.
const CLUSTER: &str = r#"
[cluster]
lease = "3s"
heartbeat = "500ms"
sync_interval = "500ms"
"#;

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

struct Replica {
    node: String,
    child: tokio::process::Child,
    api: String,
    otlp_http: String,
}

/// A webhook that counts completed calls per service; a call whose body
/// says `hang` is held open and never answered (the claimant is killed
/// while it waits), and is counted apart.
#[derive(Clone, Default)]
struct Hook {
    completed: Arc<parking_lot::Mutex<Vec<Value>>>,
    hung: Arc<parking_lot::Mutex<Vec<Value>>>,
}

impl Hook {
    async fn serve(&self) -> String {
        let me = self.clone();
        let app = Router::new().route(
            "/hook",
            post(move |body: axum::Json<Value>| async move {
                let hang = body.0["hang"].as_bool() == Some(true);
                if hang && me.hung.lock().is_empty() {
                    me.hung.lock().push(body.0.clone());
                    std::future::pending::<()>().await;
                }
                me.completed.lock().push(body.0);
                axum::Json(serde_json::json!({ "ok": true }))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn completed_for(&self, service: &str) -> usize {
        self.completed
            .lock()
            .iter()
            .filter(|b| b["service"] == service)
            .count()
    }
}

/// A rule firing per `cl-` service while its spans are in the last two
/// seconds, whose action calls the hook (the first call for `cl-hang`
/// hangs).
fn rule(hook: &str, extra: &str) -> String {
    format!(
        r#"
every = "1s"
window = "2s"
lateness = "0s"
sql = "SELECT service_name FROM spans WHERE service_name LIKE 'cl-%' GROUP BY service_name"

[action]
http = ["{hook}"]
idempotent = true
max_concurrent = 16
{extra}
inline = """
let service = alert.labels.service_name;
http::post("{hook}hook", #{{ decision: alert.decision_id, service: service, hang: service == "cl-hang" }}).status
"""
"#
    )
}

async fn spawn(node: &str, dir: &Path, data: &str, env: &[(String, String)]) -> Replica {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .envs(env.iter().cloned())
        .args([
            "run",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--node-id", node, "--data", data])
        .arg("--wal-dir")
        .arg(dir.join("wal").join(node))
        .arg("--config")
        .arg(dir.join("homeostat.toml"))
        .arg("--rules")
        .arg(dir.join("rules"))
        .env("HOMEOSTAT_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (ready, mut lines) = ready_line(&mut child).await;
    let (api, otlp_http) = (address_in(&ready, "api"), address_in(&ready, "otlp_http"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Replica {
        node: node.to_owned(),
        child,
        api,
        otlp_http,
    }
}

async fn start_cluster(
    data: &str,
    env: &[(String, String)],
    hook: &str,
    extra: &str,
) -> (tempfile::TempDir, Vec<Replica>) {
    homeostat::act::host::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    write(
        &dir.path().join("rules"),
        "cluster_burst.toml",
        &rule(hook, extra),
    );
    write(dir.path(), "homeostat.toml", CLUSTER);
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(spawn(&format!("replica-{i}"), dir.path(), data, env).await);
    }
    (dir, replicas)
}

async fn get(url: String) -> Value {
    reqwest::get(&url).await.unwrap().json().await.unwrap()
}

/// Every decision `replica`'s API lists.
async fn decisions(replica: &Replica) -> Vec<Value> {
    let answer = get(format!(
        "http://{}/api/v1/decisions?limit=1000",
        replica.api
    ))
    .await;
    answer["decisions"].as_array().cloned().unwrap_or_default()
}

/// Polls `check` (a read of the replicas' state, every 200 ms) until it
/// returns `Some`, or fails naming `what`.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        match check().await {
            Ok(v) => return v,
            Err(last) if started.elapsed() > DEADLINE => {
                panic!("{what}: not within {DEADLINE:?}; last seen: {last}")
            }
            Err(_) => {}
        }
    }
}

async fn send(replica: &Replica, service: &str) {
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", replica.otlp_http))
        .header("content-type", "application/json")
        .body(spans_now_json(service))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// Each replica's decisions in a line each, for failure messages.
async fn summary(replicas: &[Replica]) -> Vec<String> {
    let mut out = Vec::new();
    for r in replicas {
        for d in decisions(r).await {
            if d["node"] == r.node.as_str() {
                out.push(format!(
                    "{} {} {}: {} ({}) run {} {}",
                    r.node,
                    service(&d),
                    d["claim"]["episode"],
                    d["policy"]["verdict"],
                    d["policy"]["reason"],
                    d["run"]["status"],
                    d["run"]["error"]["message"]
                ));
            }
        }
    }
    out.sort();
    out
}

/// Waits until no replica has a pending or firing instance.
async fn resolved_everywhere(replicas: &[Replica], what: &str) {
    for r in replicas {
        until(&format!("{what}: {} resolves", r.node), || async {
            let rules = get(format!("http://{}/api/v1/rules", r.api)).await;
            let counts = &rules["rules"][0]["instance_counts"];
            let open =
                counts["firing"].as_u64().unwrap_or(0) + counts["pending"].as_u64().unwrap_or(0);
            if open == 0 {
                Ok(())
            } else {
                Err(counts.to_string())
            }
        })
        .await;
    }
}

fn service(d: &Value) -> &str {
    d["labels"]["service_name"].as_str().unwrap_or_default()
}

/// `replica`'s own decisions for `services`, once each is final (decided
/// and, if it ran, its run ended).
async fn own_final(replica: &Replica, services: &HashSet<String>) -> Vec<Value> {
    decisions(replica)
        .await
        .into_iter()
        .filter(|d| d["node"] == replica.node.as_str() && services.contains(service(d)))
        .filter(|d| d["run"]["status"] != "running")
        .collect()
}

/// 10 services × 2 rounds = 20 episodes, each burst delivered to all three
/// replicas: one webhook call per episode, the other two replicas record
/// `claimed_by_other`, and every replica lists all 60 decisions.
async fn once_per_episode(data: &str, env: &[(String, String)]) {
    let hook = Hook::default();
    let url = hook.serve().await;
    let (_dir, replicas) = start_cluster(data, env, &url, "").await;
    let services: HashSet<String> = (0..10).map(|i| format!("cl-{i}")).collect();
    for round in 1..=2usize {
        for s in &services {
            for r in &replicas {
                send(r, s).await;
            }
        }
        // Each replica has decided on each service's episode this round.
        for r in &replicas {
            until(
                &format!("round {round}: {} decides on every episode", r.node),
                || async {
                    let own = own_final(r, &services).await;
                    if own.len() == services.len() * round {
                        Ok(())
                    } else {
                        Err(format!("{} of {}", own.len(), services.len() * round))
                    }
                },
            )
            .await;
        }
        let wrong: Vec<&String> = services
            .iter()
            .filter(|s| hook.completed_for(s) != round)
            .collect();
        if !wrong.is_empty() {
            let calls = hook.completed.lock().clone();
            panic!(
                "round {round}: not one call per episode for {wrong:?}; calls: {calls:#?}; decisions: {:#?}",
                summary(&replicas).await
            );
        }
        // Every instance resolves on every replica before the next round.
        resolved_everywhere(&replicas, &format!("round {round}")).await;
    }
    // 20 episodes, 60 decisions: one ran per episode, two were claimed by
    // the one that ran, and each replica lists them all.
    let mut all: HashMap<String, Value> = HashMap::new();
    for r in &replicas {
        for d in own_final(r, &services).await {
            all.insert(d["id"].as_str().unwrap().to_owned(), d);
        }
    }
    assert_eq!(all.len(), 60);
    let mut per_episode: BTreeMap<(String, u64), Vec<&Value>> = BTreeMap::new();
    for d in all.values() {
        let episode = d["claim"]["episode"]
            .as_u64()
            .expect("every decision names its claim");
        per_episode
            .entry((service(d).to_owned(), episode))
            .or_default()
            .push(d);
    }
    assert_eq!(per_episode.len(), 20, "{:?}", per_episode.keys());
    for ((s, episode), ds) in &per_episode {
        let ran: Vec<_> = ds
            .iter()
            .filter(|d| d["run"]["status"] == "succeeded")
            .collect();
        let claimed: Vec<_> = ds
            .iter()
            .filter(|d| d["policy"]["verdict"] == "claimed_by_other")
            .collect();
        assert_eq!(
            (ran.len(), claimed.len()),
            (1, 2),
            "{s} episode {episode}: {ds:#?}"
        );
        let holder = ran[0]["node"].as_str().unwrap();
        for c in claimed {
            assert_eq!(c["claim"]["holder"], holder);
        }
    }
    // The claims as /metrics counts them: one won and two lost per episode.
    let mut claims: BTreeMap<String, u64> = BTreeMap::new();
    for r in &replicas {
        let text = reqwest::get(format!("http://{}/metrics", r.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("homeostat_cluster_claims_total{result=\"") {
                let (result, value) = rest.split_once("\"} ").unwrap();
                *claims.entry(result.to_owned()).or_default() += value.parse::<u64>().unwrap();
            }
        }
    }
    assert_eq!(claims.get("won"), Some(&20), "{claims:?}");
    assert_eq!(claims.get("lost"), Some(&40), "{claims:?}");
    for r in &replicas {
        until(
            &format!("{} lists every replica's decisions", r.node),
            || async {
                let seen: HashSet<String> = decisions(r)
                    .await
                    .iter()
                    .map(|d| d["id"].as_str().unwrap().to_owned())
                    .collect();
                let missing = all.keys().filter(|id| !seen.contains(*id)).count();
                if missing == 0 {
                    Ok(())
                } else {
                    Err(format!("{missing} missing"))
                }
            },
        )
        .await;
        // The facts the runs wrote, on whichever replica ran them.
        until(&format!("{} queries every replica's facts", r.node), || async {
            let answer: Value = reqwest::Client::new()
                .post(format!("http://{}/api/v1/query", r.api))
                .json(&serde_json::json!({
                    "sql": "SELECT count(*) AS runs, count(DISTINCT node) AS nodes FROM facts WHERE key LIKE 'acted/%'"
                }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let runs = answer["rows"][0][0].as_i64().unwrap_or(0);
            let nodes: Vec<String> = per_episode
                .values()
                .flatten()
                .filter(|d| d["run"]["status"] == "succeeded")
                .map(|d| d["node"].as_str().unwrap().to_owned())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            if runs == 20 && answer["rows"][0][1].as_i64() == Some(nodes.len() as i64) {
                Ok(())
            } else {
                Err(answer.to_string())
            }
        })
        .await;
        let cluster = get(format!("http://{}/api/v1/cluster", r.api)).await;
        let nodes = cluster["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3, "{cluster}");
        assert!(nodes.iter().all(|n| n["alive"] == true), "{cluster}");
        assert_eq!(nodes[0]["node"], r.node.as_str());
        assert_eq!(nodes[0]["self"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_local_folder_act_once_per_episode() {
    let data = tempfile::tempdir().unwrap();
    once_per_episode(data.path().to_str().unwrap(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_s3_act_once_per_episode() {
    let s3 = crate::s3::shared();
    once_per_episode(&s3.url("cluster-once"), &s3.env()).await;
}

/// The claimant is killed (SIGKILL) while its webhook call hangs; the
/// instance keeps firing on the other two, one of which takes the episode
/// over once the lease expires: the call completes once, the first attempt
/// is marked interrupted, and the third replica never acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_claimant_is_taken_over_after_its_lease() {
    let hook = Hook::default();
    let url = hook.serve().await;
    let data = tempfile::tempdir().unwrap();
    let (_dir, mut replicas) = start_cluster(data.path().to_str().unwrap(), &[], &url, "").await;
    for r in &replicas {
        send(r, "cl-hang").await;
    }
    let first = until("the claimant's call reaches the hook", || async {
        hook.hung
            .lock()
            .first()
            .cloned()
            .ok_or_else(|| "no call yet".to_owned())
    })
    .await;
    let first_id = first["decision"].as_str().unwrap().to_owned();
    // Which replica made it: every replica lists it once they have synced,
    // so ask for its node.
    let holder = until("the claimant's decision is listed", || async {
        for r in &replicas {
            if let Some(d) = decisions(r)
                .await
                .iter()
                .find(|d| d["id"] == first_id.as_str())
            {
                return Ok(d["node"].as_str().unwrap().to_owned());
            }
        }
        Err("not listed yet".to_owned())
    })
    .await;
    let claimant = replicas.iter().position(|r| r.node == holder);
    let claimant = replicas.remove(claimant.expect("the claimant lists its decision"));
    let killed = claimant.node.clone();
    let mut child = claimant.child;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // The instance keeps firing where the survivors see it.
    let feeding = {
        let targets: Vec<(String, String)> = replicas
            .iter()
            .map(|r| (r.node.clone(), r.otlp_http.clone()))
            .collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                for (_, http) in &targets {
                    let _ = reqwest::Client::new()
                        .post(format!("http://{http}/v1/traces"))
                        .header("content-type", "application/json")
                        .body(spans_now_json("cl-hang"))
                        .send()
                        .await;
                }
            }
        })
    };
    until("a survivor's call completes", || async {
        match hook.completed_for("cl-hang") {
            0 => Err("none".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    let taker_id = hook.completed.lock()[0]["decision"]
        .as_str()
        .unwrap()
        .to_owned();
    // Both survivors see the takeover and the interrupted first attempt.
    for r in &replicas {
        until(&format!("{} shows the takeover", r.node), || async {
            let all = decisions(r).await;
            let taker = all.iter().find(|d| d["id"] == taker_id.as_str());
            let first = all.iter().find(|d| d["id"] == first_id.as_str());
            match (taker, first) {
                (Some(t), Some(f))
                    if t["run"]["status"] == "succeeded" && f["run"]["status"] == "interrupted" =>
                {
                    assert_eq!(t["claim"]["took_over_from"], killed.as_str(), "{t:#}");
                    assert_eq!(t["claim"]["episode"], f["claim"]["episode"]);
                    Ok(())
                }
                _ => Err(format!("taker {taker:?}, first {first:?}")),
            }
        })
        .await;
    }
    feeding.abort();
    // Once the instance resolves everywhere, nothing else ran: one
    // completed call, and the other survivor only recorded the claims.
    for r in &replicas {
        until(&format!("{} resolves", r.node), || async {
            let rules = get(format!("http://{}/api/v1/rules", r.api)).await;
            let counts = &rules["rules"][0]["instance_counts"];
            if counts["firing"].as_u64().unwrap_or(0) == 0 {
                Ok(())
            } else {
                Err(counts.to_string())
            }
        })
        .await;
    }
    assert_eq!(
        hook.completed_for("cl-hang"),
        1,
        "{:#?}",
        hook.completed.lock()
    );
    let all = decisions(&replicas[0]).await;
    let ran: Vec<&Value> = all
        .iter()
        .filter(|d| d["run"]["status"] == "succeeded")
        .collect();
    assert_eq!(ran.len(), 1, "{all:#?}");
}

/// A cooldown holds across replicas: after one replica acted on an
/// instance, none acts on its next episode within the cooldown. The two
/// that lost the claim do not count the run they did not make; they know
/// of the one that happened from the actor's decision log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cooldown_holds_across_replicas() {
    let hook = Hook::default();
    let url = hook.serve().await;
    let data = tempfile::tempdir().unwrap();
    let (_dir, replicas) = start_cluster(
        data.path().to_str().unwrap(),
        &[],
        &url,
        "cooldown = \"1h\"",
    )
    .await;
    let services: HashSet<String> = ["cl-cool".to_owned()].into();
    for round in 1..=2usize {
        for r in &replicas {
            send(r, "cl-cool").await;
        }
        for r in &replicas {
            until(&format!("round {round}: {} decides", r.node), || async {
                let own = own_final(r, &services).await;
                if own.len() == round {
                    Ok(())
                } else {
                    Err(format!("{} decisions", own.len()))
                }
            })
            .await;
        }
        resolved_everywhere(&replicas, &format!("round {round}")).await;
    }
    assert_eq!(
        hook.completed_for("cl-cool"),
        1,
        "{:#?}",
        hook.completed.lock()
    );
    let mut acted = None;
    for r in &replicas {
        let mut own = own_final(r, &services).await;
        own.sort_by_key(|d| d["at"].as_i64());
        if own[0]["run"]["status"] == "succeeded" {
            acted = Some(r.node.clone());
        }
        let second = &own[1];
        assert_eq!(
            second["policy"]["verdict"], "suppressed",
            "{} {second:#}",
            r.node
        );
        assert!(
            second["policy"]["reason"]
                .as_str()
                .unwrap()
                .starts_with("suppressed: cooldown until"),
            "{} {second:#}",
            r.node
        );
    }
    assert!(acted.is_some(), "one replica ran the first episode");
}
