//! What survives a crash, end to end with the real binary: every span
//! answered 200/OK before a kill -9 is queryable after the restart, once;
//! a firing alert stays firing across SIGTERM and kill -9 restarts while
//! telemetry keeps flowing (no resolution, no new episode, no `effective`
//! verdict caused by the restart).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::Value;

use homeostat::decisions::{Decision, Outcome};
use homeostat::memory::journal::Record;
use homeostat::memory::{Storage, audit, load};
use homeostat::rules::AlertState;

use crate::actions::webhook;
use crate::common::{address_in, ready_line};

/// A `homeostat run` process on `data`, with its configuration, rules and
/// write-ahead log in `dir` (the log stays across restarts).
struct Node {
    child: tokio::process::Child,
    http: String,
    grpc: String,
    api: String,
}

async fn spawn(dir: &Path, data: &str, env: &[(String, String)]) -> Node {
    homeostat::act::host::install_crypto_provider();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .envs(env.iter().cloned())
        .args([
            "run",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--node", "durable", "--data", data])
        .arg("--config")
        .arg(dir.join("homeostat.toml"))
        .arg("--rules")
        .arg(dir.join("rules"))
        .arg("--wal-dir")
        .arg(dir.join("wal"))
        .env("HOMEOSTAT_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (ready, mut lines) = ready_line(&mut child).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node {
        child,
        http: address_in(&ready, "otlp_http"),
        grpc: address_in(&ready, "otlp_grpc"),
        api: address_in(&ready, "api"),
    }
}

async fn kill_9(node: &mut Node) {
    node.child.start_kill().unwrap();
    node.child.wait().await.unwrap();
}

async fn sigterm(node: &mut Node) {
    let pid = node.child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(60), node.child.wait())
        .await
        .expect("a SIGTERM stop ends within a minute")
        .unwrap();
    assert!(status.success(), "{status}");
}

fn setup(config: &str, rules: &[(&str, String)]) -> tempfile::TempDir {
    homeostat::act::host::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("homeostat.toml"), config).unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    for (name, text) in rules {
        std::fs::write(dir.path().join("rules").join(name), text).unwrap();
    }
    dir
}

