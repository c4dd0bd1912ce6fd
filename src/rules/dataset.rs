//! Regression datasets: a past incident, captured from the archive and the
//! decision log, that `homeostat test` runs like a hand-written test.
//!
//! `homeostat capture` writes, for a period and a set of rules:
//!
//! - `{table}.parquet`: the archived telemetry those rules read, and only
//!   that: the tables their plans scan, the columns they read (plus the
//!   ones every row must have, left empty), the rows of their windows, with
//!   listed attributes dropped or hashed, and times moved onto the test's
//!   clock. Rows are in a canonical order, so the same period captures to
//!   the same bytes.
//! - `dataset.test.toml`: a test file whose `[dataset]` section says what
//!   was captured (period, rules and the hash of their sources, content
//!   hash) and whose `[[test]]` expects the decisions recorded then.
//!
//! Datasets are versioned like the memory's facts (SCD-2): a capture goes
//! to `OUT/v{N}/`; a capture equal to the newest version writes nothing; a
//! different one is the next version, which `supersedes` the previous. No
//! version is edited in place: `homeostat test` checks the content hash
//! and runs the newest version only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, MapArray,
    MapBuilder, RecordBatch, StringArray, StringBuilder, StructArray, TimestampNanosecondArray,
    UInt32Array, new_empty_array, new_null_array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, TimeUnit, TimestampNanosecondType};
use bytes::Bytes;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RuleEngine;
use super::testing::{ExpectedAction, ORIGIN, TestCase, TestFile};
use crate::act::policy::rfc3339;
use crate::decisions::{RunStatus, Verdict};
use crate::ingest::Signal;
use crate::internal_events::Metrics;
use crate::memory::{Storage, audit, load, replay};
use crate::store::{Store, StoreOptions};

/// The test file of each version.
pub const MANIFEST: &str = "dataset.test.toml";

/// The `[dataset]` section of a captured test file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    /// The dataset's name: its folder's.
    pub name: String,
    /// 1, 2, ...: a capture that differs from the newest version is the
    /// next one; none is edited in place.
    pub version: u32,
    /// The version this one replaces: `homeostat test` runs the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supersedes: Option<u32>,
    /// `sha256:` of the content: telemetry files, expected decisions,
    /// period, rules hash and attribute lists. Equal captures, equal hash.
    pub content_hash: String,
    /// `sha256:` of the captured rules' sources (SQL, settings, scripts)
    /// when captured: the version of the rules the record was made with.
    pub rules_hash: String,
    /// The rules whose telemetry and decisions were captured.
    pub rules: Vec<String>,
    /// The period captured, RFC 3339 UTC: decisions in `[from, to)`.
    pub from: String,
    pub to: String,
    /// The wall-clock time of the test's time zero.
    pub origin: String,
    /// Telemetry rows per table.
    pub rows: BTreeMap<String, usize>,
    /// Attributes removed from every attribute map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_attributes: Vec<String>,
    /// Attributes whose values were replaced by `sha256:` of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hashed_attributes: Vec<String>,
}

/// Telemetry rows in a Parquet file, their times on the test's clock.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParquetFixture {
    /// `spans`, `metrics` or `logs`.
    pub table: String,
    /// Relative to the test file.
    pub file: PathBuf,
}

/// What to capture.
#[derive(Debug, Clone)]
pub struct Capture {
    pub storage: Storage,
    pub rules_dir: PathBuf,
    /// Empty: every rule that loads.
    pub rules: Vec<String>,
    /// UTC nanoseconds.
    pub from: i64,
    pub to: i64,
    /// The dataset's folder; versions go to `v{N}/` under it.
    pub out: PathBuf,
    pub drop_attributes: Vec<String>,
    pub hash_attributes: Vec<String>,
}

