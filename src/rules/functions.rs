//! SQL functions for detection rules, registered on the DataFusion session
//! next to the built-in ones.
//!
//! Rules are SQL over the `metrics` table (one row per data point), so the
//! PromQL staples are provided as functions over those rows:
//!
//! | function | kind | SQL signature | result |
//! |---|---|---|---|
//! | [`increase`](increase_udaf) | aggregate | `increase(value DOUBLE, time TIMESTAMP)` | `DOUBLE` |
//! | [`rate`](rate_udaf) | aggregate | `rate(value DOUBLE, time TIMESTAMP)` | `DOUBLE` |
//! | [`histogram_quantile`](histogram_quantile_udf) | scalar | `histogram_quantile(q DOUBLE, explicit_bounds LIST<DOUBLE>, bucket_counts LIST<UBIGINT>)` | `DOUBLE` |
//! | [`merge_buckets`](merge_buckets_udaf) | aggregate | `merge_buckets(bucket_counts LIST<UBIGINT>)` | `LIST<UBIGINT>` |
//!
//! A counter's increase over the window, per series:
//!
//! ```sql
//! SELECT metric_name, attributes['route'] AS route, increase(value, time) AS requests
//! FROM metrics
//! WHERE metric_name = 'http.server.requests' AND temporality = 'cumulative'
//! GROUP BY metric_name, attributes['route']
//! ```
//!
//! The 99th percentile of delta histograms merged over the window:
//!
//! ```sql
//! SELECT histogram_quantile(0.99, explicit_bounds, merge_buckets(bucket_counts)) AS p99
//! FROM metrics
//! WHERE metric_name = 'http.server.duration' AND temporality = 'delta'
//! GROUP BY explicit_bounds
//! ```
//!
//! [`register`] adds all of them to a [`SessionContext`].

use std::mem::{size_of, size_of_val};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, ListArray, UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType,
    UInt64Type,
};
use datafusion::common::{Result, ScalarValue, exec_err, internal_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::{AggregateOrderSensitivity, format_state_name};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, DocSection, Documentation,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Registers [`increase`](increase_udaf), [`rate`](rate_udaf),
/// [`histogram_quantile`](histogram_quantile_udf) and
/// [`merge_buckets`](merge_buckets_udaf) on `ctx`, replacing any function of
/// the same name.
pub fn register(ctx: &SessionContext) {
    ctx.register_udaf(increase_udaf());
    ctx.register_udaf(rate_udaf());
    ctx.register_udf(histogram_quantile_udf());
    ctx.register_udaf(merge_buckets_udaf());
}

/// `increase(value, time) -> DOUBLE`: aggregate, how much one cumulative
/// counter series went up over the points of the group.
///
/// The group must be a single series (group by the metric name and the
/// attributes that identify the series). The points are sorted by `time`
/// (ties by value, so the result does not depend on the input order) and the
/// deltas between consecutive points are summed. A value lower than the one
/// before it is a counter reset, as in Prometheus: the counter restarted from
/// zero, so the new value itself is the increase since the reset.
///
/// Unlike PromQL's `increase`, the result is **not extrapolated** to the
/// edges of the query window: it is exactly the increase observed between
/// the first and the last point of the group.
///
/// - `value`: any numeric type, read as `DOUBLE`; rows with a null or NaN
///   value are ignored.
/// - `time`: a timestamp of any unit and time zone; rows with a null time are
///   ignored.
/// - Returns null when the group has fewer than 2 points.
///
/// Works with `GROUP BY` and in multi-phase (partial) aggregation: the
/// intermediate state is the list of times and the list of values.
pub fn increase_udaf() -> AggregateUDF {
    AggregateUDF::from(CounterAggregate::new(CounterKind::Increase))
}

/// `rate(value, time) -> DOUBLE`: aggregate, the per-second rate of one
/// cumulative counter series over the points of the group.
///
/// [`increase(value, time)`](increase_udaf) divided by the seconds between
/// the group's first and last point (not the query window: no extrapolation).
/// Returns null when the group has fewer than 2 points or when they all have
/// the same time.
pub fn rate_udaf() -> AggregateUDF {
    AggregateUDF::from(CounterAggregate::new(CounterKind::Rate))
}

/// `histogram_quantile(q, explicit_bounds, bucket_counts) -> DOUBLE`: scalar,
/// the `q`-quantile of an OTLP explicit-bucket histogram, estimated as
/// PromQL's `histogram_quantile` does.
///
/// Bucket `i` counts the observations in `(bounds[i-1], bounds[i]]`; the
/// last bucket is `(bounds[last], +Inf)`, so there is one more count than
/// bounds. The rank `q * total` is located in the first (non-empty) bucket
/// whose cumulative count reaches it, and the result is interpolated
/// linearly within that bucket:
///
/// - the first bucket's lower bound is 0 when `bounds[0] > 0` (observations
///   are assumed non-negative, as in Prometheus), otherwise `bounds[0]`
///   itself (so the result is `bounds[0]`);
/// - a rank in the `+Inf` bucket gives the last finite bound;
/// - `q = 0` gives the lower bound of the first non-empty bucket.
///
/// Arguments:
///
/// - `q`: `DOUBLE` (a literal or a column; any numeric type is cast).
/// - `explicit_bounds`: `LIST<DOUBLE>` (any numeric list), strictly
///   increasing.
/// - `bucket_counts`: `LIST<UBIGINT>` or `LIST<BIGINT>` (any integer list);
///   null elements count as 0.
///
/// Returns null when any argument is null, when `q` is outside `[0, 1]` or
/// NaN (PromQL would return -Inf / +Inf / NaN; a rule should not compare
/// against those), when `bucket_counts` is empty or sums to 0, when the
/// bounds contain a null, and when the rank falls in the `+Inf` bucket of a
/// histogram without finite bounds.
///
/// Errors when the lengths disagree (`bucket_counts` must have one more
/// element than `explicit_bounds`), when the bounds are not strictly
/// increasing, or when a count is negative.
pub fn histogram_quantile_udf() -> ScalarUDF {
    ScalarUDF::from(HistogramQuantile::new())
}

/// `merge_buckets(bucket_counts) -> LIST<UBIGINT>`: aggregate, the
/// element-wise sum of the histogram bucket counts of the group.
///
/// Merges the delta histogram points of a window into one histogram for
/// [`histogram_quantile`](histogram_quantile_udf). The points must share
/// their bucket layout (group by `explicit_bounds`, or filter on one series).
///
/// - `bucket_counts`: `LIST<UBIGINT>` (any integer list is cast); null lists
///   are skipped and null elements count as 0.
/// - Returns null when the group has no non-null list.
/// - Errors when two lists have different lengths (the message names both
///   lengths) or when a sum overflows `UBIGINT`.
pub fn merge_buckets_udaf() -> AggregateUDF {
    AggregateUDF::from(MergeBuckets::new())
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

/// Where the functions appear in `information_schema` documentation.
const DOC_SECTION: DocSection = DocSection {
    include: true,
    label: "Homeostat rule functions",
    description: Some("PromQL-style functions over the metrics table"),
};

/// `List<item>` with the conventional nullable `item` field.
fn list_type(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// The element type of a list-like type (`List`, `LargeList`,
/// `FixedSizeList`).
fn list_item(t: &DataType) -> Option<&DataType> {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        _ => None,
    }
}

/// The type to coerce a list-like `t` to: `t` itself when it already is a
/// `List<item>` (whatever its field's name or nullability, so that no cast
/// is planned), else `List<item>`.
fn coerce_list(t: &DataType, item: DataType) -> DataType {
    match t {
        DataType::List(f) if *f.data_type() == item => t.clone(),
        _ => list_type(item),
    }
}

/// A single-row `List` scalar holding `values`.
fn list_scalar(values: ArrayRef) -> ScalarValue {
    let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
    let offsets = OffsetBuffer::from_lengths([values.len()]);
    ScalarValue::List(Arc::new(ListArray::new(field, offsets, values, None)))
}

// ---------------------------------------------------------------------------
// increase / rate
// ---------------------------------------------------------------------------

/// Which counter function a [`CounterAggregate`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CounterKind {
    Increase,
    Rate,
}

/// `increase` and `rate`: the same accumulation, a different final step.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CounterAggregate {
    kind: CounterKind,
    signature: Signature,
}

