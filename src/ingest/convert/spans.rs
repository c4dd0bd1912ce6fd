//! `ExportTraceServiceRequest` → the `spans` table: one row per span.

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, Int64Builder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};

use super::Converted;
use super::common::{
    AttributesBuilder, Rejections, append_hex_id, attributes_type, check_id, finish_batch,
    list_of_structs, list_of_structs_type, nanos, non_empty, resource_attributes,
    scope_name_version, service_name, timestamp_builder, timestamp_type,
};

pub const START_TIME: &str = "start_time";
pub const END_TIME: &str = "end_time";
pub const DURATION_NS: &str = "duration_ns";
pub const TRACE_ID: &str = "trace_id";
pub const SPAN_ID: &str = "span_id";
pub const PARENT_SPAN_ID: &str = "parent_span_id";
pub const TRACE_STATE: &str = "trace_state";
pub const FLAGS: &str = "flags";
pub const SERVICE_NAME: &str = "service_name";
pub const SPAN_NAME: &str = "span_name";
pub const SPAN_KIND: &str = "span_kind";
pub const STATUS_CODE: &str = "status_code";
pub const STATUS_MESSAGE: &str = "status_message";
pub const ATTRIBUTES: &str = "attributes";
pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
pub const SCOPE_NAME: &str = "scope_name";
pub const SCOPE_VERSION: &str = "scope_version";
pub const EVENTS: &str = "events";
pub const LINKS: &str = "links";
pub const DROPPED_ATTRIBUTES_COUNT: &str = "dropped_attributes_count";
pub const DROPPED_EVENTS_COUNT: &str = "dropped_events_count";
pub const DROPPED_LINKS_COUNT: &str = "dropped_links_count";

/// Fields of each element of `events`.
pub const EVENT_TIME: &str = "time";
pub const EVENT_NAME: &str = "name";
/// Fields of each element of `links` (besides trace_id, span_id, trace_state, attributes).
pub const LINK_FLAGS: &str = "flags";

/// What each column holds: the source of docs/tables.md, kept in step with
/// the schema by a test.
pub const COLUMN_DOCS: &[(&str, &str)] = &[
    (
        START_TIME,
        "When the span started (UTC, nanoseconds). The table's time column: partitions are pruned by it.",
    ),
    (END_TIME, "When the span ended."),
    (DURATION_NS, "`end_time - start_time` in nanoseconds."),
    (TRACE_ID, "Trace id, 32 lowercase hex digits."),
    (SPAN_ID, "Span id, 16 lowercase hex digits."),
    (
        PARENT_SPAN_ID,
        "Parent span id, 16 lowercase hex digits; null for a root span.",
    ),
    (TRACE_STATE, "W3C trace state; null when empty."),
    (FLAGS, "W3C trace flags and OTLP span flags."),
    (
        SERVICE_NAME,
        "The `service.name` resource attribute; null when the resource has none.",
    ),
    (SPAN_NAME, "The span's name."),
    (
        SPAN_KIND,
        "`UNSPECIFIED`, `INTERNAL`, `SERVER`, `CLIENT`, `PRODUCER` or `CONSUMER`.",
    ),
    (STATUS_CODE, "`UNSET`, `OK` or `ERROR`."),
    (STATUS_MESSAGE, "The status description; null when empty."),
    (
        ATTRIBUTES,
        "Span attributes: `attributes['http.route']`. Non-string values as text (see the README).",
    ),
    (
        RESOURCE_ATTRIBUTES,
        "Attributes of the resource that produced the span.",
    ),
    (SCOPE_NAME, "Instrumentation scope name; null when empty."),
    (
        SCOPE_VERSION,
        "Instrumentation scope version; null when empty.",
    ),
    (EVENTS, "Span events: a list of `{time, name, attributes}`."),
    (
        LINKS,
        "Span links: a list of `{trace_id, span_id, trace_state, flags, attributes}`.",
    ),
    (
        DROPPED_ATTRIBUTES_COUNT,
        "Attributes the SDK dropped from the span.",
    ),
    (DROPPED_EVENTS_COUNT, "Events the SDK dropped."),
    (DROPPED_LINKS_COUNT, "Links the SDK dropped."),
];

/// The column the store partitions and prunes by.
pub const TIME_COLUMN: &str = START_TIME;

fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new(EVENT_TIME, timestamp_type(), false),
        Field::new(EVENT_NAME, DataType::Utf8, false),
        Field::new(ATTRIBUTES, attributes_type(), false),
    ])
}

fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new(TRACE_ID, DataType::Utf8, true),
        Field::new(SPAN_ID, DataType::Utf8, true),
        Field::new(TRACE_STATE, DataType::Utf8, true),
        Field::new(LINK_FLAGS, DataType::UInt32, false),
        Field::new(ATTRIBUTES, attributes_type(), false),
    ])
}

