//! `ExportMetricsServiceRequest` → the `metrics` table: one row per data
//! point, whatever the metric's type.
//!
//! Gauges and sums put their point in `value` (integers widened to f64);
//! histograms fill `count`, `sum`, `min`, `max`, `bucket_counts` and
//! `explicit_bounds`; exponential histograms the `scale`, `zero_*`,
//! `positive_*` and `negative_*` columns; summaries `count`, `sum` and
//! `quantiles`. Columns that do not apply to a point's type are null.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int32Builder, ListBuilder, RecordBatch,
    StringBuilder, TimestampNanosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Exemplar, NumberDataPoint, exemplar,
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile,
};

use super::Converted;
use super::common::{
    AttributesBuilder, Rejections, append_hex_id, attributes_type, check_id, finish_batch,
    list_of_structs, list_of_structs_type, nanos, non_empty, resource_attributes,
    scope_name_version, service_name, timestamp_builder, timestamp_type,
};

pub const TIME: &str = "time";
pub const START_TIME: &str = "start_time";
pub const SERVICE_NAME: &str = "service_name";
pub const METRIC_NAME: &str = "metric_name";
pub const METRIC_DESCRIPTION: &str = "metric_description";
pub const UNIT: &str = "unit";
pub const METRIC_TYPE: &str = "metric_type";
pub const IS_MONOTONIC: &str = "is_monotonic";
pub const TEMPORALITY: &str = "temporality";
pub const VALUE: &str = "value";
pub const COUNT: &str = "count";
pub const SUM: &str = "sum";
pub const MIN: &str = "min";
pub const MAX: &str = "max";
pub const BUCKET_COUNTS: &str = "bucket_counts";
pub const EXPLICIT_BOUNDS: &str = "explicit_bounds";
pub const SCALE: &str = "scale";
pub const ZERO_COUNT: &str = "zero_count";
pub const ZERO_THRESHOLD: &str = "zero_threshold";
pub const POSITIVE_OFFSET: &str = "positive_offset";
pub const POSITIVE_BUCKET_COUNTS: &str = "positive_bucket_counts";
pub const NEGATIVE_OFFSET: &str = "negative_offset";
pub const NEGATIVE_BUCKET_COUNTS: &str = "negative_bucket_counts";
pub const QUANTILES: &str = "quantiles";
pub const EXEMPLARS: &str = "exemplars";
pub const FLAGS: &str = "flags";
pub const ATTRIBUTES: &str = "attributes";
pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
pub const SCOPE_NAME: &str = "scope_name";
pub const SCOPE_VERSION: &str = "scope_version";

/// Fields of each element of `quantiles`.
pub const QUANTILE: &str = "quantile";
/// Fields of each element of `exemplars` (besides `time`, `value`).
pub const TRACE_ID: &str = "trace_id";
pub const SPAN_ID: &str = "span_id";
pub const FILTERED_ATTRIBUTES: &str = "filtered_attributes";

/// Values of `metric_type`.
pub const GAUGE: &str = "gauge";
pub const SUM_TYPE: &str = "sum";
pub const HISTOGRAM: &str = "histogram";
pub const EXPONENTIAL_HISTOGRAM: &str = "exponential_histogram";
pub const SUMMARY: &str = "summary";