impl CounterAggregate {
    fn new(kind: CounterKind) -> Self {
        Self {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static INCREASE_DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Increase of one cumulative counter series over the points of the group: the sum \
         of the deltas between consecutive points in time order, where a drop is a counter \
         reset (the new value is the increase since the reset). Not extrapolated to the \
         window edges. Null with fewer than 2 points.",
        "increase(value, time)",
    )
    .with_argument("value", "The counter value (numeric).")
    .with_argument("time", "The time of the point (timestamp).")
    .with_related_udf("rate")
    .build()
});

static RATE_DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Per-second rate of one cumulative counter series: increase(value, time) divided by \
         the seconds between the group's first and last point. Null with fewer than 2 \
         points or no elapsed time.",
        "rate(value, time)",
    )
    .with_argument("value", "The counter value (numeric).")
    .with_argument("time", "The time of the point (timestamp).")
    .with_related_udf("increase")
    .build()
});

impl AggregateUDFImpl for CounterAggregate {
    fn name(&self) -> &str {
        match self.kind {
            CounterKind::Increase => "increase",
            CounterKind::Rate => "rate",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// `(numeric, timestamp)` to `(Float64, Timestamp(ns, same zone))`.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [value, time] = arg_types else {
            return plan_err!(
                "{}(value, time) takes 2 arguments, got {}",
                self.name(),
                arg_types.len()
            );
        };
        if !(value.is_numeric() || value.is_null()) {
            return plan_err!("{}: the value must be numeric, got {value}", self.name());
        }
        let time = match time {
            DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()),
            DataType::Null => DataType::Timestamp(TimeUnit::Nanosecond, None),
            other => {
                return plan_err!("{}: the time must be a timestamp, got {other}", self.name());
            }
        };
        Ok(vec![DataType::Float64, time])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "times"),
                list_type(DataType::Int64),
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "values"),
                list_type(DataType::Float64),
                true,
            )),
        ])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(CounterAccumulator::new(self.kind)))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        // The points are sorted by time in `evaluate`.
        AggregateOrderSensitivity::Insensitive
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(match self.kind {
            CounterKind::Increase => &INCREASE_DOC,
            CounterKind::Rate => &RATE_DOC,
        })
    }
}

/// Collects the `(time in ns, value)` points of one group.
#[derive(Debug)]
struct CounterAccumulator {
    kind: CounterKind,
    points: Vec<(i64, f64)>,
    /// Whether `points` is known to be sorted (spares the sort when
    /// `evaluate` runs again, as in a window function).
    sorted: bool,
}

impl CounterAccumulator {
    fn new(kind: CounterKind) -> Self {
        Self {
            kind,
            points: Vec::new(),
            sorted: true,
        }
    }

