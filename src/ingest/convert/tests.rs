//! Field-by-field tests of the converters.

use arrow::array::RecordBatch;
use arrow::util::display::array_value_to_string;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    self as m, Metric, ResourceMetrics, ScopeMetrics, metric::Data,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};

use super::{logs, metrics, spans};

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

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![
            kv("service.name", s("cart")),
            kv("host.cpus", any_value::Value::IntValue(4)),
        ],
        ..Default::default()
    })
}

fn scope() -> Option<InstrumentationScope> {
    Some(InstrumentationScope {
        name: "io.opentelemetry.http".into(),
        version: "2.0".into(),
        ..Default::default()
    })
}

/// The display text of `column` at `row`.
fn cell(batch: &RecordBatch, column: &str, row: usize) -> String {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    if array.is_null(row) {
        return "NULL".into();
    }
    array_value_to_string(array, row).unwrap()
}

#[test]
fn spans_are_converted_field_by_field() {
    let t0 = 1_700_000_000_000_000_000u64;
    let span = Span {
        trace_id: (1..=16).collect(),
        span_id: (1..=8).collect(),
        parent_span_id: vec![0xaa; 8],
        trace_state: "vendor=1".into(),
        flags: 0x101,
        name: "POST /checkout".into(),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: t0,
        end_time_unix_nano: t0 + 1_500,
        attributes: vec![
            kv("http.route", s("/checkout")),
            kv("http.status_code", any_value::Value::IntValue(502)),
        ],
        dropped_attributes_count: 1,
        events: vec![
            span::Event {
                time_unix_nano: t0 + 10,
                name: "exception".into(),
                attributes: vec![kv("exception.type", s("Timeout"))],
                ..Default::default()
            },
            span::Event {
                time_unix_nano: t0 + 20,
                name: "retry".into(),
                ..Default::default()
            },
        ],
        dropped_events_count: 2,
        links: vec![span::Link {
            trace_id: vec![0xbb; 16],
            span_id: vec![0xcc; 8],
            trace_state: "".into(),
            attributes: vec![kv("link.kind", s("follows"))],
            flags: 1,
            ..Default::default()
        }],
        dropped_links_count: 3,
        status: Some(Status {
            message: "bad gateway".into(),
            code: 2,
        }),
    };
    let plain = Span {
        trace_id: vec![2; 16],
        span_id: vec![3; 8],
        name: "internal".into(),
        start_time_unix_nano: t0,
        end_time_unix_nano: t0,
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: resource(),
            scope_spans: vec![ScopeSpans {
                scope: scope(),
                spans: vec![span, plain],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let converted = spans::convert(&request).unwrap();
    let b = &converted.batch;
    assert_eq!(converted.rejected.count, 0);
    assert_eq!(b.num_rows(), 2);
    assert_eq!(b.schema(), spans::schema());
    let expect = [
        (spans::START_TIME, "2023-11-14T22:13:20Z"),
        (spans::END_TIME, "2023-11-14T22:13:20.000001500Z"),
        (spans::DURATION_NS, "1500"),
        (spans::TRACE_ID, "0102030405060708090a0b0c0d0e0f10"),
        (spans::SPAN_ID, "0102030405060708"),
        (spans::PARENT_SPAN_ID, "aaaaaaaaaaaaaaaa"),
        (spans::TRACE_STATE, "vendor=1"),
        (spans::FLAGS, "257"),
        (spans::SERVICE_NAME, "cart"),
        (spans::SPAN_NAME, "POST /checkout"),
        (spans::SPAN_KIND, "CLIENT"),
        (spans::STATUS_CODE, "ERROR"),
        (spans::STATUS_MESSAGE, "bad gateway"),
        (
            spans::ATTRIBUTES,
            "{http.route: /checkout, http.status_code: 502}",
        ),
        (
            spans::RESOURCE_ATTRIBUTES,
            "{service.name: cart, host.cpus: 4}",
        ),
        (spans::SCOPE_NAME, "io.opentelemetry.http"),
        (spans::SCOPE_VERSION, "2.0"),
        (
            spans::EVENTS,
            "[{time: 2023-11-14T22:13:20.000000010Z, name: exception, attributes: {exception.type: Timeout}}, \
             {time: 2023-11-14T22:13:20.000000020Z, name: retry, attributes: {}}]",
        ),
        (
            spans::LINKS,
            "[{trace_id: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb, span_id: cccccccccccccccc, trace_state: , flags: 1, attributes: {link.kind: follows}}]",
        ),
        (spans::DROPPED_ATTRIBUTES_COUNT, "1"),
        (spans::DROPPED_EVENTS_COUNT, "2"),
        (spans::DROPPED_LINKS_COUNT, "3"),
    ];
    for (column, value) in expect {
        assert_eq!(cell(b, column, 0), value, "column {column}");
    }
    assert_eq!(expect.len(), b.num_columns(), "every column is checked");
    // Absent optional fields are nulls or empty, never invented values.
    assert_eq!(cell(b, spans::PARENT_SPAN_ID, 1), "NULL");
    assert_eq!(cell(b, spans::STATUS_CODE, 1), "UNSET");
    assert_eq!(cell(b, spans::STATUS_MESSAGE, 1), "NULL");
    assert_eq!(cell(b, spans::SPAN_KIND, 1), "UNSPECIFIED");
    assert_eq!(cell(b, spans::EVENTS, 1), "[]");
    assert_eq!(cell(b, spans::ATTRIBUTES, 1), "{}");
}

#[test]
fn spans_with_bad_ids_or_times_are_rejected_alone() {
    let good = Span {
        trace_id: vec![1; 16],
        span_id: vec![1; 8],
        name: "good".into(),
        ..Default::default()
    };
    let short_trace = Span {
        trace_id: vec![1; 15],
        ..good.clone()
    };
    let no_span_id = Span {
        span_id: vec![],
        ..good.clone()
    };
    let far_future = Span {
        end_time_unix_nano: u64::MAX,
        ..good.clone()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![short_trace, good, no_span_id, far_future],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let converted = spans::convert(&request).unwrap();
    assert_eq!(converted.batch.num_rows(), 1);
    assert_eq!(cell(&converted.batch, spans::SPAN_NAME, 0), "good");
    assert_eq!(cell(&converted.batch, spans::SERVICE_NAME, 0), "NULL");
    assert_eq!(converted.rejected.count, 3);
    assert_eq!(
        converted.rejected.message(),
        "trace_id must be 16 bytes, got 15 (and 2 more rejected)"
    );
}

fn metric(name: &str, data: Data) -> Metric {
    Metric {
        name: name.into(),
        description: format!("{name} description"),
        unit: "ms".into(),
        data: Some(data),
        ..Default::default()
    }
}

fn metrics_request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: resource(),
            scope_metrics: vec![ScopeMetrics {
                scope: scope(),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn every_metric_type_becomes_one_row_per_point() {
    let t = 1_700_000_000_000_000_000u64;
    let exemplar = m::Exemplar {
        filtered_attributes: vec![kv("user", s("u1"))],
        time_unix_nano: t,
        value: Some(m::exemplar::Value::AsDouble(7.5)),
        span_id: vec![4; 8],
        trace_id: vec![5; 16],
    };
    let request = metrics_request(vec![
        metric(
            "g",
            Data::Gauge(m::Gauge {
                data_points: vec![m::NumberDataPoint {
                    attributes: vec![kv("cpu", s("0"))],
                    time_unix_nano: t,
                    value: Some(m::number_data_point::Value::AsDouble(0.75)),
                    ..Default::default()
                }],
            }),
        ),
        metric(
            "c",
            Data::Sum(m::Sum {
                data_points: vec![m::NumberDataPoint {
                    start_time_unix_nano: t - 1_000,
                    time_unix_nano: t,
                    value: Some(m::number_data_point::Value::AsInt(12)),
                    exemplars: vec![exemplar],
                    flags: 1,
                    ..Default::default()
                }],
                aggregation_temporality: m::AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
        ),
        metric(
            "h",
            Data::Histogram(m::Histogram {
                data_points: vec![m::HistogramDataPoint {
                    time_unix_nano: t,
                    count: 6,
                    sum: Some(60.0),
                    bucket_counts: vec![1, 2, 3],
                    explicit_bounds: vec![5.0, 10.0],
                    min: Some(1.0),
                    max: Some(20.0),
                    ..Default::default()
                }],
                aggregation_temporality: m::AggregationTemporality::Delta as i32,
            }),
        ),
        metric(
            "e",
            Data::ExponentialHistogram(m::ExponentialHistogram {
                data_points: vec![m::ExponentialHistogramDataPoint {
                    time_unix_nano: t,
                    count: 5,
                    sum: Some(10.0),
                    scale: 3,
                    zero_count: 1,
                    positive: Some(m::exponential_histogram_data_point::Buckets {
                        offset: -2,
                        bucket_counts: vec![1, 3],
                    }),
                    negative: None,
                    zero_threshold: 0.001,
                    ..Default::default()
                }],
                aggregation_temporality: m::AggregationTemporality::Cumulative as i32,
            }),
        ),
        metric(
            "s",
            Data::Summary(m::Summary {
                data_points: vec![m::SummaryDataPoint {
                    time_unix_nano: t,
                    count: 4,
                    sum: 8.0,
                    quantile_values: vec![
                        m::summary_data_point::ValueAtQuantile {
                            quantile: 0.5,
                            value: 1.5,
                        },
                        m::summary_data_point::ValueAtQuantile {
                            quantile: 0.99,
                            value: 3.0,
                        },
                    ],
                    ..Default::default()
                }],
            }),
        ),
    ]);
    let converted = metrics::convert(&request).unwrap();
    let b = &converted.batch;
    assert_eq!(b.schema(), metrics::schema());
    assert_eq!(b.num_rows(), 5);
    assert_eq!(converted.rejected.count, 0);

    let row = |r: usize, expect: &[(&str, &str)]| {
        for (column, value) in expect {
            assert_eq!(&cell(b, column, r), value, "row {r} column {column}");
        }
    };
    // Columns every row has.
    for r in 0..5 {
        row(
            r,
            &[
                (metrics::TIME, "2023-11-14T22:13:20Z"),
                (metrics::SERVICE_NAME, "cart"),
                (metrics::UNIT, "ms"),
                (
                    metrics::RESOURCE_ATTRIBUTES,
                    "{service.name: cart, host.cpus: 4}",
                ),
                (metrics::SCOPE_NAME, "io.opentelemetry.http"),
                (metrics::SCOPE_VERSION, "2.0"),
            ],
        );
    }
    row(
        0,
        &[
            (metrics::METRIC_NAME, "g"),
            (metrics::METRIC_DESCRIPTION, "g description"),
            (metrics::METRIC_TYPE, "gauge"),
            (metrics::VALUE, "0.75"),
            (metrics::IS_MONOTONIC, "NULL"),
            (metrics::TEMPORALITY, "NULL"),
            (metrics::START_TIME, "NULL"),
            (metrics::COUNT, "NULL"),
            (metrics::BUCKET_COUNTS, "NULL"),
            (metrics::ATTRIBUTES, "{cpu: 0}"),
            (metrics::EXEMPLARS, "[]"),
        ],
    );
    row(
        1,
        &[
            (metrics::METRIC_TYPE, "sum"),
            (metrics::VALUE, "12.0"),
            (metrics::IS_MONOTONIC, "true"),
            (metrics::TEMPORALITY, "cumulative"),
            (metrics::START_TIME, "2023-11-14T22:13:19.999999Z"),
            (metrics::FLAGS, "1"),
            (
                metrics::EXEMPLARS,
                "[{time: 2023-11-14T22:13:20Z, value: 7.5, trace_id: 05050505050505050505050505050505, \
             span_id: 0404040404040404, filtered_attributes: {user: u1}}]",
            ),
        ],
    );
    row(
        2,
        &[
            (metrics::METRIC_TYPE, "histogram"),
            (metrics::TEMPORALITY, "delta"),
            (metrics::VALUE, "NULL"),
            (metrics::COUNT, "6"),
            (metrics::SUM, "60.0"),
            (metrics::MIN, "1.0"),
            (metrics::MAX, "20.0"),
            (metrics::BUCKET_COUNTS, "[1, 2, 3]"),
            (metrics::EXPLICIT_BOUNDS, "[5.0, 10.0]"),
            (metrics::SCALE, "NULL"),
        ],
    );
    row(
        3,
        &[
            (metrics::METRIC_TYPE, "exponential_histogram"),
            (metrics::COUNT, "5"),
            (metrics::SUM, "10.0"),
            (metrics::SCALE, "3"),
            (metrics::ZERO_COUNT, "1"),
            (metrics::ZERO_THRESHOLD, "0.001"),
            (metrics::POSITIVE_OFFSET, "-2"),
            (metrics::POSITIVE_BUCKET_COUNTS, "[1, 3]"),
            (metrics::NEGATIVE_OFFSET, "0"),
            (metrics::NEGATIVE_BUCKET_COUNTS, "[]"),
            (metrics::BUCKET_COUNTS, "NULL"),
        ],
    );
    row(
        4,
        &[
            (metrics::METRIC_TYPE, "summary"),
            (metrics::COUNT, "4"),
            (metrics::SUM, "8.0"),
            (
                metrics::QUANTILES,
                "[{quantile: 0.5, value: 1.5}, {quantile: 0.99, value: 3.0}]",
            ),
            (metrics::TEMPORALITY, "NULL"),
        ],
    );
}

#[test]
fn a_metric_without_data_is_rejected_alone() {
    let mut empty = metric(
        "empty",
        Data::Gauge(m::Gauge {
            data_points: vec![],
        }),
    );
    empty.data = None;
    let ok = metric(
        "ok",
        Data::Gauge(m::Gauge {
            data_points: vec![m::NumberDataPoint {
                time_unix_nano: 1,
                ..Default::default()
            }],
        }),
    );
    let converted = metrics::convert(&metrics_request(vec![empty, ok])).unwrap();
    assert_eq!(converted.batch.num_rows(), 1);
    assert_eq!(cell(&converted.batch, metrics::VALUE, 0), "NULL");
    assert_eq!(converted.rejected.count, 1);
    assert_eq!(converted.rejected.message(), "metric \"empty\" has no data");
}

#[test]
fn log_records_are_converted_field_by_field() {
    let t = 1_700_000_000_000_000_000u64;
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: resource(),
            scope_logs: vec![ScopeLogs {
                scope: scope(),
                log_records: vec![
                    LogRecord {
                        time_unix_nano: t,
                        observed_time_unix_nano: t + 5,
                        severity_number: 17,
                        severity_text: "ERROR".into(),
                        body: Some(AnyValue {
                            value: Some(s("container OOMKilled")),
                        }),
                        attributes: vec![kv("k8s.pod.name", s("cart-1"))],
                        dropped_attributes_count: 2,
                        flags: 1,
                        trace_id: vec![6; 16],
                        span_id: vec![7; 8],
                        event_name: "k8s.oom".into(),
                    },
                    LogRecord {
                        observed_time_unix_nano: t + 9,
                        body: Some(AnyValue {
                            value: Some(any_value::Value::DoubleValue(2.5)),
                        }),
                        ..Default::default()
                    },
                    LogRecord::default(),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let converted = logs::convert(&request).unwrap();
    let b = &converted.batch;
    assert_eq!(b.schema(), logs::schema());
    assert_eq!(b.num_rows(), 2);
    assert_eq!(converted.rejected.count, 1, "a record with no time at all");
    let expect = [
        (logs::TIME, "2023-11-14T22:13:20Z"),
        (logs::OBSERVED_TIME, "2023-11-14T22:13:20.000000005Z"),
        (logs::SEVERITY_NUMBER, "17"),
        (logs::SEVERITY_TEXT, "ERROR"),
        (logs::BODY, "container OOMKilled"),
        (logs::TRACE_ID, "06060606060606060606060606060606"),
        (logs::SPAN_ID, "0707070707070707"),
        (logs::FLAGS, "1"),
        (logs::EVENT_NAME, "k8s.oom"),
        (logs::SERVICE_NAME, "cart"),
        (logs::ATTRIBUTES, "{k8s.pod.name: cart-1}"),
        (
            logs::RESOURCE_ATTRIBUTES,
            "{service.name: cart, host.cpus: 4}",
        ),
        (logs::SCOPE_NAME, "io.opentelemetry.http"),
        (logs::SCOPE_VERSION, "2.0"),
        (logs::DROPPED_ATTRIBUTES_COUNT, "2"),
    ];
    for (column, value) in expect {
        assert_eq!(cell(b, column, 0), value, "column {column}");
    }
    assert_eq!(expect.len(), b.num_columns(), "every column is checked");
    assert_eq!(cell(b, logs::TIME, 1), "2023-11-14T22:13:20.000000009Z");
    assert_eq!(cell(b, logs::BODY, 1), "2.5");
    assert_eq!(cell(b, logs::TRACE_ID, 1), "NULL");
    assert_eq!(cell(b, logs::SEVERITY_TEXT, 1), "NULL");
}
