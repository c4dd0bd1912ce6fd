//! Archive throughput: batches of 10k spans written as Parquet by
//! `Archive::write`, to an in-memory object store and to a local folder
//! (fsync included), against encoding the same batch to Arrow IPC in memory
//! as the baseline, measured in the same run.
//!
//! Run with `cargo bench --bench archive`. Besides criterion's report, the
//! bench prints the spans per second of each path, its ratio to the
//! baseline, and the bytes per span each format takes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use criterion::{Criterion, Throughput};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use homeostat::ingest::convert::spans;
use homeostat::memory::Storage;
use homeostat::memory::archive::{Archive, ArchiveConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tokio::runtime::Runtime;

const SPANS: usize = 10_000;
/// 2023-11-14T22:13:20Z: the 10k spans, 100 µs apart, fall in one hour.
const T0: u64 = 1_700_000_000_000_000_000;
const GROUP: &str = "archive_spans";

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

const ROUTES: [&str; 4] = ["/api/cart", "/api/checkout", "/api/items/{id}", "/healthz"];

/// Typical server spans, as in `benches/ingest.rs`: 10 attributes each
/// (HTTP server semantic conventions), one resource of 4 attributes,
/// converted to Arrow by the real OTLP converter.
fn span_batch() -> RecordBatch {
    let spans = (0..SPANS)
        .map(|i| {
            let route = ROUTES[i % ROUTES.len()];
            let start = T0 + i as u64 * 100_000;
            Span {
                trace_id: [(i as u64 / 4).to_be_bytes(), 0x5eed_u64.to_be_bytes()].concat(),
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
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("checkout")),
                    kv("service.version", s("1.4.2")),
                    kv("deployment.environment", s("prod")),
                    kv("host.name", s("node-7")),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.flask".into(),
                    version: "0.48b0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let converted = spans::convert(&request).expect("valid spans convert");
    assert_eq!(converted.rejected.count, 0);
    converted.batch
}

/// The baseline: the batch as an Arrow IPC stream in memory.
fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema()).expect("valid schema");
    writer.write(batch).expect("encodes");
    writer.into_inner().expect("finishes")
}

/// One `Archive::write` of the batch to a fresh archive on `storage`.
/// Returns the Parquet bytes written.
fn write(runtime: &Runtime, storage: Storage, batch: &RecordBatch) -> u64 {
    let archive = Archive::new(storage, "bench", ArchiveConfig::default()).expect("valid");
    let report = runtime
        .block_on(archive.write("spans", vec![batch.clone()]))
        .expect("writes");
    assert_eq!((report.rows, report.files.len()), (SPANS as u64, 1));
    report.bytes
}

/// Checks the answer before timing it: both encodings read back as the
/// batch. Returns the bytes per span of Parquet and of IPC.
fn check(runtime: &Runtime, batch: &RecordBatch) -> (f64, f64) {
    let stream = ipc(batch);
    let back: Vec<RecordBatch> = StreamReader::try_new(&stream[..], None)
        .expect("reads")
        .collect::<Result<_, _>>()
        .expect("decodes");
    assert_eq!(back, std::slice::from_ref(batch));

    let storage = Storage::in_memory();
    let archive = Archive::new(storage.clone(), "bench", ArchiveConfig::default()).expect("valid");
    let report = runtime
        .block_on(archive.write("spans", vec![batch.clone()]))
        .expect("writes");
    let bytes = runtime
        .block_on(storage.get(&storage.path(&[&report.files[0]])))
        .expect("stored");
    let back: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .expect("valid Parquet")
        .collect::<Result<_, _>>()
        .expect("decodes");
    let back = arrow::compute::concat_batches(&batch.schema(), &back).expect("one schema");
    assert_eq!(back.columns(), batch.columns());
    (
        report.bytes as f64 / SPANS as f64,
        stream.len() as f64 / SPANS as f64,
    )
}

/// Times `write` alone: setting up the storage and dropping what was
/// written (a temporary folder's files) are left out.
fn timed_writes(iters: u64, runtime: &Runtime, batch: &RecordBatch, local: bool) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let dir = local.then(|| tempfile::tempdir().expect("a temporary folder"));
        let storage = match &dir {
            Some(dir) => Storage::open(dir.path().to_str().expect("UTF-8 path")).expect("opens"),
            None => Storage::in_memory(),
        };
        let start = Instant::now();
        black_box(write(runtime, storage, black_box(batch)));
        total += start.elapsed();
    }
    total
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let batch = span_batch();
    let (parquet_bytes, ipc_bytes) = check(&runtime, &batch);

    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(SPANS as u64));
    group.bench_function("ipc_encode", |b| {
        b.iter(|| black_box(ipc(black_box(&batch))))
    });
    group.bench_function("parquet_memory", |b| {
        b.iter_custom(|iters| timed_writes(iters, &runtime, &batch, false))
    });
    group.bench_function("parquet_local", |b| {
        b.iter_custom(|iters| timed_writes(iters, &runtime, &batch, true))
    });
    group.finish();
    c.final_summary();

    println!(
        "\n{:<16} {:>12} {:>7} {:>8}",
        "path", "spans/s", "ratio", "B/span"
    );
    let per_s = |ns: f64| SPANS as f64 / (ns / 1e9);
    let Some(base) = mean_ns(GROUP, "ipc_encode") else {
        // In `cargo test --benches` mode criterion runs each bench once
        // and saves no estimates.
        println!(
            "(no timing in test mode) Parquet {parquet_bytes:.0} B/span, IPC {ipc_bytes:.0} B/span"
        );
        return;
    };
    println!(
        "{:<16} {:>12.0} {:>7.2} {:>8.0}",
        "arrow_ipc",
        per_s(base),
        1.0,
        ipc_bytes
    );
    for name in ["parquet_memory", "parquet_local"] {
        if let Some(ns) = mean_ns(GROUP, name) {
            println!(
                "{:<16} {:>12.0} {:>7.2} {:>8.0}",
                name,
                per_s(ns),
                base / ns,
                parquet_bytes
            );
        }
    }
}
