//! Ingest throughput: encoded OTLP export requests → queryable store batches,
//! against prost decoding of the same bytes as the baseline, per signal.
//!
//! Run with `cargo bench --bench ingest`. Besides criterion's report, the
//! bench prints per signal the items per second of each path, the ratio of
//! the full path to the baseline, and the store's bytes per buffered item.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use homeostat::ingest::{ExportRequest, Signal};
use homeostat::store::{Store, StoreOptions};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    self as m, Metric, ResourceMetrics, ScopeMetrics, metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

const ITEMS: usize = 1000;
const T0: u64 = 1_700_000_000_000_000_000;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

fn int(v: i64) -> any_value::Value {
    any_value::Value::IntValue(v)
}

fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s(service)),
            kv("service.version", s("1.4.2")),
            kv("deployment.environment", s("prod")),
            kv("host.name", s("node-7")),
        ],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "opentelemetry.instrumentation.flask".into(),
        version: "0.48b0".into(),
        ..Default::default()
    })
}

const ROUTES: [&str; 4] = ["/api/cart", "/api/checkout", "/api/items/{id}", "/healthz"];

/// 1000 typical server spans: ~300 bytes encoded each, 10 attributes
/// (HTTP server semantic conventions), one resource of 4 attributes.
fn traces() -> ExportTraceServiceRequest {
    let spans = (0..ITEMS)
        .map(|i| {
            let route = ROUTES[i % ROUTES.len()];
            let start = T0 + i as u64 * 1_000_000;
            Span {
                trace_id: [(i as u64).to_be_bytes(), 0x5eed_u64.to_be_bytes()].concat(),
                span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                parent_span_id: (i as u64 + 7).to_be_bytes().to_vec(),
                name: format!("GET {route}"),
                kind: 2,
                start_time_unix_nano: start,
                end_time_unix_nano: start + 3_500_000 + (i as u64 % 97) * 10_000,
                attributes: vec![
                    kv("http.method", s("GET")),
                    kv("http.route", s(route)),
                    kv("http.status_code", int(if i % 50 == 0 { 500 } else { 200 })),
                    kv("http.scheme", s("https")),
                    kv(
                        "http.target",
                        s(&route.replace("{id}", &(i % 1000).to_string())),
                    ),
                    kv("net.host.name", s("shop")),
                    kv("net.host.port", int(443)),
                    kv("http.flavor", s("1.1")),
                    kv("net.peer.ip", s(&format!("10.0.{}.{}", i % 7, i % 250))),
                    kv("http.user_agent", s("curl/8.5.0")),
                ],
                status: Some(Status {
                    code: if i % 50 == 0 { 2 } else { 0 },
                    message: String::new(),
                }),
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource("checkout"),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// 1000 data points: 250 metrics of four types, typical attributes.
fn metrics() -> ExportMetricsServiceRequest {
    let attrs = |i: usize| {
        vec![
            kv("http.route", s(ROUTES[i % ROUTES.len()])),
            kv("http.request.method", s("GET")),
            kv("http.response.status_code", int(200)),
        ]
    };
    let mut metrics = Vec::new();
    for i in 0..ITEMS / 4 {
        let number = |v: f64| m::NumberDataPoint {
            attributes: attrs(i),
            start_time_unix_nano: T0,
            time_unix_nano: T0 + 60_000_000_000,
            value: Some(m::number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        metrics.push(Metric {
            name: format!("http.server.requests.{}", i % 10),
            unit: "1".into(),
            data: Some(Data::Sum(m::Sum {
                data_points: vec![number(i as f64)],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        });
        metrics.push(Metric {
            name: format!("process.memory.utilization.{}", i % 10),
            unit: "1".into(),
            data: Some(Data::Gauge(m::Gauge {
                data_points: vec![number(0.5)],
            })),
            ..Default::default()
        });
        metrics.push(Metric {
            name: format!("http.server.request.duration.{}", i % 10),
            unit: "s".into(),
            data: Some(Data::Histogram(m::Histogram {
                data_points: vec![m::HistogramDataPoint {
                    attributes: attrs(i),
                    start_time_unix_nano: T0,
                    time_unix_nano: T0 + 60_000_000_000,
                    count: 100,
                    sum: Some(12.5),
                    bucket_counts: vec![10, 20, 30, 20, 10, 5, 3, 2],
                    explicit_bounds: vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5],
                    min: Some(0.001),
                    max: Some(0.9),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            })),
            ..Default::default()
        });
        metrics.push(Metric {
            name: format!("system.cpu.time.{}", i % 10),
            unit: "s".into(),
            data: Some(Data::Sum(m::Sum {
                data_points: vec![number(1234.5)],
                aggregation_temporality: 2,
                is_monotonic: true,
            })),
            ..Default::default()
        });
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource("checkout"),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// 1000 log records with a message body, trace context and 5 attributes.
fn logs() -> ExportLogsServiceRequest {
    let records = (0..ITEMS)
        .map(|i| LogRecord {
            time_unix_nano: T0 + i as u64 * 1_000_000,
            observed_time_unix_nano: T0 + i as u64 * 1_000_000 + 500,
            severity_number: if i % 20 == 0 { 17 } else { 9 },
            severity_text: if i % 20 == 0 { "ERROR" } else { "INFO" }.into(),
            body: Some(AnyValue {
                value: Some(s(&format!(
                    "request {i} served in {} ms for user u{}",
                    i % 37,
                    i % 101
                ))),
            }),
            attributes: vec![
                kv("code.function", s("handle_request")),
                kv("code.lineno", int(118)),
                kv("thread.name", s("worker-3")),
                kv("http.route", s(ROUTES[i % ROUTES.len()])),
                kv("log.logger", s("shop.checkout")),
            ],
            trace_id: [(i as u64).to_be_bytes(), 0x5eed_u64.to_be_bytes()].concat(),
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            flags: 1,
            ..Default::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource("checkout"),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn new_store() -> Store {
    Store::new(StoreOptions {
        memory_budget: u64::MAX,
        retention: Duration::from_secs(3600),
        partition: Duration::from_secs(60),
        max_age: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        flush_bytes: u64::MAX,
    })
}

/// The full path: decode, convert, store. Returns the store so that
/// dropping it is not timed.
fn ingest<R: ExportRequest>(bytes: &[u8], store: Store) -> Store {
    let request = R::decode(bytes).expect("valid protobuf");
    let converted = request.convert().expect("converts");
    store
        .insert(R::SIGNAL, converted.batch, 0)
        .expect("fits the unlimited budget");
    store
}

/// Checks the answer before timing it: every item stored, none rejected.
fn check<R: ExportRequest>(bytes: &[u8]) {
    let request = R::decode(bytes).expect("valid protobuf");
    let converted = request.convert().expect("converts");
    assert_eq!(converted.rejected.count, 0);
    assert_eq!(converted.batch.num_rows(), ITEMS);
    let store = ingest::<R>(bytes, new_store());
    assert_eq!(store.table(R::SIGNAL).usage().1, ITEMS as u64);
}

/// Bytes of store memory per item once many batches are buffered.
fn bytes_per_item<R: ExportRequest>(bytes: &[u8]) -> f64 {
    let mut store = new_store();
    for _ in 0..100 {
        store = ingest::<R>(bytes, store);
    }
    let (used, rows) = store.table(R::SIGNAL).usage();
    used as f64 / rows as f64
}

struct Figures {
    signal: Signal,
    encoded_bytes_per_item: f64,
    store_bytes_per_item: f64,
}

fn bench_signal<R: ExportRequest>(c: &mut Criterion, request: R) -> Figures {
    let bytes = request.encode_to_vec();
    check::<R>(&bytes);
    let name = R::SIGNAL.table();
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(ITEMS as u64));
    group.bench_function("prost_decode", |b| {
        b.iter(|| black_box(R::decode(black_box(&bytes[..])).expect("valid protobuf")))
    });
    group.bench_function("decode_convert_store", |b| {
        b.iter_batched(
            new_store,
            |store| ingest::<R>(black_box(&bytes), store),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    Figures {
        signal: R::SIGNAL,
        encoded_bytes_per_item: bytes.len() as f64 / ITEMS as f64,
        store_bytes_per_item: bytes_per_item::<R>(&bytes),
    }
}

/// Criterion's point estimate (mean, ns per iteration) of a finished bench.
fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    let path = dir
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let figures = [
        bench_signal(&mut c, traces()),
        bench_signal(&mut c, metrics()),
        bench_signal(&mut c, logs()),
    ];
    c.final_summary();

    println!(
        "\n{:<8} {:>14} {:>16} {:>7} {:>12} {:>14}",
        "table", "prost items/s", "ingest items/s", "ratio", "proto B/item", "store B/item"
    );
    for f in &figures {
        let table = f.signal.table();
        let per_s = |ns: f64| ITEMS as f64 / (ns / 1e9);
        match (
            mean_ns(table, "prost_decode"),
            mean_ns(table, "decode_convert_store"),
        ) {
            (Some(base), Some(full)) => println!(
                "{:<8} {:>14.0} {:>16.0} {:>7.2} {:>12.0} {:>14.0}",
                table,
                per_s(base),
                per_s(full),
                base / full,
                f.encoded_bytes_per_item,
                f.store_bytes_per_item
            ),
            // In `cargo test --benches` mode criterion runs each bench once
            // and saves no estimates.
            _ => println!(
                "{table:<8} (no timing in test mode) {:>12.0} {:>14.0}",
                f.encoded_bytes_per_item, f.store_bytes_per_item
            ),
        }
    }
}