    /// Adds the points of parallel time and value arrays, skipping nulls and
    /// NaN values.
    fn extend(&mut self, times: &Int64Array, values: &Float64Array) -> Result<()> {
        if times.len() != values.len() {
            return internal_err!(
                "counter state has {} times but {} values",
                times.len(),
                values.len()
            );
        }
        let before = self.points.len();
        self.points.extend(
            times
                .iter()
                .zip(values.iter())
                .filter_map(|(t, v)| Some((t?, v?)))
                .filter(|(_, v)| !v.is_nan()),
        );
        if self.points.len() > before {
            self.sorted = false;
        }
        Ok(())
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.points
                .sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
            self.sorted = true;
        }
    }
}

/// The increase of a counter over `points`, sorted by time: the sum of the
/// deltas, a drop counting as a reset. `None` with fewer than 2 points.
fn counter_increase(points: &[(i64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    Some(
        points
            .windows(2)
            .map(|w| {
                let (previous, current) = (w[0].1, w[1].1);
                if current < previous {
                    current // reset: counted from zero
                } else {
                    current - previous
                }
            })
            .sum(),
    )
}

impl Accumulator for CounterAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [value, time] = values else {
            return internal_err!("counter aggregate expects 2 inputs, got {}", values.len());
        };
        let (Some(value), Some(time)) = (
            value.as_primitive_opt::<Float64Type>(),
            time.as_primitive_opt::<TimestampNanosecondType>(),
        ) else {
            return internal_err!(
                "counter aggregate expects (Float64, Timestamp(ns)), got ({}, {})",
                value.data_type(),
                time.data_type()
            );
        };
        // Reinterpret the timestamps as their i64 nanoseconds.
        let time = Int64Array::new(time.values().clone(), time.nulls().cloned());
        self.extend(&time, value)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.sort();
        let increase = counter_increase(&self.points);
        let result = match self.kind {
            CounterKind::Increase => increase,
            CounterKind::Rate => {
                // Sorted, so `last >= first`; `abs_diff` cannot overflow.
                let elapsed_ns = match (self.points.first(), self.points.last()) {
                    (Some(first), Some(last)) => last.0.abs_diff(first.0),
                    _ => 0,
                };
                increase
                    .filter(|_| elapsed_ns > 0)
                    .map(|inc| inc / (elapsed_ns as f64 / 1e9))
            }
        };
        Ok(ScalarValue::Float64(result))
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.points.capacity() * size_of::<(i64, f64)>()
    }

    /// `[times: List<Int64>, values: List<Float64>]`, one row each.
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let points = std::mem::take(&mut self.points);
        self.sorted = true;
        let (times, values): (Vec<i64>, Vec<f64>) = points.into_iter().unzip();
        Ok(vec![
            list_scalar(Arc::new(Int64Array::from(times))),
            list_scalar(Arc::new(Float64Array::from(values))),
        ])
    }

    /// Concatenates the points of other accumulators' states.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [times, values] = states else {
            return internal_err!("counter state has 2 columns, got {}", states.len());
        };
        let (Some(times), Some(values)) = (times.as_list_opt::<i32>(), values.as_list_opt::<i32>())
        else {
            return internal_err!(
                "counter state expects (List, List), got ({}, {})",
                times.data_type(),
                values.data_type()
            );
        };
        for (times, values) in times.iter().zip(values.iter()) {
            let (Some(times), Some(values)) = (times, values) else {
                continue;
            };
            let (Some(times), Some(values)) = (
                times.as_primitive_opt::<Int64Type>(),
                values.as_primitive_opt::<Float64Type>(),
            ) else {
                return internal_err!("counter state expects (List<Int64>, List<Float64>)");
            };
            self.extend(times, values)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// histogram_quantile
// ---------------------------------------------------------------------------

/// The scalar `histogram_quantile(q, explicit_bounds, bucket_counts)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HistogramQuantile {
    signature: Signature,
}

impl HistogramQuantile {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static HISTOGRAM_QUANTILE_DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "The q-quantile of an explicit-bucket histogram, interpolated linearly within the \
         bucket holding the rank q * total, as PromQL's histogram_quantile. The first \
         bucket starts at 0 when its bound is positive; a rank in the +Inf bucket gives the \
         last finite bound. Null when q is outside [0, 1], an argument is null, or the \
         histogram is empty.",
        "histogram_quantile(q, explicit_bounds, bucket_counts)",
    )
    .with_argument("q", "The quantile, between 0 and 1.")
    .with_argument(
        "explicit_bounds",
        "The bucket upper bounds (list of doubles).",
    )
    .with_argument(
        "bucket_counts",
        "The bucket counts, one more than the bounds (list of integers).",
    )
    .with_related_udf("merge_buckets")
    .build()
});

