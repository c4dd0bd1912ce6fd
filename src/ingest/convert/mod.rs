//! Pure functions from OTLP protobuf messages to Arrow record batches, one
//! file per signal. The network layer only decodes and hands over; nothing
//! here does I/O, so the same code serves gRPC, HTTP, tests and benches.
//!
//! Items that cannot be represented (ids of the wrong length, times past
//! 2262) are rejected one by one and counted for OTLP's partial success; the
//! rest of the request is kept.

pub mod common;
pub mod estimate;
pub mod logs;
pub mod metrics;
pub mod spans;

use arrow::array::RecordBatch;

pub use common::Rejections;

/// The rows of one export request, and the items that were rejected.
#[derive(Debug)]
pub struct Converted {
    pub batch: RecordBatch,
    pub rejected: Rejections,
}

/// The reference of the telemetry tables, in Markdown, generated from the
/// schemas and [`spans::COLUMN_DOCS`] and its siblings: `docs/tables.md` is
/// this text, and a test keeps the two equal.
pub fn tables_markdown() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# Telemetry tables\n\n\
         Generated from the code's own schemas (`homeostat::ingest::convert::tables_markdown`);\n\
         a test fails when this file and the code disagree. Regenerate with\n\
         `HOMEOSTAT_BLESS=1 cargo test --test it docs`.\n\n\
         Times are `Timestamp(Nanosecond, \"UTC\")`. Attribute maps are `Map<Utf8, Utf8>`:\n\
         `attributes['http.route']`; non-string values are stored as text (integers and\n\
         doubles as decimal, booleans as `true`/`false`, bytes as base64, arrays and\n\
         maps as JSON), so compare numbers with a cast:\n\
         `CAST(attributes['http.response.status_code'] AS BIGINT) >= 500`.\n",
    );
    let tables = [
        (
            "spans",
            "One row per span.",
            spans::schema(),
            spans::COLUMN_DOCS,
        ),
        (
            "metrics",
            "One row per data point, of every metric type.",
            metrics::schema(),
            metrics::COLUMN_DOCS,
        ),
        (
            "logs",
            "One row per log record.",
            logs::schema(),
            logs::COLUMN_DOCS,
        ),
        (
            "decisions",
            "The episodic memory: one row per decision, as it stands now (see docs/memory.md).",
            crate::memory::tables::decisions_schema(),
            crate::memory::tables::DECISION_COLUMN_DOCS,
        ),
        (
            "facts",
            "The episodic memory: every version of every fact, SCD-2 style.",
            crate::memory::tables::facts_schema(),
            crate::memory::tables::FACT_COLUMN_DOCS,
        ),
    ];
    for (name, what, schema, docs) in tables {
        let _ = write!(
            out,
            "\n## `{name}`\n\n{what}\n\n| column | type | nullable | meaning |\n|---|---|---|---|\n"
        );
        for field in schema.fields() {
            let doc = docs
                .iter()
                .find(|(c, _)| c == field.name())
                .map_or("**undocumented**", |(_, d)| d);
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {} | {} |",
                field.name(),
                field.data_type(),
                if field.is_nullable() { "yes" } else { "no" },
                doc
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
