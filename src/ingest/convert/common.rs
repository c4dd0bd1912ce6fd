//! Pieces every signal's converter shares: attribute maps, the text form of
//! `AnyValue`, hex ids and the timestamp type.
//!
//! Attributes become `Map<Utf8, Utf8>` so that `attributes['http.route']`
//! works in SQL without a schema per attribute. Non-string values keep a
//! faithful text form: integers and doubles as their shortest round-trip
//! decimal text (so `CAST(attributes['http.status_code'] AS BIGINT)` works),
//! booleans as `true`/`false`, bytes as standard base64, arrays and key-value
//! lists as JSON.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, ListArray, MapBuilder, StringBuilder, StructArray, TimestampNanosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, TimeUnit};
use base64::Engine as _;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;

/// The resource attribute that names the service, per the semantic conventions.
pub const SERVICE_NAME_ATTRIBUTE: &str = "service.name";

/// Time zone of every timestamp column: OTLP times are UTC nanoseconds.
pub const TIME_ZONE: &str = "UTC";

/// `Timestamp(Nanosecond, "UTC")`.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some(TIME_ZONE.into()))
}

/// The type of `attributes` and `resource_attributes` columns, taken from the
/// builder itself so that schema and arrays can never disagree.
pub fn attributes_type() -> DataType {
    static TYPE: LazyLock<DataType> =
        LazyLock::new(|| AttributesBuilder::new().finish().data_type().clone());
    TYPE.clone()
}

/// A timestamp builder with the UTC time zone attached.
pub fn timestamp_builder(capacity: usize) -> TimestampNanosecondBuilder {
    TimestampNanosecondBuilder::with_capacity(capacity).with_timezone(TIME_ZONE)
}

/// OTLP times are unsigned nanoseconds; Arrow's are signed. Times past 2262
/// cannot be represented and make their item rejected.
pub fn nanos(value: u64) -> Option<i64> {
    i64::try_from(value).ok()
}

/// Builds `Map<Utf8, Utf8>` columns from OTLP key-value lists.
pub struct AttributesBuilder {
    inner: MapBuilder<StringBuilder, StringBuilder>,
    text: String,
}

impl Default for AttributesBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl AttributesBuilder {
    pub fn new() -> Self {
        Self {
            inner: MapBuilder::new(None, StringBuilder::new(), StringBuilder::new()),
            text: String::new(),
        }
    }

    /// Appends one row: the map of `attributes`. An empty list is an empty
    /// map, not a null, so `cardinality(attributes)` is always defined.
    pub fn append(&mut self, attributes: &[KeyValue]) {
        for kv in attributes {
            self.inner.keys().append_value(&kv.key);
            self.append_value(kv.value.as_ref());
        }
        self.inner
            .append(true)
            .expect("keys and values are appended in pairs");
    }