impl ScalarUDFImpl for HistogramQuantile {
    fn name(&self) -> &str {
        "histogram_quantile"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// `(numeric, numeric list, integer list)` to
    /// `(Float64, List<Float64>, List<UInt64> or List<Int64>)`.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [q, bounds, counts] = arg_types else {
            return plan_err!(
                "histogram_quantile(q, explicit_bounds, bucket_counts) takes 3 arguments, got {}",
                arg_types.len()
            );
        };
        if !(q.is_numeric() || q.is_null()) {
            return plan_err!("histogram_quantile: q must be numeric, got {q}");
        }
        let bounds = match (bounds, list_item(bounds)) {
            (DataType::Null, _) => list_type(DataType::Float64),
            (_, Some(item)) if item.is_numeric() || item.is_null() => {
                coerce_list(bounds, DataType::Float64)
            }
            _ => {
                return plan_err!(
                    "histogram_quantile: explicit_bounds must be a list of numbers, got {bounds}"
                );
            }
        };
        let counts = match (counts, list_item(counts)) {
            (DataType::Null, _) => list_type(DataType::UInt64),
            (_, Some(item)) if item.is_unsigned_integer() || item.is_null() => {
                coerce_list(counts, DataType::UInt64)
            }
            (_, Some(item)) if item.is_signed_integer() => coerce_list(counts, DataType::Int64),
            _ => {
                return plan_err!(
                    "histogram_quantile: bucket_counts must be a list of integers, got {counts}"
                );
            }
        };
        Ok(vec![DataType::Float64, bounds, counts])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn is_strict(&self) -> bool {
        true
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [q, bounds, counts] = args.args.as_slice() else {
            return internal_err!("histogram_quantile expects 3 arguments");
        };
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let (q, bounds, counts) = (
            q.to_array(rows)?,
            bounds.to_array(rows)?,
            counts.to_array(rows)?,
        );
        let (Some(q), Some(bounds), Some(counts)) = (
            q.as_primitive_opt::<Float64Type>(),
            bounds.as_list_opt::<i32>(),
            counts.as_list_opt::<i32>(),
        ) else {
            return internal_err!(
                "histogram_quantile expects (Float64, List, List), got ({}, {}, {})",
                q.data_type(),
                bounds.data_type(),
                counts.data_type()
            );
        };

        let mut out = Float64Builder::with_capacity(rows);
        let mut row_counts = Vec::new();
        for row in 0..rows {
            if q.is_null(row) || bounds.is_null(row) || counts.is_null(row) {
                out.append_null();
                continue;
            }
            let row_bounds = bounds.value(row);
            let Some(row_bounds) = row_bounds.as_primitive_opt::<Float64Type>() else {
                return internal_err!("histogram_quantile expects List<Float64> bounds");
            };
            if row_bounds.null_count() > 0 {
                out.append_null();
                continue;
            }
            counts_as_f64(&counts.value(row), &mut row_counts)?;
            out.append_option(bucket_quantile(
                q.value(row),
                row_bounds.values(),
                &row_counts,
            )?);
        }
        let out: ArrayRef = Arc::new(out.finish());
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&HISTOGRAM_QUANTILE_DOC)
    }
}

/// Reads one row's bucket counts (`UInt64` or `Int64`) into `out` as `f64`,
/// nulls as 0.
fn counts_as_f64(counts: &ArrayRef, out: &mut Vec<f64>) -> Result<()> {
    out.clear();
    if let Some(c) = counts.as_primitive_opt::<UInt64Type>() {
        out.extend(c.iter().map(|c| c.unwrap_or(0) as f64));
    } else if let Some(c) = counts.as_primitive_opt::<Int64Type>() {
        for c in c.iter() {
            let c = c.unwrap_or(0);
            if c < 0 {
                return exec_err!("histogram_quantile: negative bucket count {c}");
            }
            out.push(c as f64);
        }
    } else {
        return internal_err!(
            "histogram_quantile expects UInt64 or Int64 counts, got {}",
            counts.data_type()
        );
    }
    Ok(())
}

/// The `q`-quantile of one histogram; see [`histogram_quantile_udf`].
fn bucket_quantile(q: f64, bounds: &[f64], counts: &[f64]) -> Result<Option<f64>> {
    if !(0.0..=1.0).contains(&q) || counts.is_empty() {
        return Ok(None);
    }
    if counts.len() != bounds.len() + 1 {
        return exec_err!(
            "histogram_quantile: {} bucket counts for {} explicit bounds; \
             bucket_counts must have one more element than explicit_bounds",
            counts.len(),
            bounds.len()
        );
    }
    if bounds.iter().any(|b| b.is_nan()) || bounds.windows(2).any(|w| w[0] >= w[1]) {
        return exec_err!(
            "histogram_quantile: explicit_bounds {bounds:?} are not strictly increasing"
        );
    }
    let total: f64 = counts.iter().sum();
    if total == 0.0 {
        return Ok(None);
    }
    let rank = q * total;
    let mut below = 0.0; // observations in the buckets before `i`
    for (i, &count) in counts.iter().enumerate() {
        if count > 0.0 && below + count >= rank {
            let Some(&upper) = bounds.get(i) else {
                // The +Inf bucket: the best estimate is the last finite bound.
                return Ok(bounds.last().copied());
            };
            let lower = match i {
                0 if upper > 0.0 => 0.0,
                0 => upper,
                _ => bounds[i - 1],
            };
            return Ok(Some(lower + (upper - lower) * ((rank - below) / count)));
        }
        below += count;
    }
    // Only reachable through rounding of `rank` at q = 1.
    Ok(bounds.last().copied())
}

// ---------------------------------------------------------------------------
// merge_buckets
// ---------------------------------------------------------------------------

/// The aggregate `merge_buckets(bucket_counts)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MergeBuckets {
    signature: Signature,
}

impl MergeBuckets {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static MERGE_BUCKETS_DOC: LazyLock<Documentation> = LazyLock::new(|| {
    Documentation::builder(
        DOC_SECTION,
        "Element-wise sum of the histogram bucket counts of the group, to merge the delta \
         histograms of a window before histogram_quantile. Null lists are skipped; lists \
         of different lengths are an error.",
        "merge_buckets(bucket_counts)",
    )
    .with_argument(
        "bucket_counts",
        "The bucket counts (list of unsigned integers).",
    )
    .with_related_udf("histogram_quantile")
    .build()
});

impl AggregateUDFImpl for MergeBuckets {
    fn name(&self) -> &str {
        "merge_buckets"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Any integer list to `List<UInt64>`.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [counts] = arg_types else {
            return plan_err!(
                "merge_buckets(bucket_counts) takes 1 argument, got {}",
                arg_types.len()
            );
        };
        match (counts, list_item(counts)) {
            (DataType::Null, _) => Ok(vec![list_type(DataType::UInt64)]),
            (_, Some(item)) if item.is_integer() || item.is_null() => {
                Ok(vec![coerce_list(counts, DataType::UInt64)])
            }
            _ => plan_err!("merge_buckets: bucket_counts must be a list of integers, got {counts}"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(list_type(DataType::UInt64))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "sums"),
            list_type(DataType::UInt64),
            true,
        ))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(MergeBucketsAccumulator::default()))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        AggregateOrderSensitivity::Insensitive
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&MERGE_BUCKETS_DOC)
    }
}