/// What a capture wrote.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The version's folder.
    pub dir: PathBuf,
    pub info: DatasetInfo,
    /// False when the newest version already had this content.
    pub created: bool,
    /// Decisions expected.
    pub decisions: usize,
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The tables and columns `plan` reads.
fn columns_read(plan: &LogicalPlan, into: &mut BTreeMap<String, BTreeSet<String>>) {
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let columns = into.entry(scan.table_name.table().to_owned()).or_default();
            for field in scan.projected_schema.fields() {
                columns.insert(field.name().clone());
            }
            // Filters the scan answers itself need their columns too.
            for filter in &scan.filters {
                for c in filter.column_refs() {
                    columns.insert(c.name.clone());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// What is done to every column on the way into a dataset.
struct Rewrite<'a> {
    drop: &'a [String],
    hash: &'a [String],
    /// Added to every non-zero timestamp.
    shift: i64,
    /// The values hashed, to hash them too where the expected decisions
    /// repeat them (an instance's labels, a host call's target).
    seen: std::cell::RefCell<BTreeSet<String>>,
}

fn hashed(value: &str) -> String {
    format!(
        "sha256:{}",
        const_hex::encode(Sha256::digest(value.as_bytes()))
    )
}

impl Rewrite<'_> {
    fn array(&self, array: &ArrayRef) -> Result<ArrayRef, String> {
        let out: ArrayRef = match array.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
                let shifted: TimestampNanosecondArray = array
                    .as_primitive::<TimestampNanosecondType>()
                    .unary(|t| if t == 0 { 0 } else { t + self.shift });
                Arc::new(shifted.with_timezone_opt(tz.clone()))
            }
            DataType::Map(_, _) if !(self.drop.is_empty() && self.hash.is_empty()) => {
                let scrubbed = self.map(array.as_map())?;
                arrow::compute::cast(&scrubbed, array.data_type()).map_err(|e| e.to_string())?
            }
            DataType::List(field) => {
                let list = array.as_list::<i32>();
                Arc::new(
                    ListArray::try_new(
                        field.clone(),
                        list.offsets().clone(),
                        self.array(list.values())?,
                        list.nulls().cloned(),
                    )
                    .map_err(|e| e.to_string())?,
                )
            }
            DataType::Struct(fields) => {
                let s = array.as_struct();
                let columns = s
                    .columns()
                    .iter()
                    .map(|c| self.array(c))
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(
                    StructArray::try_new(fields.clone(), columns, s.nulls().cloned())
                        .map_err(|e| e.to_string())?,
                )
            }
            _ => array.clone(),
        };
        Ok(out)
    }

    /// A string map without the dropped keys, the hashed ones hashed.
    fn map(&self, map: &MapArray) -> Result<ArrayRef, String> {
        let keys = map.keys().as_string::<i32>();
        let values = map.values().as_string::<i32>();
        let offsets = map.value_offsets();
        let mut b = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for row in 0..map.len() {
            if map.is_null(row) {
                b.append(false).map_err(|e| e.to_string())?;
                continue;
            }
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                let key = keys.value(i);
                if self.drop.iter().any(|d| d == key) {
                    continue;
                }
                b.keys().append_value(key);
                if values.is_null(i) {
                    b.values().append_null();
                } else if self.hash.iter().any(|h| h == key) {
                    let value = values.value(i);
                    self.seen.borrow_mut().insert(value.to_owned());
                    b.values().append_value(hashed(value));
                } else {
                    b.values().append_value(values.value(i));
                }
            }
            b.append(true).map_err(|e| e.to_string())?;
        }
        Ok(Arc::new(b.finish()))
    }
}

/// The rows of `batch` in a canonical order: by their JSON encoding, so that
/// the same rows give the same file whatever order they were read in.
fn canonical(batch: &RecordBatch) -> Result<RecordBatch, String> {
    let mut json = Vec::new();
    {
        let mut w = arrow_json::LineDelimitedWriter::new(&mut json);
        w.write(batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    let text = String::from_utf8(json).map_err(|e| e.to_string())?;
    let mut rows: Vec<(&str, u32)> = text.lines().zip(0u32..).collect();
    rows.sort();
    let indices = UInt32Array::from(rows.into_iter().map(|(_, i)| i).collect::<Vec<_>>());
    arrow::compute::take_record_batch(batch, &indices).map_err(|e| e.to_string())
}

fn parquet_bytes(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The content hash of a dataset: what it holds, not its name or version.
pub fn content_hash(info: &DatasetInfo, cases: &[TestCase], files: &[(String, Vec<u8>)]) -> String {
    #[derive(Serialize)]
    struct Tests<'a> {
        test: &'a [TestCase],
    }
    let mut h = Sha256::new();
    h.update(b"homeostat dataset 1\n");
    for part in [&info.rules_hash, &info.from, &info.to, &info.origin] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    h.update(info.rules.join(",").as_bytes());
    h.update(b"\n");
    h.update(info.dropped_attributes.join(",").as_bytes());
    h.update(b"\n");
    h.update(info.hashed_attributes.join(",").as_bytes());
    h.update(b"\n");
    h.update(
        toml::to_string(&Tests { test: cases })
            .unwrap_or_default()
            .as_bytes(),
    );
    let mut files: Vec<&(String, Vec<u8>)> = files.iter().collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, bytes) in files {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    format!("sha256:{}", const_hex::encode(h.finalize()))
}

/// The versions under a dataset folder, by number.
pub fn versions(root: &Path) -> BTreeMap<u32, PathBuf> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix('v'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if entry.path().join(MANIFEST).is_file() {
            out.insert(n, entry.path());
        }
    }
    out
}

/// Reads a version's test file.
pub fn read_manifest(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))
}