/// The schema of the `spans` table.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(START_TIME, timestamp_type(), false),
            Field::new(END_TIME, timestamp_type(), false),
            Field::new(DURATION_NS, DataType::Int64, false),
            Field::new(TRACE_ID, DataType::Utf8, false),
            Field::new(SPAN_ID, DataType::Utf8, false),
            Field::new(PARENT_SPAN_ID, DataType::Utf8, true),
            Field::new(TRACE_STATE, DataType::Utf8, true),
            Field::new(FLAGS, DataType::UInt32, false),
            Field::new(SERVICE_NAME, DataType::Utf8, true),
            Field::new(SPAN_NAME, DataType::Utf8, false),
            Field::new(SPAN_KIND, DataType::Utf8, false),
            Field::new(STATUS_CODE, DataType::Utf8, false),
            Field::new(STATUS_MESSAGE, DataType::Utf8, true),
            Field::new(ATTRIBUTES, attributes_type(), false),
            Field::new(RESOURCE_ATTRIBUTES, attributes_type(), false),
            Field::new(SCOPE_NAME, DataType::Utf8, true),
            Field::new(SCOPE_VERSION, DataType::Utf8, true),
            Field::new(EVENTS, list_of_structs_type(event_fields()), false),
            Field::new(LINKS, list_of_structs_type(link_fields()), false),
            Field::new(DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
            Field::new(DROPPED_EVENTS_COUNT, DataType::UInt32, false),
            Field::new(DROPPED_LINKS_COUNT, DataType::UInt32, false),
        ]))
    });
    SCHEMA.clone()
}

/// `SPAN_KIND_SERVER` → `SERVER`; unknown values keep their number.
pub fn span_kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Unspecified) => "UNSPECIFIED",
        Ok(SpanKind::Internal) => "INTERNAL",
        Ok(SpanKind::Server) => "SERVER",
        Ok(SpanKind::Client) => "CLIENT",
        Ok(SpanKind::Producer) => "PRODUCER",
        Ok(SpanKind::Consumer) => "CONSUMER",
        Err(_) => "UNSPECIFIED",
    }
}

/// `STATUS_CODE_ERROR` → `ERROR`.
pub fn status_code_name(code: i32) -> &'static str {
    match StatusCode::try_from(code) {
        Ok(StatusCode::Ok) => "OK",
        Ok(StatusCode::Error) => "ERROR",
        Ok(StatusCode::Unset) | Err(_) => "UNSET",
    }
}

/// Why a span cannot be stored; such spans are rejected alone.
fn validate(span: &Span) -> Result<(i64, i64), String> {
    check_id(&span.trace_id, 16, "trace_id")?;
    check_id(&span.span_id, 8, "span_id")?;
    check_id(&span.parent_span_id, 8, "parent_span_id")?;
    if span.trace_id.is_empty() || span.span_id.is_empty() {
        return Err("span has an empty trace_id or span_id".into());
    }
    let start = nanos(span.start_time_unix_nano).ok_or("start_time_unix_nano out of range")?;
    let end = nanos(span.end_time_unix_nano).ok_or("end_time_unix_nano out of range")?;
    for link in &span.links {
        check_id(&link.trace_id, 16, "link trace_id")?;
        check_id(&link.span_id, 8, "link span_id")?;
    }
    Ok((start, end))
}