/// The running element-wise sums; `None` until a non-null list is seen.
#[derive(Debug, Default)]
struct MergeBucketsAccumulator {
    sums: Option<Vec<u64>>,
}

impl MergeBucketsAccumulator {
    /// Adds one list of counts.
    fn add(&mut self, counts: &UInt64Array) -> Result<()> {
        let Some(sums) = &mut self.sums else {
            self.sums = Some(counts.iter().map(|c| c.unwrap_or(0)).collect());
            return Ok(());
        };
        if sums.len() != counts.len() {
            return exec_err!(
                "merge_buckets: cannot merge bucket_counts of different lengths ({} and {}); \
                 merge only histograms with the same explicit_bounds",
                sums.len(),
                counts.len()
            );
        }
        for (sum, count) in sums.iter_mut().zip(counts.iter()) {
            let Some(merged) = sum.checked_add(count.unwrap_or(0)) else {
                return exec_err!("merge_buckets: bucket count overflows UBIGINT");
            };
            *sum = merged;
        }
        Ok(())
    }

    /// Adds every non-null row of a `List<UInt64>` array.
    fn add_lists(&mut self, lists: &ArrayRef) -> Result<()> {
        let Some(lists) = lists.as_list_opt::<i32>() else {
            return internal_err!("merge_buckets expects a List, got {}", lists.data_type());
        };
        for counts in lists.iter().flatten() {
            let Some(counts) = counts.as_primitive_opt::<UInt64Type>() else {
                return internal_err!(
                    "merge_buckets expects List<UInt64>, got List<{}>",
                    counts.data_type()
                );
            };
            self.add(counts)?;
        }
        Ok(())
    }
}