/// What each column holds: the source of docs/tables.md, kept in step with
/// the schema by a test.
pub const COLUMN_DOCS: &[(&str, &str)] = &[
    (
        TIME,
        "When the data point was recorded (UTC, nanoseconds). The table's time column.",
    ),
    (
        START_TIME,
        "Start of the point's aggregation interval (cumulative and delta points); null when not set.",
    ),
    (
        SERVICE_NAME,
        "The `service.name` resource attribute; null when the resource has none.",
    ),
    (METRIC_NAME, "The metric's name."),
    (
        METRIC_DESCRIPTION,
        "The metric's description; null when empty.",
    ),
    (UNIT, "The metric's unit (UCUM); null when empty."),
    (
        METRIC_TYPE,
        "`gauge`, `sum`, `histogram`, `exponential_histogram` or `summary`.",
    ),
    (
        IS_MONOTONIC,
        "For sums: whether the sum only goes up (a counter); null otherwise.",
    ),
    (
        TEMPORALITY,
        "`delta` or `cumulative` for sums and histograms; null otherwise.",
    ),
    (
        VALUE,
        "The value of a gauge or sum point (integers widened to double); null for other types.",
    ),
    (
        COUNT,
        "Number of observations of a histogram, exponential histogram or summary point.",
    ),
    (SUM, "Sum of the observations (histograms and summaries)."),
    (MIN, "Smallest observation, when the SDK reports it."),
    (MAX, "Largest observation, when the SDK reports it."),
    (
        BUCKET_COUNTS,
        "Histogram bucket counts, one more than `explicit_bounds`.",
    ),
    (EXPLICIT_BOUNDS, "Histogram bucket upper bounds."),
    (SCALE, "Exponential histogram scale."),
    (
        ZERO_COUNT,
        "Exponential histogram count of values in the zero bucket.",
    ),
    (ZERO_THRESHOLD, "Exponential histogram zero-bucket width."),
    (
        POSITIVE_OFFSET,
        "Exponential histogram index of the first positive bucket.",
    ),
    (
        POSITIVE_BUCKET_COUNTS,
        "Exponential histogram positive bucket counts.",
    ),
    (
        NEGATIVE_OFFSET,
        "Exponential histogram index of the first negative bucket.",
    ),
    (
        NEGATIVE_BUCKET_COUNTS,
        "Exponential histogram negative bucket counts.",
    ),
    (
        QUANTILES,
        "Summary quantiles: a list of `{quantile, value}`.",
    ),
    (
        EXEMPLARS,
        "Exemplars: a list of `{time, value, trace_id, span_id, filtered_attributes}`.",
    ),
    (FLAGS, "OTLP data point flags (1 = no recorded value)."),
    (
        ATTRIBUTES,
        "The data point's attributes (its series labels).",
    ),
    (
        RESOURCE_ATTRIBUTES,
        "Attributes of the resource that produced the point.",
    ),
    (SCOPE_NAME, "Instrumentation scope name; null when empty."),
    (
        SCOPE_VERSION,
        "Instrumentation scope version; null when empty.",
    ),
];

/// The column the store partitions and prunes by.
pub const TIME_COLUMN: &str = TIME;

fn quantile_fields() -> Fields {
    Fields::from(vec![
        Field::new(QUANTILE, DataType::Float64, false),
        Field::new(VALUE, DataType::Float64, false),
    ])
}

fn exemplar_fields() -> Fields {
    Fields::from(vec![
        Field::new(TIME, timestamp_type(), false),
        Field::new(VALUE, DataType::Float64, true),
        Field::new(TRACE_ID, DataType::Utf8, true),
        Field::new(SPAN_ID, DataType::Utf8, true),
        Field::new(FILTERED_ATTRIBUTES, attributes_type(), false),
    ])
}

fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// The schema of the `metrics` table.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(TIME, timestamp_type(), false),
            Field::new(START_TIME, timestamp_type(), true),
            Field::new(SERVICE_NAME, DataType::Utf8, true),
            Field::new(METRIC_NAME, DataType::Utf8, false),
            Field::new(METRIC_DESCRIPTION, DataType::Utf8, true),
            Field::new(UNIT, DataType::Utf8, true),
            Field::new(METRIC_TYPE, DataType::Utf8, false),
            Field::new(IS_MONOTONIC, DataType::Boolean, true),
            Field::new(TEMPORALITY, DataType::Utf8, true),
            Field::new(VALUE, DataType::Float64, true),
            Field::new(COUNT, DataType::UInt64, true),
            Field::new(SUM, DataType::Float64, true),
            Field::new(MIN, DataType::Float64, true),
            Field::new(MAX, DataType::Float64, true),
            Field::new(BUCKET_COUNTS, list_of(DataType::UInt64), true),
            Field::new(EXPLICIT_BOUNDS, list_of(DataType::Float64), true),
            Field::new(SCALE, DataType::Int32, true),
            Field::new(ZERO_COUNT, DataType::UInt64, true),
            Field::new(ZERO_THRESHOLD, DataType::Float64, true),
            Field::new(POSITIVE_OFFSET, DataType::Int32, true),
            Field::new(POSITIVE_BUCKET_COUNTS, list_of(DataType::UInt64), true),
            Field::new(NEGATIVE_OFFSET, DataType::Int32, true),
            Field::new(NEGATIVE_BUCKET_COUNTS, list_of(DataType::UInt64), true),
            Field::new(QUANTILES, list_of_structs_type(quantile_fields()), false),
            Field::new(EXEMPLARS, list_of_structs_type(exemplar_fields()), false),
            Field::new(FLAGS, DataType::UInt32, false),
            Field::new(ATTRIBUTES, attributes_type(), false),
            Field::new(RESOURCE_ATTRIBUTES, attributes_type(), false),
            Field::new(SCOPE_NAME, DataType::Utf8, true),
            Field::new(SCOPE_VERSION, DataType::Utf8, true),
        ]))
    });
    SCHEMA.clone()
}

/// `AGGREGATION_TEMPORALITY_DELTA` → `delta`.
pub fn temporality_name(t: i32) -> Option<&'static str> {
    match AggregationTemporality::try_from(t) {
        Ok(AggregationTemporality::Delta) => Some("delta"),
        Ok(AggregationTemporality::Cumulative) => Some("cumulative"),
        _ => None,
    }
}

/// The metric-level facts every point of one metric shares.
struct MetricInfo<'a> {
    service: Option<&'a str>,
    name: &'a str,
    description: Option<&'a str>,
    unit: Option<&'a str>,
    kind: &'static str,
    is_monotonic: Option<bool>,
    temporality: Option<&'static str>,
    resource_attributes: &'a [KeyValue],
    scope: (Option<&'a str>, Option<&'a str>),
}

