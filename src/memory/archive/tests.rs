use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::Int64Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::prelude::SessionContext;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as Attribute, any_value};

use super::layout::{civil_from_days, days_from_civil};
use super::*;
use crate::ingest::convert;
use crate::ingest::convert::spans::spans_at;
use crate::internal_events::Metrics;
use crate::store::{Store, StoreTable};

const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;
/// 2023-11-14T22:00:00Z
const H22: i64 = 1_699_999_200 * SECOND;

fn local() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
    (dir, storage)
}

fn archive(storage: &Storage, node: &str) -> Archive {
    Archive::new(storage.clone(), node, ArchiveConfig::default()).unwrap()
}

/// Every object under `prefix`, relative to the root, sorted.
async fn files(storage: &Storage, prefix: &str) -> Vec<String> {
    storage
        .list(&storage.path(&[prefix]))
        .await
        .unwrap()
        .iter()
        .map(|m| storage.relative(&m.location))
        .collect()
}

async fn read(storage: &Storage, file: &str) -> RecordBatch {
    let bytes = storage.get(&storage.path(&[file])).await.unwrap();
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn times(batch: &RecordBatch) -> Vec<i64> {
    time_column(Signal::Traces, batch)
        .unwrap()
        .values()
        .to_vec()
}

async fn count(ctx: &SessionContext, query: &str) -> i64 {
    let batches = ctx.sql(query).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

fn attribute(key: &str, value: &str) -> Attribute {
    Attribute {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// Spans with every kind of column filled: maps, lists of structs, nulls.
fn rich_spans(times: &[i64]) -> RecordBatch {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    let spans = times
        .iter()
        .enumerate()
        .map(|(i, t)| Span {
            trace_id: vec![i as u8 + 1; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            parent_span_id: if i % 2 == 0 { vec![] } else { vec![9; 8] },
            name: format!("GET /items/{i}"),
            kind: 2,
            start_time_unix_nano: *t as u64,
            end_time_unix_nano: *t as u64 + 1_500_000,
            attributes: vec![
                attribute("http.route", "/items/{id}"),
                attribute("n", &i.to_string()),
            ],
            events: vec![Event {
                time_unix_nano: *t as u64 + 5,
                name: "retry".into(),
                attributes: vec![attribute("attempt", "1")],
                ..Default::default()
            }],
            links: vec![Link {
                trace_id: vec![7; 16],
                span_id: vec![8; 8],
                ..Default::default()
            }],
            status: Some(Status {
                code: 2,
                message: "boom".into(),
            }),
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    convert::spans::convert(&request).unwrap().batch
}

fn logs_at(times: &[i64]) -> RecordBatch {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    let log_records = times
        .iter()
        .map(|t| LogRecord {
            time_unix_nano: *t as u64,
            severity_number: 9,
            ..Default::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    convert::logs::convert(&request).unwrap().batch
}

#[tokio::test]
async fn rows_land_in_hive_paths_split_by_utc_hour() {
    let (dir, storage) = local();
    let a = archive(&storage, "node-1");
    let batch = spans_at(&[
        H22 + MINUTE,
        H22 + HOUR + 5,
        H22 + HOUR - 1,
        H22 + 2 * HOUR + 7,
    ]);
    let report = a.write("spans", vec![batch]).await.unwrap();
    assert_eq!(report.rows, 4);
    assert_eq!(report.files.len(), 3);
    let written = files(&storage, "archive").await;
    assert_eq!(written, report.files);
    let folders: Vec<&str> = written
        .iter()
        .map(|f| f.rsplit_once('/').unwrap().0)
        .collect();
    assert_eq!(
        folders,
        [
            "archive/spans/date=2023-11-14/hour=22",
            "archive/spans/date=2023-11-14/hour=23",
            "archive/spans/date=2023-11-15/hour=00",
        ]
    );
    for file in &written {
        let name = file.rsplit_once('/').unwrap().1;
        assert!(name.starts_with("node-1-"), "{name}");
        assert!(dir.path().join(file).is_file(), "{file} is on disk");
    }
    let mut per_file = Vec::new();
    for file in &written {
        per_file.push(times(&read(&storage, file).await));
    }
    assert_eq!(
        per_file,
        [
            vec![H22 + MINUTE, H22 + HOUR - 1],
            vec![H22 + HOUR + 5],
            vec![H22 + 2 * HOUR + 7],
        ]
    );
    // The first file's name starts with its first row's offset in the hour.
    assert!(
        written[0].contains("/node-1-0060000000000_w"),
        "{}",
        written[0]
    );

    a.write("logs", vec![logs_at(&[H22 + 2 * MINUTE])])
        .await
        .unwrap();
    assert_eq!(
        files(&storage, "archive/logs/date=2023-11-14/hour=22")
            .await
            .len(),
        1
    );
    let err = a.write("traces", vec![]).await.unwrap_err().to_string();
    assert!(
        err.contains("no archived table is called \"traces\""),
        "{err}"
    );
}

async fn round_trip(storage: Storage) {
    let a = archive(&storage, "n1");
    let batch = rich_spans(&[H22 + MINUTE, H22 + 2 * MINUTE, H22 + 3 * MINUTE]);
    let report = a.write("spans", vec![batch.clone()]).await.unwrap();
    assert_eq!(report.files.len(), 1);

    // Through the Parquet reader: the same rows and types.
    let file = &report.files[0];
    let back = read(&storage, file).await;
    assert_eq!(back.schema().fields(), batch.schema().fields());
    assert_eq!(back.columns(), batch.columns());
    let bytes = storage.get(&storage.path(&[file])).await.unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let metadata = reader.metadata();
    let column = metadata.row_group(0).column(0);
    assert!(matches!(column.compression(), Compression::ZSTD(_)));
    assert!(column.statistics().is_some(), "statistics on");
    let node = metadata
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .find(|kv| kv.key == NODE_KEY)
        .and_then(|kv| kv.value.as_deref());
    assert_eq!(node, Some("n1"));
    let columns: Vec<&str> = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert!(
        !columns.contains(&"date") && !columns.contains(&"hour"),
        "hive keys only in the path"
    );

    // Through SQL, with no instance: the same rows, pruned by partition.
    let ctx = SessionContext::new();
    a.register(&ctx).await.unwrap();
    assert_eq!(
        count(&ctx, "SELECT count(*) FROM spans WHERE date = '2023-11-14'").await,
        3
    );
    assert_eq!(
        count(&ctx, "SELECT count(*) FROM spans WHERE date = '2023-11-15'").await,
        0
    );
    assert_eq!(
        count(&ctx, "SELECT count(*) FROM spans WHERE hour = '22'").await,
        3
    );
    let rows = ctx
        .sql("SELECT * EXCLUDE (date, hour) FROM spans ORDER BY start_time")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let rows = concat_batches(&rows[0].schema(), &rows).unwrap();
    assert_eq!(rows.columns(), batch.columns());
    // Tables without files are there, empty.
    assert_eq!(count(&ctx, "SELECT count(*) FROM logs").await, 0);
    assert_eq!(count(&ctx, "SELECT count(*) FROM metrics").await, 0);

    // A session that stays open sees files written and deleted later.
    a.write("spans", vec![spans_at(&[H22 + 4 * MINUTE])])
        .await
        .unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 4);
    assert_eq!(a.compact(H22 + 3 * HOUR).await.compactions.len(), 1);
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 4);

    a.register_as(&ctx, |table| format!("archive_{table}"))
        .await
        .unwrap();
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) FROM archive_spans WHERE date = '2023-11-14'"
        )
        .await,
        4
    );
}

#[tokio::test]
async fn what_is_written_reads_back_identical_from_a_folder() {
    let (_dir, storage) = local();
    round_trip(storage).await;
}

#[tokio::test]
async fn what_is_written_reads_back_identical_from_an_object_store() {
    round_trip(Storage::open("memory:///bucket/prefix").unwrap()).await;
}

#[tokio::test]
async fn compaction_merges_this_nodes_files_and_leaves_other_nodes_alone() {
    let storage = Storage::in_memory();
    // "a" is a prefix of "a-b": names must still tell the two apart.
    let a = archive(&storage, "a");
    let b = archive(&storage, "a-b");
    for ts in [
        &[H22 + 30 * MINUTE, H22 + 10 * MINUTE][..],
        &[H22 + 5 * MINUTE],
        &[H22 + 50 * MINUTE, H22 + MINUTE],
    ] {
        a.write("spans", vec![spans_at(ts)]).await.unwrap();
    }
    a.write("spans", vec![spans_at(&[H22 + HOUR + MINUTE])])
        .await
        .unwrap();
    b.write("spans", vec![spans_at(&[H22 + 2 * MINUTE])])
        .await
        .unwrap();
    b.write("spans", vec![spans_at(&[H22 + 3 * MINUTE])])
        .await
        .unwrap();
    let hour22 = "archive/spans/date=2023-11-14/hour=22";
    let before = files(&storage, hour22).await;
    assert_eq!(before.len(), 5);

    // The hour ended 30 minutes ago: not yet.
    let early = a.compact(H22 + HOUR + 30 * MINUTE).await;
    assert!(
        early.compactions.is_empty() && early.failures.is_empty(),
        "{early:?}"
    );
    assert_eq!(files(&storage, hour22).await, before);

    let report = a.compact(H22 + 3 * HOUR).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.compactions.len(),
        1,
        "hour 23 has one file: nothing to merge"
    );
    let c = &report.compactions[0];
    assert_eq!((c.table, c.partition.as_str()), ("spans", hour22));
    assert_eq!((c.inputs, c.rows, c.repaired), (3, 5, 0));

    let after = files(&storage, hour22).await;
    let theirs: Vec<&String> = before.iter().filter(|f| f.contains("/a-b-")).collect();
    let mine: Vec<&String> = after.iter().filter(|f| !f.contains("/a-b-")).collect();
    assert_eq!(
        after
            .iter()
            .filter(|f| f.contains("/a-b-"))
            .collect::<Vec<_>>(),
        theirs
    );
    assert_eq!(mine, [&c.merged[0]]);
    assert!(mine[0].contains("/a-0060000000000_m"), "{}", mine[0]);
    let merged = read(&storage, mine[0]).await;
    assert_eq!(
        times(&merged),
        [1, 5, 10, 30, 50].map(|m| H22 + m * MINUTE),
        "all rows, sorted by time"
    );
    assert_eq!(
        files(&storage, "archive/spans/date=2023-11-14/hour=23")
            .await
            .len(),
        1
    );

    // Done is done: the next pass finds nothing, even for the other node.
    assert!(a.compact(H22 + 4 * HOUR).await.compactions.is_empty());
    let theirs = b.compact(H22 + 4 * HOUR).await;
    assert_eq!(theirs.compactions[0].inputs, 2);
    assert_eq!(files(&storage, hour22).await.len(), 2);
}

#[tokio::test]
async fn a_crash_between_merge_and_delete_is_repaired_without_duplicates() {
    let (_dir, storage) = local();
    let a = archive(&storage, "a");
    for t in [H22 + MINUTE, H22 + 2 * MINUTE, H22 + 3 * MINUTE] {
        a.write("spans", vec![spans_at(&[t, t + 1])]).await.unwrap();
    }
    let hour22 = "archive/spans/date=2023-11-14/hour=22";
    let mut inputs = Vec::new();
    for file in files(&storage, hour22).await {
        let path = storage.path(&[&file]);
        inputs.push((path.clone(), storage.get(&path).await.unwrap()));
    }
    let late = H22 + 3 * HOUR;
    let merged = a.compact(late).await.compactions.remove(0).merged;
    // The crash: the merged file was written, its inputs not yet deleted.
    for (path, bytes) in &inputs {
        storage.create(path, bytes.clone()).await.unwrap();
    }
    let ctx = SessionContext::new();
    a.register(&ctx).await.unwrap();
    assert_eq!(
        count(&ctx, "SELECT count(*) FROM spans").await,
        12,
        "rows twice until repaired"
    );

    // The restarted node repairs it first thing.
    let restarted = archive(&storage, "a");
    let report = restarted.compact(late).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let c = &report.compactions[0];
    assert_eq!((c.repaired, c.inputs), (3, 0));
    assert_eq!(files(&storage, hour22).await, merged);
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 6);
    assert_eq!(
        count(
            &ctx,
            "SELECT count(*) FROM (SELECT DISTINCT span_id, start_time FROM spans)"
        )
        .await,
        6
    );
}

#[tokio::test]
async fn expiry_deletes_only_partitions_past_retention_per_table() {
    let storage = Storage::in_memory();
    let config = ArchiveConfig {
        retention: Duration::from_secs(2 * 24 * 3600),
        tables: BTreeMap::from([(
            "logs".to_owned(),
            TableRetention {
                retention: Duration::from_secs(24 * 3600),
            },
        )]),
        ..ArchiveConfig::default()
    };
    let a = Archive::new(storage.clone(), "a", config).unwrap();
    let b = archive(&storage, "b");
    let now = H22 + HOUR;
    for t in [H22 - 72 * HOUR, H22 - 48 * HOUR, H22 - 47 * HOUR, H22] {
        a.write("spans", vec![spans_at(&[t + MINUTE])])
            .await
            .unwrap();
    }
    b.write("spans", vec![spans_at(&[H22 - 72 * HOUR + 2 * MINUTE])])
        .await
        .unwrap();
    for t in [H22 - 36 * HOUR, H22] {
        a.write("logs", vec![logs_at(&[t + MINUTE])]).await.unwrap();
    }

    let mut expired = a.expire(now).await.unwrap();
    expired.sort_by(|x, y| x.partition.cmp(&y.partition));
    let summary: Vec<(&str, &str, usize)> = expired
        .iter()
        .map(|p| (p.table, p.partition.as_str(), p.files))
        .collect();
    assert_eq!(
        summary,
        [
            ("logs", "archive/logs/date=2023-11-13/hour=10", 1),
            // Every node's files go with the partition.
            ("spans", "archive/spans/date=2023-11-11/hour=22", 2),
            // This hour ended exactly two days before `now`.
            ("spans", "archive/spans/date=2023-11-12/hour=22", 1),
        ]
    );
    assert!(expired.iter().all(|p| p.bytes > 0));
    let left: Vec<String> = files(&storage, "archive")
        .await
        .into_iter()
        .map(|f| f.rsplit_once('/').unwrap().0.to_owned())
        .collect();
    assert_eq!(
        left,
        [
            "archive/logs/date=2023-11-14/hour=22",
            "archive/spans/date=2023-11-12/hour=23",
            "archive/spans/date=2023-11-14/hour=22",
        ]
    );
    assert!(a.expire(now).await.unwrap().is_empty());
}

#[tokio::test]
async fn two_archives_with_one_node_id_never_overwrite_each_other() {
    let (_dir, storage) = local();
    let first = archive(&storage, "n");
    let second = archive(&storage, "n");
    let mut written = Vec::new();
    for _ in 0..5 {
        for a in [&first, &second] {
            let report = a
                .write("spans", vec![spans_at(&[H22 + MINUTE])])
                .await
                .unwrap();
            written.extend(report.files);
        }
    }
    let stored = files(&storage, "archive").await;
    assert_eq!(stored.len(), 10);
    written.sort();
    assert_eq!(stored, written);
    let ctx = SessionContext::new();
    first.register(&ctx).await.unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 10);
}

#[test]
fn bad_config_is_rejected_naming_the_key() {
    let parse = |text: &str| toml::from_str::<ArchiveConfig>(text);
    assert_eq!(parse("").unwrap(), ArchiveConfig::default());
    let config = parse("retention = \"30 days\"\n[tables.logs]\nretention = \"7 days\"\n").unwrap();
    config.validate().unwrap();
    assert_eq!(config.retention("logs"), Duration::from_secs(7 * 86_400));
    assert_eq!(config.retention("spans"), Duration::from_secs(30 * 86_400));

    let err = parse("[tables.span]\nretention = \"1d\"\n")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid setting archive.tables.span: unknown table"),
        "{err}"
    );
    let err = parse("[tables.logs]\nretention = \"0s\"\n")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid setting archive.tables.logs.retention"),
        "{err}"
    );
    let err = parse("retension = \"1d\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `retension`"), "{err}");
    let err = parse("compact_after = \"soon\"\n").unwrap_err().to_string();
    assert!(err.contains("invalid duration \"soon\""), "{err}");

    let bad = ArchiveConfig {
        retention: Duration::ZERO,
        ..ArchiveConfig::default()
    };
    let err = Archive::new(Storage::in_memory(), "n", bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid setting archive.retention"),
        "{err}"
    );
    let err = Archive::new(Storage::in_memory(), "a/b", ArchiveConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid archive node id \"a/b\""), "{err}");
}