impl Accumulator for MergeBucketsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let [lists] = values else {
            return internal_err!("merge_buckets expects 1 input, got {}", values.len());
        };
        self.add_lists(lists)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(match &self.sums {
            Some(sums) => list_scalar(Arc::new(UInt64Array::from(sums.clone()))),
            None => ScalarValue::List(Arc::new(ListArray::new_null(
                Arc::new(Field::new_list_field(DataType::UInt64, true)),
                1,
            ))),
        })
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self
                .sums
                .as_ref()
                .map_or(0, |s| s.capacity() * size_of::<u64>())
    }

    /// The sums so far, the same shape as the result.
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    /// Other accumulators' sums are merged like input rows.
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let [sums] = states else {
            return internal_err!("merge_buckets state has 1 column, got {}", states.len());
        };
        self.add_lists(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::arrow::array::{
        ListBuilder, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Builder,
    };
    use datafusion::arrow::datatypes::{Schema, SchemaRef};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionConfig;

    const SECOND: i64 = 1_000_000_000;

    /// A session with the functions and enough partitions for the
    /// multi-phase (partial then final) aggregation plans.
    fn context() -> SessionContext {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
        register(&ctx);
        ctx
    }

    /// Runs `sql` and returns the batches.
    async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    /// Runs `sql`, which must yield one column of `DOUBLE`, as `Option<f64>`s.
    async fn floats(ctx: &SessionContext, sql: &str) -> Vec<Option<f64>> {
        let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<Float64Type>()
                    .iter()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Runs `sql`, which must yield one column of `LIST<UBIGINT>`.
    async fn lists(ctx: &SessionContext, sql: &str) -> Vec<Option<Vec<Option<u64>>>> {
        let batches = run(ctx, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_list::<i32>()
                    .iter()
                    .map(|l| l.map(|l| l.as_primitive::<UInt64Type>().iter().collect()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The error message of `sql`, which must fail.
    async fn error(ctx: &SessionContext, sql: &str) -> String {
        match run(ctx, sql).await {
            Ok(batches) => panic!("{sql}: expected an error, got {batches:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn approx(actual: Option<f64>, expected: f64) {
        let actual = actual.unwrap_or_else(|| panic!("expected {expected}, got null"));
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    fn counter_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("series", DataType::Utf8, false),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("value", DataType::Float64, true),
        ]))
    }

    /// A batch of `(series, seconds, value)` counter points.
    fn counter_batch(points: &[(&str, i64, Option<f64>)]) -> RecordBatch {
        RecordBatch::try_new(
            counter_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(points.iter().map(|p| p.0))),
                Arc::new(
                    TimestampNanosecondArray::from_iter_values(points.iter().map(|p| p.1 * SECOND))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter(points.iter().map(|p| p.2))),
            ],
        )
        .unwrap()
    }

    /// Registers `points` as table `name`, split into `partitions` partitions
    /// of two batches each (rows dealt round-robin, so every partition holds
    /// points of every series, out of time order).
    fn counter_table(
        ctx: &SessionContext,
        name: &str,
        points: &[(&str, i64, Option<f64>)],
        partitions: usize,
    ) {
        let mut parts = vec![vec![Vec::new(), Vec::new()]; partitions];
        for (i, p) in points.iter().enumerate() {
            parts[i % partitions][(i / partitions) % 2].push(*p);
        }
        let parts = parts
            .into_iter()
            .map(|batches| batches.iter().map(|b| counter_batch(b)).collect())
            .collect();
        let table = MemTable::try_new(counter_schema(), parts).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    }

    /// Series `a` (10s apart): 10, 15, 25, reset to 5, 12 => 5 + 10 + 5 + 7.
    /// Series `b` (20s apart): 100, 130, 130, 160 => 60.
    /// Series `c`: one point. Listed out of time order.
    const POINTS: &[(&str, i64, Option<f64>)] = &[
        ("a", 30, Some(5.0)),
        ("b", 20, Some(130.0)),
        ("a", 0, Some(10.0)),
        ("c", 5, Some(1.0)),
        ("a", 20, Some(25.0)),
        ("b", 0, Some(100.0)),
        ("a", 40, Some(12.0)),
        ("b", 60, Some(160.0)),
        ("a", 10, Some(15.0)),
        ("b", 40, Some(130.0)),
    ];

    #[tokio::test]
    async fn increase_handles_resets_and_order() {
        let ctx = context();
        counter_table(&ctx, "c", POINTS, 1);
        let sql = "SELECT increase(value, time) FROM c WHERE series = 'a'";
        approx(floats(&ctx, sql).await[0], 27.0);
        let sql = "SELECT rate(value, time) FROM c WHERE series = 'a'";
        approx(floats(&ctx, sql).await[0], 27.0 / 40.0);
    }

    #[tokio::test]
    async fn increase_and_rate_per_series() {
        let ctx = context();
        counter_table(&ctx, "c", POINTS, 1);
        let sql = "SELECT increase(value, time) FROM c GROUP BY series ORDER BY series";
        let got = floats(&ctx, sql).await;
        approx(got[0], 27.0);
        approx(got[1], 60.0);
        assert_eq!(got[2], None, "one point has no increase");
        let sql = "SELECT rate(value, time) FROM c GROUP BY series ORDER BY series";
        let got = floats(&ctx, sql).await;
        approx(got[0], 27.0 / 40.0);
        approx(got[1], 60.0 / 60.0);
        assert_eq!(got[2], None);
    }

    #[tokio::test]
    async fn counters_across_partial_aggregation() {
        let ctx = context();
        counter_table(&ctx, "c", POINTS, 3);
        // Partial aggregates per partition, merged by the final aggregate:
        // the reset of `a` is only visible once the states are merged.
        for sql in [
            "SELECT increase(value, time) FROM c GROUP BY series ORDER BY series",
            "SELECT increase(value, time) FROM c WHERE series <> 'c' GROUP BY series ORDER BY series",
        ] {
            let plan = run(&ctx, &format!("EXPLAIN {sql}")).await.unwrap();
            let plan = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
                .unwrap()
                .to_string();
            assert!(plan.contains("mode=Partial"), "{plan}");
            let got = floats(&ctx, sql).await;
            approx(got[0], 27.0);
            approx(got[1], 60.0);
        }
        // Without GROUP BY too.
        let sql = "SELECT rate(value, time) FROM c WHERE series = 'a'";
        approx(floats(&ctx, sql).await[0], 27.0 / 40.0);
    }

    #[tokio::test]
    async fn increase_as_a_window_function() {
        let ctx = context();
        counter_table(&ctx, "c", POINTS, 2);
        // `evaluate` runs after every row: the running increase.
        let sql = "SELECT increase(value, time) OVER (PARTITION BY series ORDER BY time) \
                   FROM c WHERE series = 'a' ORDER BY time";
        assert_eq!(
            floats(&ctx, sql).await,
            vec![None, Some(5.0), Some(15.0), Some(20.0), Some(27.0)]
        );
    }

    #[tokio::test]
    async fn counters_skip_nulls_and_need_two_points() {
        let ctx = context();
        counter_table(
            &ctx,
            "c",
            &[
                ("a", 0, Some(1.0)),
                ("a", 10, None),
                ("a", 20, Some(4.0)),
                ("a", 30, Some(f64::NAN)),
                ("b", 0, None),
                ("b", 10, Some(3.0)),
                ("d", 10, Some(3.0)),
                ("d", 10, Some(5.0)),
            ],
            2,
        );
        let sql = "SELECT increase(value, time) FROM c GROUP BY series ORDER BY series";
        let got = floats(&ctx, sql).await;
        approx(got[0], 3.0);
        assert_eq!(got[1], None, "one non-null point");
        approx(got[2], 2.0);
        let sql = "SELECT rate(value, time) FROM c GROUP BY series ORDER BY series";
        let got = floats(&ctx, sql).await;
        approx(got[0], 3.0 / 20.0);
        assert_eq!(got[1], None);
        assert_eq!(got[2], None, "no elapsed time");
        // No rows at all.
        let sql = "SELECT increase(value, time), rate(value, time) FROM c WHERE false";
        assert_eq!(floats(&ctx, sql).await, vec![None]);
    }

    #[tokio::test]
    async fn counters_coerce_their_arguments() {
        let ctx = context();
        let sql = "SELECT increase(v, t), rate(v, t) FROM (VALUES \
                   (CAST(3 AS BIGINT), arrow_cast(2000, 'Timestamp(Millisecond, None)')), \
                   (1, arrow_cast(0, 'Timestamp(Millisecond, None)')), \
                   (7, arrow_cast(4000, 'Timestamp(Millisecond, None)'))) AS p(v, t)";
        let batches = run(&ctx, sql).await.unwrap();
        approx(
            batches[0]
                .column(0)
                .as_primitive::<Float64Type>()
                .value(0)
                .into(),
            6.0,
        );
        approx(
            batches[0]
                .column(1)
                .as_primitive::<Float64Type>()
                .value(0)
                .into(),
            1.5,
        );

        let message = error(&ctx, "SELECT increase(1.0, 5)").await;
        assert!(
            message.contains("the time must be a timestamp"),
            "{message}"
        );
        let message = error(&ctx, "SELECT rate(1.0)").await;
        assert!(message.contains("takes 2 arguments"), "{message}");
    }

    /// `[1, 2, 5, 10]` with `[2, 4, 2, 1, 1]`: 10 observations.
    const HISTOGRAM: &str = "[1.0, 2.0, 5.0, 10.0], arrow_cast([2, 4, 2, 1, 1], 'List(UInt64)')";

    #[tokio::test]
    async fn histogram_quantile_interpolates() {
        let ctx = context();
        for (q, expected) in [
            (0.1, 0.5),   // rank 1 in (0, 1]: 0 + 1 * 1/2
            (0.2, 1.0),   // rank 2, the end of the first bucket
            (0.5, 1.75),  // rank 5 in (1, 2]: 1 + 1 * (5 - 2)/4
            (0.85, 7.5),  // rank 8.5 in (5, 10]: 5 + 5 * (8.5 - 8)/1
            (0.95, 10.0), // rank 9.5 in (10, +Inf): the last finite bound
            (1.0, 10.0),
            (0.0, 0.0), // the lower bound of the first non-empty bucket
        ] {
            let sql = format!("SELECT histogram_quantile({q}, {HISTOGRAM})");
            approx(floats(&ctx, &sql).await[0], expected);
        }
    }

    #[tokio::test]
    async fn histogram_quantile_edge_buckets() {
        let ctx = context();
        // Non-positive first bound: the first bucket is (-Inf, -5] => -5;
        // q 0.6: rank 2.4 in (0, 5]: 0 + 5 * (2.4 - 2)/1.
        let h = "[-5.0, 0.0, 5.0], [1, 1, 1, 1]";
        for (q, expected) in [(0.25, -5.0), (0.375, -2.5), (0.5, 0.0), (0.6, 2.0)] {
            let sql = format!("SELECT histogram_quantile({q}, {h})");
            approx(floats(&ctx, &sql).await[0], expected);
        }
        // q = 0 skips empty leading buckets; everything in +Inf.
        let sql = "SELECT histogram_quantile(0, [1.0, 2.0], [0, 3, 0])";
        approx(floats(&ctx, sql).await[0], 1.0);
        let sql = "SELECT histogram_quantile(0.5, [1.0, 2.0], [0, 0, 3])";
        approx(floats(&ctx, sql).await[0], 2.0);
        // Integer bounds and Int64 counts are accepted.
        let sql = "SELECT histogram_quantile(0.5, [10, 20], [0, 4, 0])";
        approx(floats(&ctx, sql).await[0], 15.0);
    }

    #[tokio::test]
    async fn histogram_quantile_nulls() {
        let ctx = context();
        for sql in [
            format!("SELECT histogram_quantile(1.5, {HISTOGRAM})"),
            format!("SELECT histogram_quantile(-0.1, {HISTOGRAM})"),
            format!("SELECT histogram_quantile(CAST('NaN' AS DOUBLE), {HISTOGRAM})"),
            format!("SELECT histogram_quantile(NULL, {HISTOGRAM})"),
            "SELECT histogram_quantile(0.5, NULL, [1, 2])".into(),
            "SELECT histogram_quantile(0.5, [1.0], NULL)".into(),
            "SELECT histogram_quantile(0.5, [1.0], [0, 0])".into(),
            "SELECT histogram_quantile(0.5, arrow_cast([], 'List(Float64)'), \
             arrow_cast([], 'List(UInt64)'))"
                .into(),
            // Only the +Inf bucket: no finite bound to report.
            "SELECT histogram_quantile(0.5, arrow_cast([], 'List(Float64)'), [3])".into(),
            "SELECT histogram_quantile(0.5, [1.0, NULL], [1, 1, 1])".into(),
        ] {
            assert_eq!(floats(&ctx, &sql).await, vec![None], "{sql}");
        }
    }

    #[tokio::test]
    async fn histogram_quantile_errors() {
        let ctx = context();
        let message = error(&ctx, "SELECT histogram_quantile(0.5, [1.0, 2.0], [1, 2])").await;
        assert!(
            message.contains("2 bucket counts for 2 explicit bounds"),
            "{message}"
        );
        let message = error(
            &ctx,
            "SELECT histogram_quantile(0.5, [2.0, 1.0], [1, 2, 3])",
        )
        .await;
        assert!(message.contains("not strictly increasing"), "{message}");
        let message = error(&ctx, "SELECT histogram_quantile(0.5, [1.0], [1, -2])").await;
        assert!(message.contains("negative bucket count"), "{message}");
        let message = error(&ctx, "SELECT histogram_quantile(0.5, [1.0], ['a', 'b'])").await;
        assert!(message.contains("must be a list of integers"), "{message}");
    }

    fn histogram_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("series", DataType::Utf8, false),
            Field::new("q", DataType::Float64, true),
            Field::new("explicit_bounds", list_type(DataType::Float64), true),
            Field::new("bucket_counts", list_type(DataType::UInt64), true),
        ]))
    }

    /// A histogram point: `(series, q, explicit_bounds, bucket_counts)`.
    type HistogramRow<'a> = (&'a str, f64, &'a [f64], Option<&'a [u64]>);

    /// A batch of histogram points.
    fn histogram_batch(rows: &[HistogramRow]) -> RecordBatch {
        let mut bounds = ListBuilder::new(Float64Builder::new());
        let mut counts = ListBuilder::new(UInt64Builder::new());
        for (_, _, b, c) in rows {
            bounds.append_value(b.iter().map(|b| Some(*b)));
            counts.append_option(c.map(|c| c.iter().map(|c| Some(*c))));
        }
        RecordBatch::try_new(
            histogram_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(bounds.finish()),
                Arc::new(counts.finish()),
            ],
        )
        .unwrap()
    }

    /// Three points of `a` (bounds `[1, 2]`, with a null in between), one of
    /// `b` (bounds `[10]`), in three partitions.
    fn histogram_table(ctx: &SessionContext) {
        let a: &[f64] = &[1.0, 2.0];
        let b: &[f64] = &[10.0];
        let parts = vec![
            vec![histogram_batch(&[("a", 0.5, a, Some(&[1, 2, 3]))])],
            vec![
                histogram_batch(&[
                    ("a", 0.9, a, Some(&[0, 1, 0])),
                    ("b", 0.5, b, Some(&[2, 2])),
                ]),
                histogram_batch(&[("a", 0.5, a, None)]),
            ],
            vec![histogram_batch(&[("a", 0.1, a, Some(&[4, 0, 1]))])],
        ];
        let table = MemTable::try_new(histogram_schema(), parts).unwrap();
        ctx.register_table("h", Arc::new(table)).unwrap();
    }

    #[tokio::test]
    async fn histogram_quantile_over_columns() {
        let ctx = context();
        histogram_table(&ctx);
        // Per row, with q from a column: a null count list gives null.
        let sql = "SELECT histogram_quantile(q, explicit_bounds, bucket_counts) FROM h \
                   ORDER BY series, q, bucket_counts[1]";
        let got = floats(&ctx, sql).await;
        assert_eq!(got.len(), 5);
        approx(got[0], 0.125); // q 0.1 of [4, 0, 1]: rank 0.5 in (0, 1]: 0.5/4
        approx(got[1], 2.0); // q 0.5 of [1, 2, 3]: rank 3 in (1, 2]: 1 + (3 - 1)/2
        assert_eq!(got[2], None);
        approx(got[3], 1.9); // q 0.9 of [0, 1, 0]: rank 0.9 in (1, 2]: 1 + 0.9/1
        approx(got[4], 10.0); // q 0.5 of [2, 2] over [10]: rank 2 in (0, 10]: 10 * 2/2
    }

    #[tokio::test]
    async fn merge_buckets_sums_elementwise() {
        let ctx = context();
        histogram_table(&ctx);
        let sql = "SELECT merge_buckets(bucket_counts) FROM h WHERE series = 'a'";
        assert_eq!(
            lists(&ctx, sql).await,
            vec![Some(vec![Some(5), Some(3), Some(4)])]
        );
        let sql = "SELECT merge_buckets(bucket_counts) FROM h GROUP BY series ORDER BY series";
        assert_eq!(
            lists(&ctx, sql).await,
            vec![
                Some(vec![Some(5), Some(3), Some(4)]),
                Some(vec![Some(2), Some(2)])
            ]
        );
        // Merged, then the quantile: [5, 3, 4] over [1, 2], rank 6 in (1, 2].
        let sql = "SELECT histogram_quantile(0.5, explicit_bounds, merge_buckets(bucket_counts)) \
                   FROM h GROUP BY explicit_bounds ORDER BY explicit_bounds";
        let got = floats(&ctx, sql).await;
        approx(got[0], 1.0 + (6.0 - 5.0) / 3.0);
        approx(got[1], 10.0);
    }

    #[tokio::test]
    async fn merge_buckets_nulls_and_errors() {
        let ctx = context();
        histogram_table(&ctx);
        let sql = "SELECT merge_buckets(bucket_counts) FROM h WHERE bucket_counts IS NULL";
        assert_eq!(lists(&ctx, sql).await, vec![None]);
        let sql = "SELECT merge_buckets(bucket_counts) FROM h WHERE false";
        assert_eq!(lists(&ctx, sql).await, vec![None]);
        // Int64 lists and null elements (as 0).
        let sql = "SELECT merge_buckets(c) FROM (VALUES ([1, 2]), ([NULL, 5]), (NULL)) AS t(c)";
        assert_eq!(lists(&ctx, sql).await, vec![Some(vec![Some(1), Some(7)])]);

        let message = error(&ctx, "SELECT merge_buckets(bucket_counts) FROM h").await;
        assert!(
            message.contains("different lengths (3 and 2)")
                || message.contains("different lengths (2 and 3)"),
            "{message}"
        );
        let message = error(&ctx, "SELECT merge_buckets([1.5])").await;
        assert!(message.contains("must be a list of integers"), "{message}");
    }

    #[tokio::test]
    async fn registered_with_documentation() {
        let ctx = context();
        let state = ctx.state();
        for name in ["increase", "rate", "merge_buckets"] {
            let udaf = state.aggregate_functions().get(name).unwrap();
            assert!(udaf.documentation().is_some(), "{name}");
        }
        let udf = state.scalar_functions().get("histogram_quantile").unwrap();
        assert!(udf.documentation().is_some());
    }

    #[test]
    fn bucket_quantile_by_hand() {
        let bounds = [1.0, 2.0, 5.0, 10.0];
        let counts = [2.0, 4.0, 2.0, 1.0, 1.0];
        approx(bucket_quantile(0.5, &bounds, &counts).unwrap(), 1.75);
        approx(bucket_quantile(0.99, &bounds, &counts).unwrap(), 10.0);
        assert_eq!(bucket_quantile(f64::NAN, &bounds, &counts).unwrap(), None);
        assert_eq!(counter_increase(&[(0, 1.0)]), None);
        assert_eq!(counter_increase(&[(0, 3.0), (1, 1.0), (2, 2.0)]), Some(2.0));
    }
}
