//! docs/tables.md is generated from the code's schemas and must stay equal
//! to what the code generates.

use homeostat::ingest::Signal;
use homeostat::ingest::convert::{logs, metrics, spans, tables_markdown};

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/tables.md");

#[test]
fn docs_tables_md_matches_the_schemas() {
    let generated = tables_markdown();
    if std::env::var_os("HOMEOSTAT_BLESS").is_some() {
        std::fs::write(DOC, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(DOC).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/tables.md is out of date: run HOMEOSTAT_BLESS=1 cargo test --test it docs"
    );
}

#[test]
fn every_column_is_documented_and_every_doc_is_a_column() {
    for (signal, docs) in [
        (Signal::Traces, spans::COLUMN_DOCS),
        (Signal::Metrics, metrics::COLUMN_DOCS),
        (Signal::Logs, logs::COLUMN_DOCS),
    ] {
        let schema = signal.schema();
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let documented: Vec<&str> = docs.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            columns,
            documented,
            "{}: columns and docs differ",
            signal.table()
        );
    }
    use homeostat::memory::tables;
    for (name, schema, docs) in [
        (
            "decisions",
            tables::decisions_schema(),
            tables::DECISION_COLUMN_DOCS,
        ),
        ("facts", tables::facts_schema(), tables::FACT_COLUMN_DOCS),
    ] {
        let columns: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let documented: Vec<&str> = docs.iter().map(|(c, _)| *c).collect();
        assert_eq!(columns, documented, "{name}: columns and docs differ");
    }
}