/// One data point, with the type-specific columns it fills.
#[derive(Default)]
struct Point<'a> {
    time: u64,
    start_time: u64,
    attributes: &'a [KeyValue],
    flags: u32,
    exemplars: &'a [Exemplar],
    value: Option<f64>,
    count: Option<u64>,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    buckets: Option<(&'a [u64], &'a [f64])>,
    scale: Option<i32>,
    zero_count: Option<u64>,
    zero_threshold: Option<f64>,
    positive: Option<(i32, &'a [u64])>,
    negative: Option<(i32, &'a [u64])>,
    quantiles: &'a [ValueAtQuantile],
}

struct Builders {
    time: TimestampNanosecondBuilder,
    start_time: TimestampNanosecondBuilder,
    service: StringBuilder,
    name: StringBuilder,
    description: StringBuilder,
    unit: StringBuilder,
    kind: StringBuilder,
    is_monotonic: BooleanBuilder,
    temporality: StringBuilder,
    value: Float64Builder,
    count: UInt64Builder,
    sum: Float64Builder,
    min: Float64Builder,
    max: Float64Builder,
    bucket_counts: ListBuilder<UInt64Builder>,
    explicit_bounds: ListBuilder<Float64Builder>,
    scale: Int32Builder,
    zero_count: UInt64Builder,
    zero_threshold: Float64Builder,
    positive_offset: Int32Builder,
    positive_counts: ListBuilder<UInt64Builder>,
    negative_offset: Int32Builder,
    negative_counts: ListBuilder<UInt64Builder>,
    quantile_offsets: Vec<i32>,
    quantile_q: Float64Builder,
    quantile_v: Float64Builder,
    exemplar_offsets: Vec<i32>,
    exemplar_time: TimestampNanosecondBuilder,
    exemplar_value: Float64Builder,
    exemplar_trace: StringBuilder,
    exemplar_span: StringBuilder,
    exemplar_attrs: AttributesBuilder,
    flags: UInt32Builder,
    attributes: AttributesBuilder,
    resource_attributes: AttributesBuilder,
    scope_name: StringBuilder,
    scope_version: StringBuilder,
}

fn u64_list(n: usize) -> ListBuilder<UInt64Builder> {
    ListBuilder::with_capacity(UInt64Builder::new(), n)
}

impl Builders {
    fn new(n: usize) -> Self {
        Self {
            time: timestamp_builder(n),
            start_time: timestamp_builder(n),
            service: StringBuilder::new(),
            name: StringBuilder::new(),
            description: StringBuilder::new(),
            unit: StringBuilder::new(),
            kind: StringBuilder::new(),
            is_monotonic: BooleanBuilder::with_capacity(n),
            temporality: StringBuilder::new(),
            value: Float64Builder::with_capacity(n),
            count: UInt64Builder::with_capacity(n),
            sum: Float64Builder::with_capacity(n),
            min: Float64Builder::with_capacity(n),
            max: Float64Builder::with_capacity(n),
            bucket_counts: u64_list(n),
            explicit_bounds: ListBuilder::with_capacity(Float64Builder::new(), n),
            scale: Int32Builder::with_capacity(n),
            zero_count: UInt64Builder::with_capacity(n),
            zero_threshold: Float64Builder::with_capacity(n),
            positive_offset: Int32Builder::with_capacity(n),
            positive_counts: u64_list(n),
            negative_offset: Int32Builder::with_capacity(n),
            negative_counts: u64_list(n),
            quantile_offsets: vec![0],
            quantile_q: Float64Builder::new(),
            quantile_v: Float64Builder::new(),
            exemplar_offsets: vec![0],
            exemplar_time: timestamp_builder(0),
            exemplar_value: Float64Builder::new(),
            exemplar_trace: StringBuilder::new(),
            exemplar_span: StringBuilder::new(),
            exemplar_attrs: AttributesBuilder::new(),
            flags: UInt32Builder::with_capacity(n),
            attributes: AttributesBuilder::new(),
            resource_attributes: AttributesBuilder::new(),
            scope_name: StringBuilder::new(),
            scope_version: StringBuilder::new(),
        }
    }

    fn append(&mut self, m: &MetricInfo<'_>, p: Point<'_>) -> Result<(), String> {
        let time = nanos(p.time).ok_or("time_unix_nano out of range")?;
        let start = match p.start_time {
            0 => None,
            t => Some(nanos(t).ok_or("start_time_unix_nano out of range")?),
        };
        for e in p.exemplars {
            check_id(&e.trace_id, 16, "exemplar trace_id")?;
            check_id(&e.span_id, 8, "exemplar span_id")?;
        }
        self.time.append_value(time);
        self.start_time.append_option(start);
        self.service.append_option(m.service);
        self.name.append_value(m.name);
        self.description.append_option(m.description);
        self.unit.append_option(m.unit);
        self.kind.append_value(m.kind);
        self.is_monotonic.append_option(m.is_monotonic);
        self.temporality.append_option(m.temporality);
        self.value.append_option(p.value);
        self.count.append_option(p.count);
        self.sum.append_option(p.sum);
        self.min.append_option(p.min);
        self.max.append_option(p.max);
        match p.buckets {
            Some((counts, bounds)) => {
                self.bucket_counts
                    .append_value(counts.iter().map(|c| Some(*c)));
                self.explicit_bounds
                    .append_value(bounds.iter().map(|b| Some(*b)));
            }
            None => {
                self.bucket_counts.append_null();
                self.explicit_bounds.append_null();
            }
        }
        self.scale.append_option(p.scale);
        self.zero_count.append_option(p.zero_count);
        self.zero_threshold.append_option(p.zero_threshold);
        for (side, offset, counts) in [
            (
                p.positive,
                &mut self.positive_offset,
                &mut self.positive_counts,
            ),
            (
                p.negative,
                &mut self.negative_offset,
                &mut self.negative_counts,
            ),
        ] {
            match side {
                Some((o, c)) => {
                    offset.append_value(o);
                    counts.append_value(c.iter().map(|v| Some(*v)));
                }
                None => {
                    offset.append_null();
                    counts.append_null();
                }
            }
        }
        for q in p.quantiles {
            self.quantile_q.append_value(q.quantile);
            self.quantile_v.append_value(q.value);
        }
        let last = self.quantile_offsets.last().copied().unwrap_or(0);
        self.quantile_offsets.push(last + p.quantiles.len() as i32);
        for e in p.exemplars {
            self.exemplar_time
                .append_value(nanos(e.time_unix_nano).unwrap_or(i64::MAX));
            self.exemplar_value.append_option(e.value.map(|v| match v {
                exemplar::Value::AsDouble(d) => d,
                exemplar::Value::AsInt(i) => i as f64,
            }));
            append_hex_id(&mut self.exemplar_trace, &e.trace_id);
            append_hex_id(&mut self.exemplar_span, &e.span_id);
            self.exemplar_attrs.append(&e.filtered_attributes);
        }
        let last = self.exemplar_offsets.last().copied().unwrap_or(0);
        self.exemplar_offsets.push(last + p.exemplars.len() as i32);
        self.flags.append_value(p.flags);
        self.attributes.append(p.attributes);
        self.resource_attributes.append(m.resource_attributes);
        self.scope_name.append_option(m.scope.0);
        self.scope_version.append_option(m.scope.1);
        Ok(())
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let quantiles = list_of_structs(
            quantile_fields(),
            vec![
                Arc::new(self.quantile_q.finish()) as ArrayRef,
                Arc::new(self.quantile_v.finish()),
            ],
            self.quantile_offsets,
        );
        let exemplars = list_of_structs(
            exemplar_fields(),
            vec![
                Arc::new(self.exemplar_time.finish()) as ArrayRef,
                Arc::new(self.exemplar_value.finish()),
                Arc::new(self.exemplar_trace.finish()),
                Arc::new(self.exemplar_span.finish()),
                self.exemplar_attrs.finish(),
            ],
            self.exemplar_offsets,
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.start_time.finish()),
            Arc::new(self.service.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.description.finish()),
            Arc::new(self.unit.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.is_monotonic.finish()),
            Arc::new(self.temporality.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.count.finish()),
            Arc::new(self.sum.finish()),
            Arc::new(self.min.finish()),
            Arc::new(self.max.finish()),
            Arc::new(self.bucket_counts.finish()),
            Arc::new(self.explicit_bounds.finish()),
            Arc::new(self.scale.finish()),
            Arc::new(self.zero_count.finish()),
            Arc::new(self.zero_threshold.finish()),
            Arc::new(self.positive_offset.finish()),
            Arc::new(self.positive_counts.finish()),
            Arc::new(self.negative_offset.finish()),
            Arc::new(self.negative_counts.finish()),
            quantiles,
            exemplars,
            Arc::new(self.flags.finish()),
            self.attributes.finish(),
            self.resource_attributes.finish(),
            Arc::new(self.scope_name.finish()),
            Arc::new(self.scope_version.finish()),
        ];
        finish_batch(schema(), columns)
    }
}

