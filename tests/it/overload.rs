//! Overload, end to end with the real binary: far more than it can take,
//! over HTTP and gRPC (20 MiB requests among them), while high-cardinality
//! rules run. The process stays within its memory budget plus the overhead
//! docs/memory.md documents, refuses only with 429 / UNAVAILABLE, and
//! every request it accepted is there, once.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parking_lot::Mutex;
use prost::Message as _;
use serde_json::Value;

use crate::common::{address_in, ready_line};

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 64 * MIB;
const MAX_REQUEST: u64 = 20 * MIB;
const CONCURRENT: u64 = 2;
const RULE_MEMORY: u64 = 32 * MIB;
/// The executor's threads: one rule evaluation each at a time.
const RULE_THREADS: u64 = 2;
/// docs/memory.md: the runtime, the query engines, the rules' plans.
const FIXED: u64 = 128 * MIB;
/// Unflushed rows that start a flush: a quarter of the budget.
const FLUSH: u64 = BUDGET / 4;
const FLOOD: Duration = Duration::from_secs(40);

/// docs/memory.md's bound: the budget; each request being prepared (its
/// body, decompressed, decoded and being converted: 6x its size); each rule
/// evaluation's pool and an archive file it reads; a flush being encoded;
/// the fixed part.
fn documented_bound() -> u64 {
    BUDGET + CONCURRENT * 6 * MAX_REQUEST + RULE_THREADS * (RULE_MEMORY + FLUSH) + FLUSH + FIXED
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

/// Request `n`: `spans` spans with unique ids, each with `padding` bytes
/// of attribute, at the current time.
fn request(n: u64, spans: u64, padding: usize) -> ExportTraceServiceRequest {
    let now = homeostat::ingest::now_nanos() as u64;
    let pad = "x".repeat(padding);
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: [n.to_be_bytes(), i.to_be_bytes()].concat(),
            span_id: (n << 24 | i).to_be_bytes().to_vec(),
            name: "overload".into(),
            start_time_unix_nano: now - 1_000,
            end_time_unix_nano: now,
            attributes: vec![string("batch", &n.to_string()), string("pad", &pad)],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![string("service.name", "overload")],
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

/// Peak and current resident memory of `pid`, bytes.
fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}

#[derive(Default)]
struct Tally {
    acked: Mutex<HashMap<u64, u64>>,
    refused: AtomicU64,
    offered: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overload_stays_within_the_documented_memory_and_loses_nothing_accepted() {
    homeostat::act::host::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("homeostat.toml"),
        format!(
            "[store]\nmemory_budget = \"{BUDGET} B\"\n\
             [ingest]\nmax_request_size = \"{MAX_REQUEST} B\"\nmax_concurrent_requests = {CONCURRENT}\n\
             [query]\nrule_memory_limit = \"{RULE_MEMORY} B\"\n\
             [archive]\nflush_interval = \"2s\"\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    for (name, key) in [("by_span", "span_id"), ("by_trace", "trace_id")] {
        std::fs::write(
            dir.path().join("rules").join(format!("{name}.toml")),
            format!(
                "every = \"1s\"\nwindow = \"30s\"\nlateness = \"0s\"\n\
                 sql = \"SELECT {key}, count(*) AS n FROM spans GROUP BY {key} HAVING count(*) > 1\"\n"
            ),
        )
        .unwrap();
    }
    let data = dir.path().join("data");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_homeostat"))
        .args([
            "run",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
        ])
        .args(["--api", "127.0.0.1:0", "--node", "overload"])
        .arg("--config")
        .arg(dir.path().join("homeostat.toml"))
        .arg("--rules")
        .arg(dir.path().join("rules"))
        .arg("--data")
        .arg(&data)
        .env("HOMEOSTAT_LOG", "warn,homeostat=info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let (ready, mut lines) = ready_line(&mut child).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (http, grpc, api) = (
        address_in(&ready, "otlp_http"),
        address_in(&ready, "otlp_grpc"),
        address_in(&ready, "api"),
    );

    let idle = rss(pid).1;
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(1));
    let started = Instant::now();
    let mut senders = Vec::new();
    // Small requests over HTTP, as SDKs send them.
    for _ in 0..4 {
        let (tally, next, http) = (tally.clone(), next.clone(), http.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while started.elapsed() < FLOOD {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let spans = 2_000;
                let body = request(n, spans, 40).encode_to_vec();
                tally.offered.fetch_add(spans, Ordering::Relaxed);
                let r = client
                    .post(format!("http://{http}/v1/traces"))
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => {
                        tally.acked.lock().insert(n, spans);
                    }
                    429 => {
                        tally.refused.fetch_add(spans, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => {
                        let text = r.text().await.unwrap_or_default();
                        tally
                            .unexpected
                            .lock()
                            .push(format!("HTTP {other}: {text}"));
                    }
                }
            }
        }));
    }
    // Requests of almost 20 MiB over gRPC.
    for _ in 0..2 {
        let (tally, next, grpc) = (tally.clone(), next.clone(), grpc.clone());
        senders.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap()
                .max_encoding_message_size(usize::MAX);
            while started.elapsed() < FLOOD {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let spans = 18_000;
                let body = request(n, spans, 1_000);
                assert!(body.encoded_len() as u64 <= MAX_REQUEST);
                tally.offered.fetch_add(spans, Ordering::Relaxed);
                match client.export(body).await {
                    Ok(_) => {
                        tally.acked.lock().insert(n, spans);
                    }
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        tally.refused.fetch_add(spans, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(s) => tally.unexpected.lock().push(format!("gRPC {s:?}")),
                }
            }
        }));
    }
    let mut peak_seen = 0;
    while started.elapsed() < FLOOD {
        peak_seen = peak_seen.max(rss(pid).1);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for s in senders {
        s.await.unwrap();
    }
    let (peak, _) = rss(pid);
    let acked = tally.acked.lock().clone();
    let accepted: u64 = acked.values().sum();
    let offered = tally.offered.load(Ordering::Relaxed);
    let refused = tally.refused.load(Ordering::Relaxed);

    // Every accepted request is there, whole and once.
    let client = reqwest::Client::new();
    let answer: Value = client
        .post(format!("http://{api}/api/v1/query"))
        .json(&serde_json::json!({
            "sql": "SELECT attributes['batch'] AS b, count(*) AS n FROM spans GROUP BY attributes['batch']"
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let found: HashMap<u64, u64> = answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().parse().unwrap(),
                r[1].as_u64().unwrap(),
            )
        })
        .collect();
    let rules: Value = reqwest::get(format!("http://{api}/api/v1/rules"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let evaluations: usize = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["evaluations"].as_array().map_or(0, Vec::len))
        .sum();
    eprintln!(
        "overload for {FLOOD:?}: {offered} spans offered, {accepted} accepted ({:.1}x more offered), \
         {refused} refused with 429/UNAVAILABLE; peak RSS {} MiB (sampled {} MiB) against a documented \
         bound of {} MiB (budget {} MiB; {} MiB when idle after the start); {evaluations} rule evaluations recorded",
        offered as f64 / accepted.max(1) as f64,
        peak / MIB,
        peak_seen / MIB,
        documented_bound() / MIB,
        BUDGET / MIB,
        idle / MIB,
    );
    assert!(
        tally.unexpected.lock().is_empty(),
        "only 429 / UNAVAILABLE: {:?}",
        tally.unexpected.lock()
    );
    assert!(refused > 0, "the load was beyond what it takes");
    assert!(
        offered >= 3 * accepted,
        "at least three times what was taken was offered: {offered} vs {accepted}"
    );
    let missing: HashSet<&u64> = acked
        .iter()
        .filter(|(n, spans)| found.get(n) != Some(spans))
        .map(|(n, _)| n)
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but not stored whole: {missing:?}"
    );
    assert_eq!(found.len(), acked.len(), "nothing stored that was refused");
    assert!(
        peak <= documented_bound(),
        "peak RSS {} MiB over the documented {} MiB",
        peak / MIB,
        documented_bound() / MIB
    );
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