async fn query(api: &str, sql: &str) -> Vec<Vec<Value>> {
    let r = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/query"))
        .json(&serde_json::json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().clone())
        .collect()
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Request `n` of service `service`: `SPANS` spans, each carrying the
/// request number, at the current time.
fn request(service: &str, n: u64, spans: u64, error: bool) -> ExportTraceServiceRequest {
    let now = homeostat::ingest::now_nanos() as u64;
    let batch = n.to_string();
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: [n.to_be_bytes(), i.to_be_bytes()].concat(),
            span_id: (n * 10_000 + i + 1).to_be_bytes().to_vec(),
            name: "steady".into(),
            start_time_unix_nano: now - 1_000_000,
            end_time_unix_nano: now,
            attributes: vec![string("batch", &batch), string("http.route", "/steady")],
            status: error.then(|| Status {
                code: 2,
                message: "failing".into(),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", service)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

const SPANS: u64 = 250;

/// Sends requests to `node` until `stop`, half over HTTP and half over
/// gRPC; the numbers of those answered 200/OK go to `acked`, of the others
/// to `unsure` (in flight when the process died: stored or not, but whole).
fn send_load(
    node: &Node,
    next: &Arc<AtomicU64>,
    acked: &Arc<Mutex<HashSet<u64>>>,
    unsure: &Arc<Mutex<HashSet<u64>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for sender in 0..4 {
        let (next, acked, unsure, stop) =
            (next.clone(), acked.clone(), unsure.clone(), stop.clone());
        let (http, grpc) = (node.http.clone(), node.grpc.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut grpc = TraceServiceClient::connect(format!("http://{grpc}"))
                .await
                .ok();
            while !stop.load(Ordering::Relaxed) {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = request("ingest", n, SPANS, false);
                let ok = if sender % 2 == 0 {
                    client
                        .post(format!("http://{http}/v1/traces"))
                        .header("content-type", "application/x-protobuf")
                        .body(body.encode_to_vec())
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                } else {
                    match grpc.as_mut() {
                        Some(c) => c.export(body).await.is_ok(),
                        None => false,
                    }
                };
                if ok {
                    acked.lock().insert(n);
                } else {
                    unsure.lock().insert(n);
                    // The process is gone: nothing more to send to it.
                    return;
                }
            }
        }));
    }
    tasks
}

/// kill -9 three times during steady ingest over both receivers, on
/// `data`; then every acknowledged request's spans are there, once, and
/// any other request is there whole or not at all.
async fn kill_during_ingest(data: &str, env: &[(String, String)]) {
    // A small budget and frequent flushes: at each kill, rows are in the
    // archive, in memory and the log, and in the log only.
    let dir = setup(
        "[store]\nmemory_budget = \"24 MiB\"\n[archive]\nflush_interval = \"2s\"\n",
        &[],
    );
    let (next, acked, unsure) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(HashSet::new())),
        Arc::new(Mutex::new(HashSet::new())),
    );
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rates = Vec::new();
    for round in 0..3 {
        let mut node = spawn(dir.path(), data, env).await;
        let stop = Arc::new(AtomicBool::new(false));
        let before = acked.lock().len();
        let started = Instant::now();
        let tasks = send_load(&node, &next, &acked, &unsure, &stop);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(3000 + seed % 3000)).await;
        kill_9(&mut node).await;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let spans = (acked.lock().len() - before) as u64 * SPANS;
        rates.push(spans as f64 / elapsed.as_secs_f64());
        eprintln!("round {round}: {spans} spans acknowledged in {elapsed:?} before kill -9");
    }
    let mut node = spawn(dir.path(), data, env).await;
    let rows = query(
        &node.api,
        "SELECT attributes['batch'] AS b, count(*) AS n, count(DISTINCT span_id) AS d \
         FROM spans WHERE service_name = 'ingest' GROUP BY attributes['batch']",
    )
    .await;
    let found: HashMap<u64, (u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().parse().unwrap(),
                (r[1].as_u64().unwrap(), r[2].as_u64().unwrap()),
            )
        })
        .collect();
    let (acked, unsure) = (acked.lock().clone(), unsure.lock().clone());
    let acked_found = acked
        .iter()
        .filter(|n| found.get(n) == Some(&(SPANS, SPANS)))
        .count();
    let unsure_found = unsure.iter().filter(|n| found.contains_key(n)).count();
    eprintln!(
        "{data}: {} spans acknowledged before the kills, {} found after the restart, exactly once; \
         of {} requests in flight at a kill, {unsure_found} were stored whole, the rest not at all; \
         ingest {:.0} spans/s (rates per round {rates:.0?})",
        acked.len() as u64 * SPANS,
        acked_found as u64 * SPANS,
        unsure.len(),
        rates.iter().sum::<f64>() / rates.len() as f64,
    );
    for n in &acked {
        assert_eq!(
            found.get(n),
            Some(&(SPANS, SPANS)),
            "acknowledged request {n}"
        );
    }
    for (n, counts) in &found {
        assert!(
            acked.contains(n) || unsure.contains(n),
            "request {n} was never sent"
        );
        assert_eq!(*counts, (SPANS, SPANS), "request {n} is whole and once");
    }
    assert!(
        rates.iter().all(|r| *r >= 10_000.0),
        "steady ingest of at least 10k spans/s: {rates:.0?}"
    );
    sigterm(&mut node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_ingest_on_a_local_folder_loses_no_acknowledged_span() {
    let data = tempfile::tempdir().unwrap();
    kill_during_ingest(data.path().to_str().unwrap(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_ingest_on_s3_loses_no_acknowledged_span() {
    let s3 = crate::s3::shared();
    kill_during_ingest(&s3.url("kill-ingest"), &s3.env()).await;
}

/// A rule that fires on errors of the service `steady` in its last 10 s,
/// and posts on firing and on resolved (an action on a resolution, and a
/// verification waiting for it, are what a restart must not fake).
fn steady_rule(hook: &str) -> String {
    format!(
        r#"
every = "1s"
window = "10s"
lateness = "0s"
sql = """
SELECT service_name, count(*) AS errors FROM spans
WHERE service_name = 'steady' AND status_code = 'ERROR'
GROUP BY service_name
"""

[action]
http = ["{hook}"]
on = ["firing", "resolved"]
verify_within = "1h"
inline = """
http::post("{hook}hook", #{{ decision: alert.decision_id, trigger: alert.trigger, episode: alert.episode }}).status
"""
"#
    )
}

/// Sends error spans of `steady` every 200 ms to whichever process is up
/// (`target`), retrying what is not taken, as an SDK would.
fn keep_sending(
    target: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut n = 0;
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            let to = target.lock().clone();
            let taken = match to {
                Some(http) => client
                    .post(format!("http://{http}/v1/traces"))
                    .header("content-type", "application/x-protobuf")
                    .body(request("steady", n, 5, true).encode_to_vec())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200),
                None => false,
            };
            if taken {
                n += 1;
                sent += 5;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sent
    })
}

/// The instance's transitions and decisions as the memory holds them.
async fn recorded(data: &str) -> (Vec<(u64, AlertState, AlertState)>, Vec<Decision>) {
    let loaded = load(&Storage::open(data).unwrap()).await.unwrap();
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    let transitions = loaded
        .chains
        .values()
        .flatten()
        .filter_map(|e| match &e.entry.record {
            Record::Alert { alert } if alert.rule == "steady" => {
                Some((alert.episode, alert.from, alert.to))
            }
            _ => None,
        })
        .collect();
    let decisions = audit::decisions(&loaded, &Default::default())
        .into_iter()
        .map(|s| s.decision)
        .filter(|d| d.rule == "steady")
        .collect();
    (transitions, decisions)
}

/// 20 kill -9 at random moments and a SIGTERM, telemetry flowing all along.
async fn firing_across_restarts(data: &str, env: &[(String, String)]) {
    let hook = webhook().await;
    let dir = setup("", &[("steady.toml", steady_rule(&hook.url))]);
    let target = Arc::new(Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(target.clone(), stop.clone());
    let mut node = spawn(dir.path(), data, env).await;
    *target.lock() = Some(node.http.clone());
    // Firing, and acted on, before the first restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    while hook.calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the rule never fired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    const TRIALS: usize = 20;
    for trial in 0..=TRIALS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(300 + seed % 2500)).await;
        *target.lock() = None;
        if trial == TRIALS {
            sigterm(&mut node).await;
        } else {
            kill_9(&mut node).await;
        }
        node = spawn(dir.path(), data, env).await;
        *target.lock() = Some(node.http.clone());
    }
    // Some evaluations after the last start, telemetry still flowing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rules: Value = reqwest::get(format!("http://{}/api/v1/rules", node.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.unwrap();
    sigterm(&mut node).await;
    let (transitions, decisions) = recorded(data).await;
    let calls: Vec<Value> = hook.bodies.lock().clone();
    let triggers: BTreeMap<String, usize> = calls.iter().fold(BTreeMap::new(), |mut m, b| {
        *m.entry(b["trigger"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        m
    });
    eprintln!(
        "{data}: {TRIALS} kill -9 and a SIGTERM while {sent} error spans flowed: transitions {transitions:?}, \
         actions by trigger {triggers:?}, decisions {}",
        decisions.len()
    );
    let instance = &rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "steady")
        .unwrap()["instances"][0];
    assert_eq!(instance["state"], "firing", "{instance}");
    assert_eq!(instance["episode"], 1, "{instance}");
    assert!(
        transitions
            .iter()
            .all(|(episode, _, to)| *episode == 1 && *to != AlertState::Resolved),
        "no resolution, no second episode: {transitions:?}"
    );
    assert_eq!(
        triggers.get("firing"),
        Some(&1),
        "one action for the one episode: {calls:?}"
    );
    assert_eq!(
        triggers.get("resolved"),
        None,
        "no resolved action: {calls:?}"
    );
    assert!(
        decisions.iter().all(|d| d.outcome != Outcome::Effective),
        "no verdict of `effective`: {decisions:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_stays_firing_across_restarts_on_a_local_folder() {
    let data = tempfile::tempdir().unwrap();
    firing_across_restarts(data.path().to_str().unwrap(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_stays_firing_across_restarts_on_s3() {
    let s3 = crate::s3::shared();
    firing_across_restarts(&s3.url("firing-restarts"), &s3.env()).await;
}