#[test]
fn hours_and_names_read_back() {
    assert_eq!(
        Hour::of(H22 + 59 * MINUTE).folders(),
        ("date=2023-11-14".to_owned(), "hour=22".to_owned())
    );
    assert_eq!(
        Hour::of(-1).folders(),
        ("date=1969-12-31".to_owned(), "hour=23".to_owned())
    );
    // Every day nanosecond timestamps reach: 1677-09-22 to 2262-04-10.
    for day in (i64::MIN / DAY + 1..i64::MAX / DAY).step_by(7) {
        let (y, m, d) = civil_from_days(day);
        assert_eq!(days_from_civil(y, m, d), day);
        let hour = Hour(day * 24 + 13);
        let (date, h) = hour.folders();
        assert_eq!(Hour::parse(&date, &h), Some(hour), "{date}/{h}");
    }
    assert!(parse_date("date=2024-02-29").is_some());
    for bad in [
        "date=2023-02-29",
        "date=2023-1-05",
        "date=2023-13-01",
        "2023-11-14",
        "date=9999-01-01",
    ] {
        assert_eq!(parse_date(bad), None, "{bad}");
    }
    assert_eq!(Hour::parse("date=2023-11-14", "hour=24"), None);
    assert_eq!(Hour::parse("date=2023-11-14", "hour=7"), None);

    let name = FileName::parse("a-b-0000000000001_w00ff_4.parquet").unwrap();
    assert_eq!((name.node, name.merged), ("a-b", false));
    let name = FileName::parse("n-0000000000001_m0123abcd.parquet").unwrap();
    assert_eq!((name.node, name.merged), ("n", true));
    for bad in [
        "x.parquet",
        "n-12_x.parquet",
        "n-0001_w1.csv",
        "-0001_w1.parquet",
    ] {
        assert!(FileName::parse(bad).is_none(), "{bad}");
    }
}