    fn append_value(&mut self, value: Option<&AnyValue>) {
        match value.and_then(|v| v.value.as_ref()) {
            None => self.inner.values().append_null(),
            Some(any_value::Value::StringValue(s)) => self.inner.values().append_value(s),
            Some(other) => {
                self.text.clear();
                write_value_text(other, &mut self.text);
                self.inner.values().append_value(&self.text);
            }
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        Arc::new(self.inner.finish())
    }
}

/// The text form of a value as stored in attribute maps and log bodies.
pub fn value_text(value: &AnyValue) -> Option<String> {
    let v = value.value.as_ref()?;
    let mut out = String::new();
    write_value_text(v, &mut out);
    Some(out)
}

fn write_value_text(value: &any_value::Value, out: &mut String) {
    use any_value::Value;
    match value {
        Value::StringValue(s) => out.push_str(s),
        Value::BoolValue(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::IntValue(i) => write!(out, "{i}").expect("writing to a String cannot fail"),
        // An index into a profile's string table: only profiles use it.
        Value::StringValueStrindex(i) => {
            write!(out, "{i}").expect("writing to a String cannot fail")
        }
        Value::DoubleValue(d) => write_double(*d, out),
        Value::BytesValue(b) => base64::engine::general_purpose::STANDARD.encode_string(b, out),
        Value::ArrayValue(_) | Value::KvlistValue(_) => write_json(value, out),
    }
}

fn write_double(d: f64, out: &mut String) {
    // Rust's Display is the shortest text that parses back to the same f64;
    // it spells the non-finite values the way Arrow's cast parses them.
    write!(out, "{d}").expect("writing to a String cannot fail")
}

/// Arrays and key-value lists become JSON so that nothing is lost and
/// `json_get`-style functions or a client can take them apart again.
fn write_json(value: &any_value::Value, out: &mut String) {
    use any_value::Value;
    match value {
        Value::StringValue(s) => {
            out.push_str(&serde_json::to_string(s).expect("a string always serializes"))
        }
        Value::BoolValue(_) | Value::IntValue(_) | Value::StringValueStrindex(_) => {
            write_value_text(value, out)
        }
        Value::DoubleValue(d) if d.is_finite() => write_double(*d, out),
        Value::DoubleValue(d) => {
            out.push('"');
            write_double(*d, out);
            out.push('"');
        }
        Value::BytesValue(_) => {
            out.push('"');
            write_value_text(value, out);
            out.push('"');
        }
        Value::ArrayValue(array) => {
            out.push('[');
            for (i, v) in array.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_any(v, out);
            }
            out.push(']');
        }
        Value::KvlistValue(list) => {
            out.push('{');
            for (i, kv) in list.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&kv.key).expect("a string always serializes"));
                out.push(':');
                match &kv.value {
                    Some(v) => write_json_any(v, out),
                    None => out.push_str("null"),
                }
            }
            out.push('}');
        }
    }
}

fn write_json_any(value: &AnyValue, out: &mut String) {
    match &value.value {
        Some(v) => write_json(v, out),
        None => out.push_str("null"),
    }
}

/// Lowercase hex of a trace or span id; `None` for an absent (empty) id.
pub fn append_hex_id(builder: &mut StringBuilder, id: &[u8]) {
    if id.is_empty() {
        builder.append_null();
    } else {
        let mut buf = [0u8; 32];
        match const_hex::encode_to_slice(id, &mut buf[..id.len() * 2]) {
            Ok(()) => builder.append_value(
                std::str::from_utf8(&buf[..id.len() * 2]).expect("hex digits are ASCII"),
            ),
            // Only reachable for ids longer than 16 bytes, which callers reject first.
            Err(_) => builder.append_value(const_hex::encode(id)),
        }
    }
}

/// Checks an id's length: OTLP trace ids are 16 bytes, span ids 8, and both
/// may be empty where the protocol allows it.
pub fn check_id(id: &[u8], len: usize, what: &str) -> Result<(), String> {
    if id.is_empty() || id.len() == len {
        Ok(())
    } else {
        Err(format!("{what} must be {len} bytes, got {}", id.len()))
    }
}

/// The `service.name` resource attribute, if it is a string.
pub fn service_name(resource: Option<&Resource>) -> Option<&str> {
    resource?
        .attributes
        .iter()
        .find(|kv| kv.key == SERVICE_NAME_ATTRIBUTE)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The resource's attributes, or none.
pub fn resource_attributes(resource: Option<&Resource>) -> &[KeyValue] {
    resource.map(|r| r.attributes.as_slice()).unwrap_or(&[])
}

/// Name and version of an instrumentation scope (empty strings become null).
pub fn scope_name_version(scope: Option<&InstrumentationScope>) -> (Option<&str>, Option<&str>) {
    match scope {
        Some(s) => (non_empty(&s.name), non_empty(&s.version)),
        None => (None, None),
    }
}

/// Empty OTLP strings mean "not set": they are stored as nulls.
pub fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// A `List<Struct<fields>>` column from flattened child arrays and per-row
/// offsets: how nested OTLP lists (events, links, exemplars, quantiles) are
/// assembled without nested builders.
pub fn list_of_structs(fields: Fields, children: Vec<ArrayRef>, offsets: Vec<i32>) -> ArrayRef {
    let values = StructArray::new(fields.clone(), children, None);
    Arc::new(ListArray::new(
        list_item_field(fields),
        OffsetBuffer::new(offsets.into()),
        Arc::new(values),
        None,
    ))
}

/// The item field of a `List<Struct<fields>>`.
pub fn list_item_field(fields: Fields) -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Struct(fields), false))
}

