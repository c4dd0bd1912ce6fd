//! Rule files as users write them: one TOML file per rule, parsed into plain
//! data with positions kept for error messages (`file:line: message`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::line_column;

/// Suffix of rule test files, which live beside the rules but are not rules.
pub const TEST_SUFFIX: &str = ".test.toml";

fn default_every() -> Duration {
    Duration::from_secs(15)
}

fn default_window() -> Duration {
    Duration::from_secs(60)
}

/// A rule file. Only `sql` (or `sql_file`) is required.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Unique name of the rule; defaults to the file's stem.
    pub name: Option<String>,
    /// What the rule detects, for people.
    #[serde(default)]
    pub description: String,
    /// Evaluation interval.
    #[serde(default = "default_every", with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub every: Duration,
    /// The event-time range the query sees.
    #[serde(default = "default_window", with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub window: Duration,
    /// Allowed lateness: the window ends this long before now, so that data
    /// still in flight from SDK batches is counted.
    #[serde(default, with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub lateness: Duration,
    /// How long an instance must match before it fires; "0s" fires at once.
    #[serde(default, rename = "for", with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub for_: Duration,
    /// How long a firing instance keeps firing after it stops matching.
    #[serde(default, with = "crate::serde_duration")]
    #[schemars(with = "crate::rules::schema::HumanDuration")]
    pub keep_firing_for: Duration,
    /// Labels added to every instance (severity, team, ...).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The detection query: each row it returns is an alert instance.
    pub sql: Option<String>,
    /// A file holding the query, relative to the rule file.
    pub sql_file: Option<PathBuf>,
    /// Columns that identify an instance; default: every string column.
    pub key: Option<Vec<String>>,
    /// The remediation run when an instance fires.
    pub action: Option<ActionFile>,
}

pub use crate::act::config::ActionFile;

/// A problem in a rule file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl RuleError {
    pub fn new(file: &Path, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: line.max(1),
            message: message.into(),
        }
    }
}

/// Parses a rule file's text.
pub fn parse(path: &Path, text: &str) -> Result<RuleFile, RuleError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_column(text, s.start).0);
        RuleError::new(path, line, e.message().trim_end())
    })
}

/// The 1-based line where `key = ...` is written at the top level or in a
/// section, or 1 when absent: where to point an error about that key.
pub fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// The line where the text of `key`'s string value starts: the line after
/// `key = """` when the string opens with a newline, else the key's own line.
pub fn value_start_line(text: &str, key: &str) -> usize {
    let line = key_line(text, key);
    let opens_block = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('=').map(|(_, v)| v.trim()))
        .is_some_and(|v| v == "\"\"\"" || v == "'''");
    if opens_block { line + 1 } else { line }
}

/// Every rule file under `dir` (recursively), sorted: `*.toml` but not
/// `*.test.toml`.
pub fn discover(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| RuleError::new(&d, 1, format!("cannot read rules folder: {e}")))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| RuleError::new(&d, 1, format!("cannot read rules folder: {e}")))?;
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_rule_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Whether a path names a rule file (as opposed to a test file or another file).
pub fn is_rule_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".toml") && !name.ends_with(TEST_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_point_at_the_line() {
        let text = "name = \"x\"\nsql = \"SELECT 1\"\nwindow = \"soon\"\n";
        let e = parse(Path::new("r.toml"), text).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(
            e.to_string()
                .starts_with("r.toml:3: invalid duration \"soon\""),
            "{e}"
        );
        let e = parse(Path::new("r.toml"), "sql = \"SELECT 1\"\n\nthreshold = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "r.toml:3: unknown field `threshold`, expected one of `name`, `description`, `every`, `window`, `lateness`, `for`, `keep_firing_for`, `labels`, `sql`, `sql_file`, `key`, `action`"
        );
    }

    #[test]
    fn defaults_and_positions() {
        let text =
            "description = \"d\"\nsql = \"\"\"\nSELECT 1\n\"\"\"\n[action]\nscript = \"a.rhai\"\n";
        let r = parse(Path::new("r.toml"), text).unwrap();
        assert_eq!(r.every, Duration::from_secs(15));
        assert_eq!(r.for_, Duration::ZERO);
        assert_eq!(value_start_line(text, "sql"), 3);
        assert_eq!(key_line(text, "script"), 6);
        assert_eq!(r.action.unwrap().script.unwrap(), PathBuf::from("a.rhai"));
    }
}