/// The files a dataset's tests load, read back, for its hash.
pub fn fixture_files(base: &Path, cases: &[TestCase]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut files = Vec::new();
    for case in cases {
        for p in &case.parquet {
            let bytes = std::fs::read(base.join(&p.file))
                .map_err(|e| format!("cannot read {}: {e}", base.join(&p.file).display()))?;
            files.push((p.file.display().to_string(), bytes));
        }
    }
    Ok(files)
}

/// Captures a dataset (see the module doc).
pub async fn capture(c: &Capture) -> Result<Captured, String> {
    if c.to <= c.from {
        return Err("--to must be after --from".into());
    }
    // The rules, compiled as `homeostat run` compiles them.
    let store = Arc::new(Store::new(StoreOptions {
        memory_budget: 1 << 20,
        retention: Duration::from_secs(3600),
        partition: Duration::from_secs(60),
        max_age: std::time::Duration::MAX,
        max_future: std::time::Duration::MAX,
        flush_bytes: u64::MAX,
    }));
    let engine = RuleEngine::new(c.rules_dir.clone(), &store, Arc::new(Metrics::new()))
        .map_err(|e| format!("cannot set up the rule engine: {e}"))?;
    let report = engine.reload().await;
    if !report.errors.is_empty() {
        return Err(format!(
            "the rules do not load:\n  {}",
            report.errors.join("\n  ")
        ));
    }
    let names: Vec<String> = if c.rules.is_empty() {
        report.loaded.clone()
    } else {
        c.rules.clone()
    };
    let mut rules = Vec::new();
    for name in &names {
        let loaded = engine.rule(name).ok_or_else(|| {
            format!(
                "no rule named {name:?} under {} (loaded: {})",
                c.rules_dir.display(),
                report.loaded.join(", ")
            )
        })?;
        rules.push(loaded.rule);
    }
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    let mut read: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut rules_hash = Sha256::new();
    for r in &rules {
        columns_read(&r.plan, &mut read);
        rules_hash.update(r.name.as_bytes());
        rules_hash.update(r.source_hash.as_bytes());
    }
    let rules_hash = format!("sha256:{}", const_hex::encode(rules_hash.finalize()));
    let lookback = rules
        .iter()
        .map(|r| nanos(r.window + r.lateness))
        .max()
        .unwrap_or(0);

    // The decisions recorded then: one per episode and trigger (a replica
    // that lost the claim decided nothing of its own).
    let loaded = load(&c.storage)
        .await
        .map_err(|e| format!("cannot read the decision log: {e}"))?;
    let recorded: Vec<crate::decisions::Decision> = audit::decisions(
        &loaded,
        &audit::LogFilter {
            rule: None,
            since: Some(c.from),
        },
    )
    .into_iter()
    .map(|s| s.decision)
    .filter(|d| d.at < c.to && names.contains(&d.rule))
    .filter(|d| d.policy.verdict != Verdict::ClaimedByOther)
    .collect();
    // Time zero on the first decision's evaluation grid, at or before
    // `from`: the test evaluates at the same phase as the live engine did.
    let origin = match recorded.first() {
        Some(d) => {
            let every = rules
                .iter()
                .find(|r| r.name == d.rule)
                .map_or(1, |r| nanos(r.every).max(1));
            d.at - (d.at - c.from + every - 1) / every * every
        }
        None => c.from,
    };
    let shift = ORIGIN - origin;

    // The telemetry they read.
    let ctx = replay::archive_context(&c.storage).await?;
    let rewrite = Rewrite {
        drop: &c.drop_attributes,
        hash: &c.hash_attributes,
        shift,
        seen: Default::default(),
    };
    let mut files = Vec::new();
    let mut rows = BTreeMap::new();
    let mut fixtures = Vec::new();
    for signal in Signal::ALL {
        let Some(used) = read.get(signal.table()) else {
            continue;
        };
        let schema = signal.schema();
        // The columns read, and those no row may lack (left empty when
        // loaded back), in the table's order.
        let columns: Vec<&str> = schema
            .fields()
            .iter()
            .filter(|f| used.contains(f.name()) || f.name() == signal.time_column())
            .map(|f| f.name().as_str())
            .collect();
        let batches = replay::archived(&ctx, signal, c.from - lookback, c.to)
            .await?
            .select_columns(&columns)
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| format!("cannot read the archived {}: {e}", signal.table()))?;
        let Some(first) = batches.first() else {
            rows.insert(signal.table().to_owned(), 0);
            continue;
        };
        let batch =
            arrow::compute::concat_batches(&first.schema(), &batches).map_err(|e| e.to_string())?;
        let rewritten = batch
            .columns()
            .iter()
            .map(|a| rewrite.array(a))
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(batch.schema(), rewritten).map_err(|e| e.to_string())?;
        let batch = canonical(&batch)?;
        let file = format!("{}.parquet", signal.table());
        rows.insert(signal.table().to_owned(), batch.num_rows());
        files.push((file.clone(), parquet_bytes(&batch)?));
        fixtures.push(ParquetFixture {
            table: signal.table().to_owned(),
            file: PathBuf::from(file),
        });
    }

    if rows.values().all(|&n| n == 0) {
        return Err(format!(
            "nothing to capture: the archive in {} holds no {} between {} and {} (telemetry is archived once it leaves memory, and at shutdown; is --data right?)",
            c.storage.location(),
            read.keys()
                .filter(|t| Signal::ALL.iter().any(|s| s.table() == t.as_str()))
                .cloned()
                .collect::<Vec<_>>()
                .join(" or "),
            rfc3339(c.from - lookback),
            rfc3339(c.to)
        ));
    }
    let every = |rule: &str| {
        rules
            .iter()
            .find(|r| r.name == rule)
            .map_or(Duration::from_secs(1), |r| r.every)
    };
    // A hashed value the rules turned into a label or a call's target is
    // hashed there too: the dataset's decisions see only hashes.
    let seen = rewrite.seen.into_inner();
    let label = |value: &str| {
        if seen.contains(value) {
            hashed(value)
        } else {
            value.to_owned()
        }
    };
    // In a call's target the value is part of a URL or a name: replaced
    // where it occurs, when long enough not to be a common fragment.
    let scrub = |text: &str| {
        seen.iter()
            .filter(|raw| raw.len() >= 6)
            .fold(text.to_owned(), |t, raw| {
                t.replace(raw.as_str(), &hashed(raw))
            })
    };
    let actions: Vec<ExpectedAction> = recorded
        .iter()
        .map(|d| {
            let dry_run = d.policy.dry_run;
            let ran = d.run.as_ref().map(|r| r.status).filter(|s| {
                dry_run
                    && matches!(
                        s,
                        RunStatus::Succeeded | RunStatus::Skipped | RunStatus::Failed
                    )
            });
            ExpectedAction {
                rule: d.rule.clone(),
                at: Some(Duration::from_nanos(
                    u64::try_from(d.at - origin).unwrap_or(0),
                )),
                within: Some(every(&d.rule)),
                labels: d
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), label(v)))
                    .collect(),
                trigger: Some(d.trigger),
                // Nobody answers approvals in a test: they stay waiting.
                verdict: Some(match d.policy.verdict {
                    Verdict::Approved | Verdict::Denied | Verdict::Expired => {
                        Verdict::AwaitingApproval
                    }
                    v => v,
                }),
                choice: d.reasoning.decision.as_ref().map(|c| c.option.clone()),
                status: ran,
                calls: ran.map(|_| {
                    d.host_calls
                        .iter()
                        .map(|h| scrub(&format!("{} {}", h.function, h.target)))
                        .collect()
                }),
            }
        })
        .collect();
    let decisions = actions.len();
    let name = c
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("dataset")
        .to_owned();
    let case = TestCase {
        name: format!("incident {} .. {}", rfc3339(c.from), rfc3339(c.to)),
        rules: rules.iter().map(|r| r.name.clone()).collect(),
        // Up to the next whole second at or after `to`.
        duration: Duration::from_secs(
            u64::try_from(c.to - origin)
                .unwrap_or(0)
                .div_ceil(1_000_000_000),
        ),
        spans: Vec::new(),
        logs: Vec::new(),
        series: Vec::new(),
        otlp: Vec::new(),
        parquet: fixtures,
        expect: Vec::new(),
        actions,
    };
    let mut info = DatasetInfo {
        name,
        version: 0,
        supersedes: None,
        content_hash: String::new(),
        rules_hash,
        rules: case.rules.clone(),
        from: rfc3339(c.from),
        to: rfc3339(c.to),
        origin: rfc3339(origin),
        rows,
        dropped_attributes: c.drop_attributes.clone(),
        hashed_attributes: c.hash_attributes.clone(),
    };
    let cases = vec![case];
    info.content_hash = content_hash(&info, &cases, &files);

    // A new version unless the newest has this content.
    std::fs::create_dir_all(&c.out)
        .map_err(|e| format!("cannot create {}: {e}", c.out.display()))?;
    let existing = versions(&c.out);
    if let Some((&n, dir)) = existing.last_key_value() {
        let newest = read_manifest(&dir.join(MANIFEST))?;
        if newest
            .dataset
            .as_ref()
            .is_some_and(|d| d.content_hash == info.content_hash)
        {
            let mut info = info;
            info.version = n;
            info.supersedes = newest.dataset.and_then(|d| d.supersedes);
            return Ok(Captured {
                dir: dir.clone(),
                info,
                created: false,
                decisions,
            });
        }
    }
    let version = existing.keys().next_back().map_or(1, |n| n + 1);
    info.version = version;
    info.supersedes = (version > 1).then(|| version - 1);
    let dir = c.out.join(format!("v{version}"));
    let staging = c.out.join(format!(".v{version}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)
        .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
    for (file, bytes) in &files {
        std::fs::write(staging.join(file), bytes)
            .map_err(|e| format!("cannot write {file}: {e}"))?;
    }
    let manifest = TestFile {
        dataset: Some(info.clone()),
        test: cases,
    };
    let text = format!(
        "# A regression dataset captured by `homeostat capture`; run by `homeostat test`.\n\
         # Never edited: a change is a new version (capture again), checked by content_hash.\n{}",
        toml::to_string(&manifest).map_err(|e| e.to_string())?
    );
    std::fs::write(staging.join(MANIFEST), text)
        .map_err(|e| format!("cannot write {MANIFEST}: {e}"))?;
    std::fs::rename(&staging, &dir)
        .map_err(|e| format!("cannot move the dataset into {}: {e}", dir.display()))?;
    Ok(Captured {
        dir,
        info,
        created: true,
        decisions,
    })
}

/// An array of `n` rows standing for a column a dataset left out: nulls, or
/// the empty value of a column no row may lack.
fn filler(field: &Field, n: usize) -> Result<ArrayRef, String> {
    if field.is_nullable() {
        return Ok(new_null_array(field.data_type(), n));
    }
    let array: ArrayRef = match field.data_type() {
        DataType::Utf8 => Arc::new(StringArray::from(vec![""; n])),
        DataType::Int64 => Arc::new(Int64Array::from(vec![0; n])),
        DataType::UInt32 => Arc::new(UInt32Array::from(vec![0; n])),
        DataType::Float64 => Arc::new(Float64Array::from(vec![0.0; n])),
        DataType::Boolean => Arc::new(BooleanArray::from(vec![false; n])),
        DataType::Timestamp(TimeUnit::Nanosecond, tz) => {
            Arc::new(TimestampNanosecondArray::from(vec![0; n]).with_timezone_opt(tz.clone()))
        }
        DataType::List(item) => Arc::new(
            ListArray::try_new(
                item.clone(),
                OffsetBuffer::new_zeroed(n),
                new_empty_array(item.data_type()),
                None,
            )
            .map_err(|e| e.to_string())?,
        ),
        DataType::Map(entries, sorted) => Arc::new(
            MapArray::try_new(
                entries.clone(),
                OffsetBuffer::new_zeroed(n),
                new_empty_array(entries.data_type()).as_struct().clone(),
                None,
                *sorted,
            )
            .map_err(|e| e.to_string())?,
        ),
        other => {
            return Err(format!(
                "cannot stand in for column {} of type {other}",
                field.name()
            ));
        }
    };
    Ok(array)
}

/// Loads a dataset's Parquet file into `store`, the columns it lacks filled.
pub fn load_parquet(store: &Store, fixture: &ParquetFixture, base: &Path) -> Result<(), String> {
    let path = base.join(&fixture.file);
    let signal = Signal::ALL
        .into_iter()
        .find(|s| s.table() == fixture.table)
        .ok_or_else(|| format!("{}: no table {:?}", path.display(), fixture.table))?;
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))
        .and_then(|b| b.build())
        .map_err(|e| format!("{}: not a Parquet file: {e}", path.display()))?;
    let schema = signal.schema();
    for batch in reader {
        let batch = batch.map_err(|e| format!("{}: {e}", path.display()))?;
        let n = batch.num_rows();
        let columns = schema
            .fields()
            .iter()
            .map(|f| match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
                Some(c) => arrow::compute::cast(c, f.data_type())
                    .map_err(|e| format!("{}: column {}: {e}", path.display(), f.name())),
                None => filler(f, n),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let full = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        store
            .insert(signal, full, ORIGIN)
            .map_err(|e| format!("cannot store {}: {e}", path.display()))?;
    }
    Ok(())
}
