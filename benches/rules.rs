//! Rule evaluation cost and detection latency.
//!
//! `cargo bench --bench rules` prints:
//! 1. the cost of one evaluation tick for 1, 10, 100 and 1000 rules over
//!    windows of 10k, 100k and 1M spans, on one core (a current-thread
//!    runtime, one target partition), next to two baselines measured in the
//!    same run: a scan of the window filtering on one column, and the same
//!    rule query planned from SQL at every tick instead of from the cached
//!    plan;
//! 2. detection latency: from the OTLP/HTTP request that completes an
//!    anomaly to the instance firing (`for = "0s"`, `every = "1s"`), p50 and
//!    p99 over repeated trials against a running instance.
//!
//! Under `cargo test --benches` it runs one small configuration and checks
//! the answers, without timing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use homeostat::ingest::convert::spans;
use homeostat::ingest::{Signal, now_nanos};
use homeostat::internal_events::Metrics;
use homeostat::rules::{AlertState, RuleEngine};
use homeostat::store::{Store, StoreOptions};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

const SERVICES: usize = 10;
const ROUTES: usize = 10;
const WINDOW_S: i64 = 60;

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// `n` spans over the minute before `now`: 10 services, 10 routes, 2% errors.
fn fill(store: &Store, n: usize, now: i64) {
    const BATCH: usize = 10_000;
    let mut made = 0;
    while made < n {
        let count = BATCH.min(n - made);
        let per_service = count.div_ceil(SERVICES);
        let resource_spans = (0..SERVICES)
            .map(|s| {
                let spans = (0..per_service)
                    .filter(|i| made + s * per_service + i < n)
                    .map(|i| {
                        let k = (made + s * per_service + i) as u64;
                        let start = now - WINDOW_S * 1_000_000_000
                            + (k as i64 * 7_919_993) % (WINDOW_S * 1_000_000_000);
                        Span {
                            trace_id: [k.to_be_bytes(), [1; 8]].concat(),
                            span_id: (k + 1).to_be_bytes().to_vec(),
                            name: "GET /api".into(),
                            kind: 2,
                            start_time_unix_nano: start as u64,
                            end_time_unix_nano: (start + 1_000_000 + (k as i64 % 1000) * 10_000)
                                as u64,
                            attributes: vec![kv(
                                "http.route",
                                &format!("/api/{}", k as usize % ROUTES),
                            )],
                            status: Some(Status {
                                code: if (k / 10).is_multiple_of(50) { 2 } else { 0 },
                                message: String::new(),
                            }),
                            ..Default::default()
                        }
                    })
                    .collect();
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", &format!("svc-{s}"))],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            })
            .collect();
        let request = ExportTraceServiceRequest { resource_spans };
        let batch = spans::convert(&request).expect("converts").batch;
        made += batch.num_rows();
        store
            .insert(Signal::Traces, batch, now)
            .expect("unlimited budget");
    }
}

/// Rule `i`: error ratio per service and route above a threshold that
/// varies per rule, so that every rule is a distinct query.
fn rule_text(i: usize) -> String {
    format!(
        r#"every = "5s"
window = "{WINDOW_S}s"
sql = """
SELECT service_name, attributes['http.route'] AS route,
       avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) AS error_ratio,
       count(*) AS spans
FROM spans
GROUP BY service_name, attributes['http.route']
HAVING avg(CASE WHEN status_code = 'ERROR' THEN 1.0 ELSE 0.0 END) > {threshold}
"""
"#,
        threshold = 0.001 + i as f64 * 1e-6
    )
}

fn store() -> Store {
    Store::new(StoreOptions {
        memory_budget: u64::MAX,
        retention: Duration::from_secs(3600),
        partition: Duration::from_secs(60),
        max_age: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        flush_bytes: u64::MAX,
    })
}

async fn engine_with(store: &Store, dir: &Path, rules: usize) -> Arc<RuleEngine> {
    for i in 0..rules {
        std::fs::write(dir.join(format!("r{i:04}.toml")), rule_text(i)).unwrap();
    }
    let engine = RuleEngine::new(dir.to_owned(), store, Arc::new(Metrics::new())).unwrap();
    let report = engine.reload().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.loaded.len(), rules);
    Arc::new(engine)
}

/// One tick: every rule evaluated at `now`, one after the other (one core).
async fn tick(engine: &RuleEngine, names: &[String], now: i64) -> usize {
    let mut instances = 0;
    for name in names {
        let (evaluation, _) = engine.evaluate(name, now).await.expect("loaded");
        assert_eq!(evaluation.error, None);
        instances += evaluation.rows;
    }
    instances
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median time of `f`, run at least 3 times and for about a quarter of
/// `budget` (at most 20 runs).
async fn time_it(budget: Duration, f: impl AsyncFn()) -> Duration {
    let mut samples = Vec::new();
    let started = Instant::now();
    while samples.len() < 3 || (started.elapsed() < budget / 4 && samples.len() < 20) {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    median(samples)
}

async fn tick_costs(spans_sizes: &[usize], rule_counts: &[usize], budget: Duration) {
    println!("\nEvaluation tick on one core (median of repeated ticks)");
    println!(
        "{:>9} {:>6} {:>12} {:>14} {:>16} {:>16}",
        "spans", "rules", "tick", "per rule", "scan baseline", "replan per tick"
    );
    for &n in spans_sizes {
        let store = store();
        let now = now_nanos();
        fill(&store, n, now);
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_with(&store, dir.path(), *rule_counts.iter().max().unwrap()).await;
        let all: Vec<String> = engine.rules().keys().cloned().collect();

        // Baselines on the same data: a bare scan of the window, and one rule
        // query planned from SQL at every run.
        let ctx = datafusion::prelude::SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        ctx.register_table(
            "spans",
            Arc::new(homeostat::store::StoreTable::new(
                store.table(Signal::Traces).clone(),
            )),
        )
        .unwrap();
        // Reads and compares one column of every row: `count(*)` alone would
        // be answered from statistics.
        let scan = time_it(budget, async || {
            let b = ctx
                .sql("SELECT count(*) FROM spans WHERE status_code = 'ERROR'")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            assert_eq!(b[0].num_rows(), 1);
        })
        .await;
        let rule_sql = homeostat::rules::file::parse(Path::new("r.toml"), &rule_text(0))
            .unwrap()
            .sql
            .unwrap();
        let replan = time_it(budget, async || {
            let b = ctx.sql(&rule_sql).await.unwrap().collect().await.unwrap();
            assert!(b.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
        })
        .await;

        for &k in rule_counts {
            let names = &all[..k];
            // Skip what would take minutes: extrapolating is honest enough.
            let estimate = replan * k as u32;
            if estimate > budget {
                println!(
                    "{n:>9} {k:>6} {:>12} (skipped: ~{:.1?} per tick)",
                    "-", estimate
                );
                continue;
            }
            let expected = SERVICES * ROUTES * k;
            let per_tick = time_it(budget, async || {
                assert_eq!(
                    tick(&engine, names, now).await,
                    expected,
                    "every rule sees every series"
                );
            })
            .await;
            println!(
                "{n:>9} {k:>6} {:>12.2?} {:>14.2?} {:>16.2?} {:>16.2?}",
                per_tick,
                per_tick / k as u32,
                scan,
                replan
            );
        }
    }
}

/// Detection latency against a running instance: the anomaly is completed
/// by one OTLP/HTTP request; the clock stops when the firing event arrives.
async fn detection_latency(trials: usize) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("errors.toml"),
        r#"every = "1s"
window = "10s"
lateness = "0s"
for = "0s"
sql = "SELECT service_name, count(*) AS errors FROM spans WHERE status_code = 'ERROR' GROUP BY service_name"
"#,
    )
    .unwrap();
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let config = homeostat::config::Config {
        otlp_grpc: any,
        otlp_http: any,
        api: any,
        rules: dir.path().to_owned(),
        data: "memory://".into(),
        ..Default::default()
    };
    let running = homeostat::server::start(config).await.unwrap();
    homeostat::act::host::install_crypto_provider();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/traces", running.otlp_http);
    let mut events = running.rules.subscribe();
    let mut latencies = Vec::new();
    for trial in 0..trials {
        // Spread the requests over the evaluation period.
        tokio::time::sleep(Duration::from_millis(137 + (trial as u64 * 389) % 1000)).await;
        let service = format!("svc-{trial}");
        let now = now_nanos();
        let body = serde_json::json!({"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeSpans": [{"spans": [{
                "traceId": format!("{:032x}", trial + 1), "spanId": format!("{:016x}", trial + 1),
                "name": "POST /pay", "kind": 2, "status": {"code": 2},
                "startTimeUnixNano": (now - 5_000_000).to_string(), "endTimeUnixNano": now.to_string()
            }]}]
        }]});
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let sent = Instant::now();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("fires")
                .unwrap();
            if e.event.transition.to == AlertState::Firing
                && e.event.labels.get("service_name") == Some(&service)
            {
                latencies.push(sent.elapsed());
                break;
            }
        }
    }
    running.shutdown();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "\nDetection latency over {trials} trials (every = 1s, for = 0s): p50 {:.0?}, p99 {:.0?}, max {:.0?}; target every + 50ms = 1.05s",
        p(0.5),
        p(0.99),
        latencies[latencies.len() - 1]
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if bench {
            tick_costs(
                &[10_000, 100_000, 1_000_000],
                &[1, 10, 100, 1000],
                Duration::from_secs(20),
            )
            .await;
        } else {
            tick_costs(&[10_000], &[1, 10], Duration::from_millis(200)).await;
        }
    });
    // The instance under test needs a multi-threaded runtime, as in production.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(detection_latency(if bench { 40 } else { 3 }));
}
