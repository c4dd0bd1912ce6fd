//! `ExportLogsServiceRequest` → the `logs` table: one row per log record.
//!
//! `time` is the record's own time, or its observed time when the source did
//! not set one (as the log data model recommends), so that every record falls
//! into an event-time window.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int32Builder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use super::Converted;
use super::common::{
    AttributesBuilder, Rejections, append_hex_id, attributes_type, check_id, finish_batch, nanos,
    non_empty, resource_attributes, scope_name_version, service_name, timestamp_builder,
    timestamp_type, value_text,
};

pub const TIME: &str = "time";
pub const OBSERVED_TIME: &str = "observed_time";
pub const SEVERITY_NUMBER: &str = "severity_number";
pub const SEVERITY_TEXT: &str = "severity_text";
pub const BODY: &str = "body";
pub const TRACE_ID: &str = "trace_id";
pub const SPAN_ID: &str = "span_id";
pub const FLAGS: &str = "flags";
pub const EVENT_NAME: &str = "event_name";
pub const SERVICE_NAME: &str = "service_name";
pub const ATTRIBUTES: &str = "attributes";
pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
pub const SCOPE_NAME: &str = "scope_name";
pub const SCOPE_VERSION: &str = "scope_version";
pub const DROPPED_ATTRIBUTES_COUNT: &str = "dropped_attributes_count";

/// What each column holds: the source of docs/tables.md, kept in step with
/// the schema by a test.
pub const COLUMN_DOCS: &[(&str, &str)] = &[
    (
        TIME,
        "When the event happened, or when it was observed if the source did not say (UTC, nanoseconds). The table's time column.",
    ),
    (
        OBSERVED_TIME,
        "When the collection system first saw the record; null when not set.",
    ),
    (
        SEVERITY_NUMBER,
        "OTLP severity number: 1-4 TRACE, 5-8 DEBUG, 9-12 INFO, 13-16 WARN, 17-20 ERROR, 21-24 FATAL; 0 unspecified.",
    ),
    (
        SEVERITY_TEXT,
        "Severity as the source spelled it; null when empty.",
    ),
    (
        BODY,
        "The body: a string as is, other values as text (maps and arrays as JSON).",
    ),
    (
        TRACE_ID,
        "Trace id of the active span, 32 lowercase hex digits; null outside a trace.",
    ),
    (
        SPAN_ID,
        "Span id of the active span, 16 lowercase hex digits; null outside a trace.",
    ),
    (FLAGS, "W3C trace flags."),
    (
        EVENT_NAME,
        "The event name of an event record; null for ordinary logs.",
    ),
    (
        SERVICE_NAME,
        "The `service.name` resource attribute; null when the resource has none.",
    ),
    (ATTRIBUTES, "The record's attributes."),
    (
        RESOURCE_ATTRIBUTES,
        "Attributes of the resource that produced the record.",
    ),
    (
        SCOPE_NAME,
        "Instrumentation scope (logger) name; null when empty.",
    ),
    (
        SCOPE_VERSION,
        "Instrumentation scope version; null when empty.",
    ),
    (
        DROPPED_ATTRIBUTES_COUNT,
        "Attributes the SDK dropped from the record.",
    ),
];

/// The column the store partitions and prunes by.
pub const TIME_COLUMN: &str = TIME;

/// The schema of the `logs` table.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(TIME, timestamp_type(), false),
            Field::new(OBSERVED_TIME, timestamp_type(), true),
            Field::new(SEVERITY_NUMBER, DataType::Int32, false),
            Field::new(SEVERITY_TEXT, DataType::Utf8, true),
            Field::new(BODY, DataType::Utf8, true),
            Field::new(TRACE_ID, DataType::Utf8, true),
            Field::new(SPAN_ID, DataType::Utf8, true),
            Field::new(FLAGS, DataType::UInt32, false),
            Field::new(EVENT_NAME, DataType::Utf8, true),
            Field::new(SERVICE_NAME, DataType::Utf8, true),
            Field::new(ATTRIBUTES, attributes_type(), false),
            Field::new(RESOURCE_ATTRIBUTES, attributes_type(), false),
            Field::new(SCOPE_NAME, DataType::Utf8, true),
            Field::new(SCOPE_VERSION, DataType::Utf8, true),
            Field::new(DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
        ]))
    });
    SCHEMA.clone()
}

fn validate(record: &LogRecord) -> Result<(i64, Option<i64>), String> {
    check_id(&record.trace_id, 16, "trace_id")?;
    check_id(&record.span_id, 8, "span_id")?;
    let observed = match record.observed_time_unix_nano {
        0 => None,
        t => Some(nanos(t).ok_or("observed_time_unix_nano out of range")?),
    };
    let time = match record.time_unix_nano {
        0 => observed.ok_or("log record has neither time_unix_nano nor observed_time_unix_nano")?,
        t => nanos(t).ok_or("time_unix_nano out of range")?,
    };
    Ok((time, observed))
}

/// Converts a logs export request into a `logs` batch.
pub fn convert(request: &ExportLogsServiceRequest) -> Result<Converted, ArrowError> {
    let n: usize = request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum();
    let mut rejected = Rejections::default();
    let mut time = timestamp_builder(n);
    let mut observed_time = timestamp_builder(n);
    let mut severity_number = Int32Builder::with_capacity(n);
    let mut severity_text = StringBuilder::new();
    let mut body = StringBuilder::new();
    let mut trace_id = StringBuilder::new();
    let mut span_id = StringBuilder::new();
    let mut flags = UInt32Builder::with_capacity(n);
    let mut event_name = StringBuilder::new();
    let mut service = StringBuilder::new();
    let mut attributes = AttributesBuilder::new();
    let mut resource_attrs = AttributesBuilder::new();
    let mut scope_name = StringBuilder::new();
    let mut scope_version = StringBuilder::new();
    let mut dropped = UInt32Builder::with_capacity(n);

    for rl in &request.resource_logs {
        let resource = rl.resource.as_ref();
        let service_name = service_name(resource);
        let res_attrs = resource_attributes(resource);
        for sl in &rl.scope_logs {
            let (sname, sversion) = scope_name_version(sl.scope.as_ref());
            for record in &sl.log_records {
                let (t, observed) = match validate(record) {
                    Ok(times) => times,
                    Err(reason) => {
                        rejected.reject(|| reason);
                        continue;
                    }
                };
                time.append_value(t);
                observed_time.append_option(observed);
                severity_number.append_value(record.severity_number);
                severity_text.append_option(non_empty(&record.severity_text));
                body.append_option(record.body.as_ref().and_then(value_text));
                append_hex_id(&mut trace_id, &record.trace_id);
                append_hex_id(&mut span_id, &record.span_id);
                flags.append_value(record.flags);
                event_name.append_option(non_empty(&record.event_name));
                service.append_option(service_name);
                attributes.append(&record.attributes);
                resource_attrs.append(res_attrs);
                scope_name.append_option(sname);
                scope_version.append_option(sversion);
                dropped.append_value(record.dropped_attributes_count);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(observed_time.finish()),
        Arc::new(severity_number.finish()),
        Arc::new(severity_text.finish()),
        Arc::new(body.finish()),
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(flags.finish()),
        Arc::new(event_name.finish()),
        Arc::new(service.finish()),
        attributes.finish(),
        resource_attrs.finish(),
        Arc::new(scope_name.finish()),
        Arc::new(scope_version.finish()),
        Arc::new(dropped.finish()),
    ];
    Ok(Converted {
        batch: finish_batch(schema(), columns)?,
        rejected,
    })
}