/// Converts a trace export request into a `spans` batch.
pub fn convert(request: &ExportTraceServiceRequest) -> Result<Converted, ArrowError> {
    let n: usize = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let mut rejected = Rejections::default();

    let mut start_time = timestamp_builder(n);
    let mut end_time = timestamp_builder(n);
    let mut duration = Int64Builder::with_capacity(n);
    let mut trace_id = StringBuilder::with_capacity(n, n * 32);
    let mut span_id = StringBuilder::with_capacity(n, n * 16);
    let mut parent_span_id = StringBuilder::with_capacity(n, n * 16);
    let mut trace_state = StringBuilder::new();
    let mut flags = UInt32Builder::with_capacity(n);
    let mut service = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut kind = StringBuilder::new();
    let mut status_code = StringBuilder::new();
    let mut status_message = StringBuilder::new();
    let mut attributes = AttributesBuilder::new();
    let mut resource_attrs = AttributesBuilder::new();
    let mut scope_name = StringBuilder::new();
    let mut scope_version = StringBuilder::new();
    let mut dropped_attributes = UInt32Builder::with_capacity(n);
    let mut dropped_events = UInt32Builder::with_capacity(n);
    let mut dropped_links = UInt32Builder::with_capacity(n);

    let mut event_offsets = Vec::with_capacity(n + 1);
    event_offsets.push(0i32);
    let mut event_time = timestamp_builder(0);
    let mut event_name = StringBuilder::new();
    let mut event_attrs = AttributesBuilder::new();

    let mut link_offsets = Vec::with_capacity(n + 1);
    link_offsets.push(0i32);
    let mut link_trace = StringBuilder::new();
    let mut link_span = StringBuilder::new();
    let mut link_state = StringBuilder::new();
    let mut link_flags = UInt32Builder::new();
    let mut link_attrs = AttributesBuilder::new();

    for rs in &request.resource_spans {
        let resource = rs.resource.as_ref();
        let service_name = service_name(resource);
        let res_attrs = resource_attributes(resource);
        for ss in &rs.scope_spans {
            let (sname, sversion) = scope_name_version(ss.scope.as_ref());
            for span in &ss.spans {
                let (start, end) = match validate(span) {
                    Ok(times) => times,
                    Err(reason) => {
                        rejected.reject(|| reason);
                        continue;
                    }
                };
                start_time.append_value(start);
                end_time.append_value(end);
                duration.append_value(end.saturating_sub(start));
                append_hex_id(&mut trace_id, &span.trace_id);
                append_hex_id(&mut span_id, &span.span_id);
                append_hex_id(&mut parent_span_id, &span.parent_span_id);
                trace_state.append_option(non_empty(&span.trace_state));
                flags.append_value(span.flags);
                service.append_option(service_name);
                name.append_value(&span.name);
                kind.append_value(span_kind_name(span.kind));
                let (code, message) = match &span.status {
                    Some(s) => (s.code, non_empty(&s.message)),
                    None => (0, None),
                };
                status_code.append_value(status_code_name(code));
                status_message.append_option(message);
                attributes.append(&span.attributes);
                resource_attrs.append(res_attrs);
                scope_name.append_option(sname);
                scope_version.append_option(sversion);
                dropped_attributes.append_value(span.dropped_attributes_count);
                dropped_events.append_value(span.dropped_events_count);
                dropped_links.append_value(span.dropped_links_count);

                for event in &span.events {
                    // An event time past 2262 is clamped rather than losing the span.
                    event_time.append_value(nanos(event.time_unix_nano).unwrap_or(i64::MAX));
                    event_name.append_value(&event.name);
                    event_attrs.append(&event.attributes);
                }
                event_offsets
                    .push(event_offsets.last().copied().unwrap_or(0) + span.events.len() as i32);
                for link in &span.links {
                    append_hex_id(&mut link_trace, &link.trace_id);
                    append_hex_id(&mut link_span, &link.span_id);
                    link_state.append_option(non_empty(&link.trace_state));
                    link_flags.append_value(link.flags);
                    link_attrs.append(&link.attributes);
                }
                link_offsets
                    .push(link_offsets.last().copied().unwrap_or(0) + span.links.len() as i32);
            }
        }
    }

    let events = list_of_structs(
        event_fields(),
        vec![
            Arc::new(event_time.finish()) as ArrayRef,
            Arc::new(event_name.finish()),
            event_attrs.finish(),
        ],
        event_offsets,
    );
    let links = list_of_structs(
        link_fields(),
        vec![
            Arc::new(link_trace.finish()) as ArrayRef,
            Arc::new(link_span.finish()),
            Arc::new(link_state.finish()),
            Arc::new(link_flags.finish()),
            link_attrs.finish(),
        ],
        link_offsets,
    );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(start_time.finish()),
        Arc::new(end_time.finish()),
        Arc::new(duration.finish()),
        Arc::new(trace_id.finish()),
        Arc::new(span_id.finish()),
        Arc::new(parent_span_id.finish()),
        Arc::new(trace_state.finish()),
        Arc::new(flags.finish()),
        Arc::new(service.finish()),
        Arc::new(name.finish()),
        Arc::new(kind.finish()),
        Arc::new(status_code.finish()),
        Arc::new(status_message.finish()),
        attributes.finish(),
        resource_attrs.finish(),
        Arc::new(scope_name.finish()),
        Arc::new(scope_version.finish()),
        events,
        links,
        Arc::new(dropped_attributes.finish()),
        Arc::new(dropped_events.finish()),
        Arc::new(dropped_links.finish()),
    ];
    Ok(Converted {
        batch: finish_batch(schema(), columns)?,
        rejected,
    })
}

/// Test data: one span per entry of `times`, each starting and ending then.
#[cfg(test)]
pub fn spans_at(times: &[i64]) -> arrow::array::RecordBatch {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    let spans = times
        .iter()
        .enumerate()
        .map(|(i, t)| Span {
            trace_id: vec![1; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: "s".into(),
            start_time_unix_nano: *t as u64,
            end_time_unix_nano: *t as u64,
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    convert(&request).expect("valid spans convert").batch
}
