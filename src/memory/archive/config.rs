//! `[archive]` settings: plain data, checked by [`ArchiveConfig::validate`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ArchiveError, signal_of};

/// `[archive]`: telemetry kept on object storage after it leaves memory.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveConfig {
    /// How long archived telemetry is kept, counted from the end of its UTC
    /// hour; applies to every table without its own entry in `tables`.
    #[serde(with = "crate::serde_duration")]
    pub retention: Duration,
    /// Per-table retention, keyed by table name (`spans`, `logs`, `metrics`).
    pub tables: BTreeMap<String, TableRetention>,
    /// A node merges its files of an hour into one once the hour ended this
    /// long ago: late data still arriving lands in new files meanwhile.
    #[serde(with = "crate::serde_duration")]
    pub compact_after: Duration,
    /// How often rows in memory are written to the archive: what a lost
    /// node takes with it (with its disk, and so its write-ahead log) is at
    /// most this much recent telemetry. Flushes also run as soon as
    /// unarchived rows fill a quarter of the memory budget.
    #[serde(with = "crate::serde_duration")]
    pub flush_interval: Duration,
}

/// `[archive.tables.<table>]`: one table's own retention.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TableRetention {
    /// How long the table's archived telemetry is kept.
    #[serde(with = "crate::serde_duration")]
    pub retention: Duration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(90 * 24 * 3600),
            tables: BTreeMap::new(),
            compact_after: Duration::from_secs(3600),
            flush_interval: Duration::from_secs(60),
        }
    }
}

impl ArchiveConfig {
    /// Checks what serde cannot: table names and non-zero retentions.
    pub fn validate(&self) -> Result<(), ArchiveError> {
        let invalid = |key: String, message: &str| {
            Err(ArchiveError::Config {
                key,
                message: message.to_owned(),
            })
        };
        if self.retention.is_zero() {
            return invalid("archive.retention".into(), "must be longer than 0s");
        }
        if self.flush_interval.is_zero() {
            return invalid("archive.flush_interval".into(), "must be longer than 0s");
        }
        for (table, t) in &self.tables {
            if signal_of(table).is_none() {
                return invalid(
                    format!("archive.tables.{table}"),
                    "unknown table: the archived tables are spans, logs and metrics",
                );
            }
            if t.retention.is_zero() {
                return invalid(
                    format!("archive.tables.{table}.retention"),
                    "must be longer than 0s",
                );
            }
        }
        Ok(())
    }

    /// The retention of `table`: its own, or the default.
    pub fn retention(&self, table: &str) -> Duration {
        self.tables
            .get(table)
            .map_or(self.retention, |t| t.retention)
    }
}