fn point_count(data: Option<&Data>) -> usize {
    match data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Converts a metrics export request into a `metrics` batch.
pub fn convert(request: &ExportMetricsServiceRequest) -> Result<Converted, ArrowError> {
    let n: usize = request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| point_count(m.data.as_ref()))
        .sum();
    let mut b = Builders::new(n);
    let mut rejected = Rejections::default();
    let push =
        |b: &mut Builders, rejected: &mut Rejections, info: &MetricInfo<'_>, p: Point<'_>| {
            if let Err(reason) = b.append(info, p) {
                rejected.reject(|| format!("metric {:?}: {reason}", info.name));
            }
        };

    for rm in &request.resource_metrics {
        let resource = rm.resource.as_ref();
        let service = service_name(resource);
        let resource_attributes = resource_attributes(resource);
        for sm in &rm.scope_metrics {
            let scope = scope_name_version(sm.scope.as_ref());
            for metric in &sm.metrics {
                let mut info = MetricInfo {
                    service,
                    name: &metric.name,
                    description: non_empty(&metric.description),
                    unit: non_empty(&metric.unit),
                    kind: GAUGE,
                    is_monotonic: None,
                    temporality: None,
                    resource_attributes,
                    scope,
                };
                match &metric.data {
                    None => {
                        rejected.reject(|| format!("metric {:?} has no data", metric.name));
                    }
                    Some(Data::Gauge(g)) => {
                        for p in &g.data_points {
                            push(&mut b, &mut rejected, &info, number_point(p));
                        }
                    }
                    Some(Data::Sum(s)) => {
                        info.kind = SUM_TYPE;
                        info.is_monotonic = Some(s.is_monotonic);
                        info.temporality = temporality_name(s.aggregation_temporality);
                        for p in &s.data_points {
                            push(&mut b, &mut rejected, &info, number_point(p));
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        info.kind = HISTOGRAM;
                        info.temporality = temporality_name(h.aggregation_temporality);
                        for p in &h.data_points {
                            push(
                                &mut b,
                                &mut rejected,
                                &info,
                                Point {
                                    time: p.time_unix_nano,
                                    start_time: p.start_time_unix_nano,
                                    attributes: &p.attributes,
                                    flags: p.flags,
                                    exemplars: &p.exemplars,
                                    count: Some(p.count),
                                    sum: p.sum,
                                    min: p.min,
                                    max: p.max,
                                    buckets: Some((&p.bucket_counts, &p.explicit_bounds)),
                                    ..Point::default()
                                },
                            );
                        }
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        info.kind = EXPONENTIAL_HISTOGRAM;
                        info.temporality = temporality_name(h.aggregation_temporality);
                        for p in &h.data_points {
                            push(
                                &mut b,
                                &mut rejected,
                                &info,
                                Point {
                                    time: p.time_unix_nano,
                                    start_time: p.start_time_unix_nano,
                                    attributes: &p.attributes,
                                    flags: p.flags,
                                    exemplars: &p.exemplars,
                                    count: Some(p.count),
                                    sum: p.sum,
                                    min: p.min,
                                    max: p.max,
                                    scale: Some(p.scale),
                                    zero_count: Some(p.zero_count),
                                    zero_threshold: Some(p.zero_threshold),
                                    positive: buckets(&p.positive).or(Some((0, &[]))),
                                    negative: buckets(&p.negative).or(Some((0, &[]))),
                                    ..Point::default()
                                },
                            );
                        }
                    }
                    Some(Data::Summary(s)) => {
                        info.kind = SUMMARY;
                        for p in &s.data_points {
                            push(
                                &mut b,
                                &mut rejected,
                                &info,
                                Point {
                                    time: p.time_unix_nano,
                                    start_time: p.start_time_unix_nano,
                                    attributes: &p.attributes,
                                    flags: p.flags,
                                    count: Some(p.count),
                                    sum: Some(p.sum),
                                    quantiles: &p.quantile_values,
                                    ..Point::default()
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(Converted {
        batch: b.finish()?,
        rejected,
    })
}

fn buckets(b: &Option<Buckets>) -> Option<(i32, &[u64])> {
    b.as_ref().map(|b| (b.offset, b.bucket_counts.as_slice()))
}

fn number_point(p: &NumberDataPoint) -> Point<'_> {
    Point {
        time: p.time_unix_nano,
        start_time: p.start_time_unix_nano,
        attributes: &p.attributes,
        flags: p.flags,
        exemplars: &p.exemplars,
        value: p.value.map(|v| match v {
            number_data_point::Value::AsDouble(d) => d,
            number_data_point::Value::AsInt(i) => i as f64,
        }),
        ..Point::default()
    }
}