fn store(budget: u64) -> Arc<Store> {
    Arc::new(Store::new(crate::store::StoreOptions {
        memory_budget: budget,
        retention: Duration::from_secs(3600),
        partition: Duration::from_secs(60),
        max_age: Duration::MAX,
        max_future: Duration::MAX,
        flush_bytes: u64::MAX,
    }))
}

/// The live tables of `store` (memory, and the archive below what memory
/// holds whole), as the query API sees them.
fn live(store: &Store) -> SessionContext {
    let ctx = SessionContext::new();
    for table in store.tables() {
        ctx.register_table(table.name(), Arc::new(StoreTable::new(table.clone())))
            .unwrap();
    }
    ctx
}

/// A store whose scans read `archive`, the flusher between them, and the
/// log folder under `dir`.
fn flushing(
    storage: &Storage,
    wal: &std::path::Path,
    budget: u64,
) -> (Arc<Store>, Arc<Archive>, Flusher, Arc<Metrics>) {
    let store = store(budget);
    let a = Arc::new(archive(storage, "n"));
    store.set_cold(a.clone());
    let dir = Arc::new(crate::store::wal::Dir::open(wal).unwrap());
    let metrics = Arc::new(Metrics::new());
    let flusher = Flusher::new(a.clone(), store.clone(), Some(dir), metrics.clone()).unwrap();
    (store, a, flusher, metrics)
}

