//! Sustained ingest at several times what the memory budget holds: the
//! newest data is always taken (the oldest archived rows leave memory for
//! it), a new anomaly sent in the middle is detected, memory stays within
//! the budget, every accepted span is queryable once (from memory or the
//! archive), and the only refusal is the archive falling behind, named.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message as _;

use homeostat::ingest::now_nanos;
use homeostat::rules::AlertState;

use crate::common::start_with;

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// `n` spans of `service` with distinct ids from `first`, at the current
/// time; `error` sets their status.
fn batch(service: &str, first: u64, n: u64, error: bool) -> ExportTraceServiceRequest {
    let now = now_nanos() as u64;
    let spans = (first..first + n)
        .map(|i| Span {
            trace_id: [i.to_be_bytes(), [1; 8]].concat(),
            span_id: i.to_be_bytes().to_vec(),
            name: "flood".into(),
            start_time_unix_nano: now,
            end_time_unix_nano: now + 100_000,
            attributes: vec![
                string("http.route", "/api/flood"),
                string("http.method", "POST"),
                string("http.request.id", &format!("req-{i}")),
            ],
            status: error.then(|| Status {
                code: 2,
                message: "boom".into(),
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

const PER_REQUEST: u64 = 500;
const SENDERS: u64 = 4;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sustained_flood_past_the_budget_keeps_the_newest_data_and_loses_none() {
    let budget = ByteSize::mib(6);
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("anomaly.toml"),
        r#"
every = "1s"
window = "20s"
lateness = "0s"
sql = """
SELECT service_name, count(*) AS errors FROM spans
WHERE service_name = 'anomaly' AND status_code = 'ERROR'
GROUP BY service_name HAVING count(*) >= 5
"""
"#,
    )
    .unwrap();
    let (data_dir, rules_dir) = (
        data.path().to_str().unwrap().to_owned(),
        rules.path().to_owned(),
    );
    let h = Arc::new(
        start_with(move |c| {
            c.store.memory_budget = budget;
            c.data = data_dir;
            c.rules = rules_dir;
            c.archive.flush_interval = Duration::from_secs(2);
        })
        .await,
    );
    let mut events = h.running.rules.subscribe();

    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (h, next, accepted, refused) =
                (h.clone(), next.clone(), accepted.clone(), refused.clone());
            tokio::spawn(async move {
                while started.elapsed() < FLOOD {
                    let first = next.fetch_add(PER_REQUEST, Ordering::Relaxed);
                    let body = batch("flood", first, PER_REQUEST, false).encode_to_vec();
                    let r = h
                        .post("/v1/traces", "application/x-protobuf", false, body)
                        .await;
                    match r.status().as_u16() {
                        200 => {
                            accepted.fetch_add(PER_REQUEST, Ordering::Relaxed);
                        }
                        429 => {
                            let text =
                                String::from_utf8_lossy(&r.bytes().await.unwrap()).into_owned();
                            assert!(
                                text.contains("not yet archived"),
                                "a refusal names the archive backlog: {text}"
                            );
                            refused.fetch_add(PER_REQUEST, Ordering::Relaxed);
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
            })
        })
        .collect();

    // Halfway, an anomaly: error spans of a new service, sent the way an
    // SDK does (retried on 429 until taken).
    tokio::time::sleep(FLOOD / 2).await;
    let anomaly_sent = Instant::now();
    let body = batch("anomaly", u64::MAX / 2, 20, true).encode_to_vec();
    loop {
        let r = h
            .post("/v1/traces", "application/x-protobuf", false, body.clone())
            .await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::rules::wait_for(&mut events, "anomaly", AlertState::Firing).await;
    let detected_after = anomaly_sent.elapsed();
    for s in senders {
        s.await.unwrap();
    }

    let accepted = accepted.load(Ordering::Relaxed) + 20;
    let refused = refused.load(Ordering::Relaxed);
    // Memory stayed within its budget, many budgets passed through it, and
    // the rows that left it are read from the archive.
    let mut held = 0.0;
    for table in ["spans", "metrics", "logs"] {
        held += h
            .metric(&format!("homeostat_store_bytes{{table=\"{table}\"}}"))
            .await
            .unwrap();
    }
    assert!(
        held <= budget.as_u64() as f64,
        "{held} bytes held, budget {budget}"
    );
    let evicted = h
        .metric(r#"homeostat_store_evicted_rows_total{table="spans"}"#)
        .await
        .unwrap_or(0.0);
    let stored = h
        .count("SELECT count(*) FROM spans WHERE span_name = 'flood'")
        .await as u64;
    let distinct = h
        .count("SELECT count(DISTINCT span_id) FROM spans WHERE span_name = 'flood'")
        .await as u64;
    eprintln!(
        "flood of {FLOOD:?} into a {budget} budget: {accepted} spans accepted, {refused} refused \
         (archive backlog), {evicted} left memory for the archive, {stored} queryable; \
         the anomaly sent halfway fired after {detected_after:?}"
    );
    assert_eq!(stored, accepted, "every accepted span is queryable");
    assert_eq!(distinct, accepted, "and each once");
    assert!(
        evicted as u64 > accepted / 2,
        "most of the flood left memory for the archive: {evicted} of {accepted}"
    );
    let rows_held = h
        .metric(r#"homeostat_store_rows{table="spans"}"#)
        .await
        .unwrap()
        .max(1.0);
    let one_span = held / rows_held;
    assert!(
        accepted as f64 * one_span > 3.0 * budget.as_u64() as f64,
        "the flood was several budgets: {accepted} spans of ~{one_span:.0} bytes"
    );
}