/// `List<Struct<fields>>` as a data type.
pub fn list_of_structs_type(fields: Fields) -> DataType {
    DataType::List(list_item_field(fields))
}

/// The final batch of a converter, its buffers shrunk to what they hold:
/// builders over-allocate, and the store's budget counts capacity, not length.
pub fn finish_batch(
    schema: arrow::datatypes::SchemaRef,
    mut columns: Vec<ArrayRef>,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    for column in &mut columns {
        column.shrink_to_fit();
    }
    arrow::array::RecordBatch::try_new(schema, columns)
}

/// Tracks which items of a request were rejected and why, for OTLP's
/// partial-success reply.
#[derive(Debug, Default)]
pub struct Rejections {
    pub count: i64,
    pub first_reason: Option<String>,
}

impl Rejections {
    pub fn reject(&mut self, reason: impl FnOnce() -> String) {
        self.count += 1;
        if self.first_reason.is_none() {
            self.first_reason = Some(reason());
        }
    }

    /// The partial-success message: the first reason, and how many others.
    pub fn message(&self) -> String {
        match (&self.first_reason, self.count) {
            (None, _) => String::new(),
            (Some(r), 1) => r.clone(),
            (Some(r), n) => format!("{r} (and {} more rejected)", n - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};

    fn text(v: Value) -> String {
        value_text(&AnyValue { value: Some(v) }).unwrap()
    }

    #[test]
    fn scalar_values_keep_a_faithful_text_form() {
        assert_eq!(text(Value::StringValue("GET".into())), "GET");
        assert_eq!(
            text(Value::IntValue(-9_007_199_254_740_993)),
            "-9007199254740993"
        );
        assert_eq!(text(Value::DoubleValue(0.1)), "0.1");
        assert_eq!(
            text(Value::DoubleValue(1e300)).parse::<f64>().unwrap(),
            1e300
        );
        assert_eq!(text(Value::BoolValue(true)), "true");
        assert_eq!(text(Value::BytesValue(vec![0, 255])), "AP8=");
    }

    #[test]
    fn nested_values_become_json() {
        let kv = |k: &str, v| KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let v = Value::KvlistValue(KeyValueList {
            values: vec![
                kv(
                    "a",
                    Value::ArrayValue(ArrayValue {
                        values: vec![
                            AnyValue {
                                value: Some(Value::IntValue(1)),
                            },
                            AnyValue {
                                value: Some(Value::StringValue("x\"y".into())),
                            },
                            AnyValue { value: None },
                        ],
                    }),
                ),
                kv("b", Value::DoubleValue(f64::NAN)),
            ],
        });
        let json = text(v);
        assert_eq!(json, r#"{"a":[1,"x\"y",null],"b":"NaN"}"#);
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }

    #[test]
    fn hex_ids_are_lowercase_and_empty_ids_null() {
        let mut b = StringBuilder::new();
        append_hex_id(&mut b, &[0xAB, 0x01, 0, 0, 0, 0, 0, 0xff]);
        append_hex_id(&mut b, &[]);
        let a = b.finish();
        assert_eq!(a.value(0), "ab010000000000ff");
        assert!(a.is_null(1));
    }
}