#[tokio::test]
async fn flushed_rows_leave_memory_and_every_row_is_read_once() {
    let (tmp, storage) = local();
    let wal = tempfile::tempdir().unwrap();
    let one = spans_at(&[H22]).get_array_memory_size() as u64;
    let (store, _a, flusher, metrics) = flushing(&storage, wal.path(), 3 * one);
    // A minute each, all in one hour.
    for m in 0..3 {
        store
            .insert(Signal::Traces, spans_at(&[H22 + m * MINUTE]), 0)
            .unwrap();
    }
    let ctx = live(&store);
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 3);
    let report = flusher.flush().await.unwrap().unwrap();
    assert_eq!((report.rows, report.files.len()), (3, 1));
    assert!(report.files[0].name.contains("_f"), "{report:?}");
    // Archived, still in memory: read once.
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 3);
    // The budget is full: new minutes push the oldest out of memory, which
    // are then read from the archive.
    for m in 3..6 {
        store
            .insert(Signal::Traces, spans_at(&[H22 + m * MINUTE]), 0)
            .unwrap();
    }
    assert_eq!(store.table(Signal::Traces).usage().1, 3);
    assert_eq!(store.table(Signal::Traces).evicted_rows(), 3);
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 6);
    // A late row for an evicted minute: from memory until flushed, then
    // from the archive.
    flusher.flush().await.unwrap().unwrap();
    store
        .insert(Signal::Traces, spans_at(&[H22 + MINUTE + 1]), 0)
        .unwrap();
    assert_eq!(
        store.table(Signal::Traces).complete_from(),
        H22 + 4 * MINUTE
    );
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 7);
    flusher.flush().await.unwrap().unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 7);
    assert_eq!(
        count(
            &ctx,
            &format!(
                "SELECT count(*) FROM spans WHERE start_time < to_timestamp_nanos({})",
                H22 + 2 * MINUTE
            )
        )
        .await,
        3
    );
    // The archive alone holds every row once too.
    let offline = SessionContext::new();
    archive(&storage, "query").register(&offline).await.unwrap();
    assert_eq!(count(&offline, "SELECT count(*) FROM spans").await, 7);
    let text = metrics.render(&store);
    assert!(
        text.contains("homeostat_archive_written_rows_total{table=\"spans\"} 7"),
        "{text}"
    );
    drop(tmp);
}

#[tokio::test]
async fn a_failed_flush_keeps_its_rows_and_leaves_no_file_behind() {
    let (tmp, storage) = local();
    let wal = tempfile::tempdir().unwrap();
    let (store, _a, flusher, metrics) = flushing(&storage, wal.path(), u64::MAX);
    store
        .insert(Signal::Traces, spans_at(&[H22, H22 + 1]), 0)
        .unwrap();
    store.insert(Signal::Logs, logs_at(&[H22]), 0).unwrap();
    // The spans file is written, then the logs folder is in the way.
    std::fs::create_dir_all(tmp.path().join(PREFIX)).unwrap();
    std::fs::write(tmp.path().join(PREFIX).join("logs"), b"in the way").unwrap();
    let e = flusher.flush().await.unwrap_err();
    assert!(e.retryable(), "{e}");
    assert_eq!(files(&storage, "archive/spans").await.len(), 1);
    // Not committed: scans do not read it, memory still does.
    let ctx = live(&store);
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 2);
    assert!(store.unflushed_bytes() > 0);
    std::fs::remove_file(tmp.path().join(PREFIX).join("logs")).unwrap();
    let report = flusher.flush().await.unwrap().unwrap();
    assert_eq!(report.rows, 3);
    // The failed flush's file went before the new one committed.
    assert_eq!(files(&storage, "archive/spans").await.len(), 1);
    let offline = SessionContext::new();
    archive(&storage, "query").register(&offline).await.unwrap();
    assert_eq!(count(&offline, "SELECT count(*) FROM spans").await, 2);
    assert_eq!(count(&offline, "SELECT count(*) FROM logs").await, 1);
    let text = metrics.render(&store);
    assert!(
        text.contains("homeostat_archive_flush_failures_total{kind=\"external\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn a_crash_mid_flush_is_undone_at_the_next_start() {
    let (tmp, storage) = local();
    let wal = tempfile::tempdir().unwrap();
    {
        let (store, _a, flusher, _) = flushing(&storage, wal.path(), u64::MAX);
        store.insert(Signal::Traces, spans_at(&[H22]), 0).unwrap();
        store.insert(Signal::Logs, logs_at(&[H22]), 0).unwrap();
        std::fs::create_dir_all(tmp.path().join(PREFIX)).unwrap();
        std::fs::write(tmp.path().join(PREFIX).join("logs"), b"in the way").unwrap();
        flusher.flush().await.unwrap_err();
        // The process dies here: its intent and the spans file remain.
    }
    std::fs::remove_file(tmp.path().join(PREFIX).join("logs")).unwrap();
    assert_eq!(files(&storage, "archive/spans").await.len(), 1);
    let (store, _a, flusher, _) = flushing(&storage, wal.path(), u64::MAX);
    // Before anything is collected, the uncommitted file is not read.
    let ctx = live(&store);
    store.set_complete_from(Signal::Traces, H22 + MINUTE);
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 0);
    // The first flush deletes it.
    assert_eq!(flusher.flush().await.unwrap(), None);
    assert!(files(&storage, "archive/spans").await.is_empty());
}

#[tokio::test]
async fn the_final_flush_archives_what_memory_held() {
    let storage = Storage::in_memory();
    let store = store(u64::MAX);
    let a = Arc::new(archive(&storage, "n"));
    store.set_cold(a.clone());
    let metrics = Arc::new(Metrics::new());
    let flusher = Flusher::new(a.clone(), store.clone(), None, metrics.clone()).unwrap();
    let now = now_nanos();
    store
        .insert(Signal::Traces, spans_at(&[H22, H22 + 1]), 0)
        .unwrap();
    store.insert(Signal::Traces, spans_at(&[now]), now).unwrap();
    store.insert(Signal::Logs, logs_at(&[now]), now).unwrap();
    assert!(flusher.final_flush(3).await);
    assert_eq!(store.unflushed_bytes(), 0);
    let ctx = SessionContext::new();
    a.register(&ctx).await.unwrap();
    assert_eq!(count(&ctx, "SELECT count(*) FROM spans").await, 3);
    assert_eq!(count(&ctx, "SELECT count(*) FROM logs").await, 1);
}
