//! The telemetry archive: what leaves the in-memory windows is written to
//! object storage as Parquet instead of vanishing, and stays queryable with
//! SQL with no instance running.
//!
//! # Layout
//!
//! ```text
//! archive/{table}/date=YYYY-MM-DD/hour=HH/{node}-{offset}_w{nonce}_{seq}.parquet
//! archive/{table}/date=YYYY-MM-DD/hour=HH/{node}-{offset}_m{digest}.parquet
//! ```
//!
//! One file per table, UTC hour of the table's time column and write,
//! hive-partitioned so that DuckDB (`read_parquet('archive/spans/**/*.parquet',
//! hive_partitioning = true)`), Spark, Trino and DataFusion read it as is;
//! `date` and `hour` are only in the path. Files are standard Parquet (zstd,
//! page statistics, the Arrow schema embedded); times are
//! `TIMESTAMP(NANOS, UTC)`, which Spark reads with
//! `spark.sql.legacy.parquet.nanosAsLong` or as `long`.
//!
//! `offset` is the nanoseconds from the start of the hour to the file's
//! first row, so names sort by time. `_w…` files are written by
//! [`Archive::write`]: `nonce` is 64 random bits drawn per [`Archive`] and
//! `seq` a counter, so a node never reuses a name across restarts, and
//! writes are create-only besides. `_m…` files are merges made by
//! [`Archive::compact`]; `digest` is a hash of their inputs' names.
//!
//! # Compaction
//!
//! Once an hour has been closed for `compact_after`, each node merges its own
//! files of that hour into one, sorted by time (several replicas share a
//! bucket; a node never touches another's files, and node ids must differ
//! between replicas running at once). The merged file is written first, then
//! the inputs are deleted; the merged file lists its inputs in its Parquet
//! key-value metadata (`homeostat.archive.inputs`). A crash between the two
//! steps leaves rows twice for queries until the next pass (a minute later
//! under [`Archive::run`], or the first pass after a restart), which
//! deletes the inputs a merged file already covers before anything else.
//! Two processes of one node id merging the same inputs write the same
//! name (the digest), so the second finds it there instead of duplicating.
//!
//! # Retention
//!
//! Whole hour partitions, of every node, are deleted once the hour ended
//! longer than the table's retention ago.

mod codec;
mod config;
pub mod flush;
mod layout;
mod read;
mod run;
mod table;

pub use config::{ArchiveConfig, TableRetention};
pub use flush::{FlushReport, FlushedFile, Flusher};

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::{interleave_record_batch, min};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::FOOTER_SIZE;
use datafusion::parquet::file::metadata::{FooterTail, KeyValue, ParquetMetaDataReader};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt as _};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::storage::{Storage, StorageError};
use crate::ingest::{Signal, now_nanos};
use codec::{
    decode_files, encode_blocking, sorting_column, split_by_hour, time_column, time_order,
};
use layout::{FileName, Hour, parse_date};

/// The folder every table's partitions live under.
pub const PREFIX: &str = "archive";
/// Key-value metadata of every file: the node that wrote it.
pub const NODE_KEY: &str = "homeostat.archive.node";
/// Key-value metadata of merged files: the names of the files merged, a
/// JSON array.
pub const INPUTS_KEY: &str = "homeostat.archive.inputs";

const HOUR: i64 = 3_600_000_000_000;
const DAY: i64 = 24 * HOUR;
/// Parquet bytes merged into one file at most: the merge holds its inputs
/// in memory (decoded, several times this), so an hour with more data keeps
/// a few merged files rather than one.
const MERGE_INPUT_LIMIT: u64 = 64 * 1024 * 1024;
/// Rows per batch handed to the Parquet writer while merging.
const MERGE_CHUNK_ROWS: usize = 8192;

/// Why the archive could not do something. Storage errors name the object.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("invalid setting {key}: {message}")]
    Config { key: String, message: String },
    #[error("invalid archive node id {node:?}: {message}")]
    Node { node: String, message: String },
    #[error("no archived table is called {table:?}: the tables are spans, logs and metrics")]
    UnknownTable { table: String },
    #[error("cannot archive a batch of {table}: {message}")]
    Batch {
        table: &'static str,
        message: String,
    },
    #[error("cannot encode {path} as Parquet: {source}")]
    Encode { path: String, source: ParquetError },
    #[error("cannot read Parquet file {path}: {source}")]
    Decode { path: String, source: ParquetError },
    #[error("archive storage: {0}")]
    Storage(#[from] StorageError),
    /// The local side of a flush: the write-ahead log's folder, a task.
    #[error("{0}")]
    Io(String),
}

impl ArchiveError {
    /// `user` (configuration), `external` (the storage) or `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            ArchiveError::Config { .. }
            | ArchiveError::Node { .. }
            | ArchiveError::UnknownTable { .. } => "user",
            ArchiveError::Storage(_) | ArchiveError::Io(_) => "external",
            ArchiveError::Batch { .. }
            | ArchiveError::Encode { .. }
            | ArchiveError::Decode { .. } => "internal",
        }
    }

    /// Whether trying again later can help: only when the storage failed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ArchiveError::Storage(StorageError::Store { .. } | StorageError::Sync { .. })
                | ArchiveError::Io(_)
        )
    }
}

/// What [`Archive::write`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// The files created, relative to the storage's root.
    pub files: Vec<String>,
    pub rows: u64,
    /// Parquet bytes written.
    pub bytes: u64,
}

/// One partition's compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    pub table: &'static str,
    /// `archive/{table}/date=…/hour=…`
    pub partition: String,
    /// The merged files created.
    pub merged: Vec<String>,
    /// Files merged and then deleted.
    pub inputs: usize,
    /// Rows in the merged files.
    pub rows: u64,
    /// Leftover inputs of an earlier, interrupted merge, deleted.
    pub repaired: usize,
}

/// A partition whose compaction failed; it is tried again next pass.
#[derive(Debug)]
pub struct CompactionFailure {
    pub table: &'static str,
    pub partition: String,
    pub error: ArchiveError,
}

/// What a compaction pass did.
#[derive(Debug, Default)]
pub struct CompactReport {
    pub compactions: Vec<Compaction>,
    pub failures: Vec<CompactionFailure>,
}

/// A partition deleted by retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredPartition {
    pub table: &'static str,
    /// `archive/{table}/date=…/hour=…`
    pub partition: String,
    pub files: usize,
    pub bytes: u64,
}

/// The archive of one node on one storage.
#[derive(Debug)]
pub struct Archive {
    storage: Storage,
    node: String,
    config: ArchiveConfig,
    /// Makes this instance's file names differ from every other run's.
    nonce: u64,
    seq: AtomicU64,
    /// Hour partitions written to since a compaction pass last looked.
    dirty: Mutex<HashSet<(Signal, Hour)>>,
    /// Whether a compaction pass has looked at every partition since start.
    scanned: AtomicBool,
    /// The epoch of this node's flush files (the log folder's), and the
    /// last committed flush: files of later flushes are being written, or
    /// were abandoned, and are neither read nor merged.
    epoch: AtomicU64,
    committed: AtomicU64,
}

impl Archive {
    /// The archive of `node` (a replica's stable id: letters, digits, `-`,
    /// `_`, `.`) on `storage`.
    pub fn new(storage: Storage, node: &str, config: ArchiveConfig) -> Result<Self, ArchiveError> {
        config.validate()?;
        let bad = |message: &str| {
            Err(ArchiveError::Node {
                node: node.to_owned(),
                message: message.to_owned(),
            })
        };
        if node.is_empty() || node.len() > 128 {
            return bad("must be 1 to 128 characters long");
        }
        if !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad("may only hold ASCII letters, digits, '-', '_' and '.'");
        }
        let mut random = RandomState::new().build_hasher();
        random.write_i64(now_nanos());
        random.write_u32(std::process::id());
        Ok(Self {
            storage,
            node: node.to_owned(),
            config,
            nonce: random.finish(),
            seq: AtomicU64::new(0),
            dirty: Mutex::new(HashSet::new()),
            scanned: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            committed: AtomicU64::new(u64::MAX),
        })
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn config(&self) -> &ArchiveConfig {
        &self.config
    }

    /// Which of this node's flush files count: those of `epoch` up to flush
    /// `committed` (see [`Flusher`]).
    pub fn set_flushes(&self, epoch: u64, committed: u64) {
        self.epoch.store(epoch, Ordering::Release);
        self.committed.store(committed, Ordering::Release);
    }

    /// Whether the archive has any file of `signal`'s table (one listing of
    /// its date folders).
    pub async fn has_files(&self, signal: Signal) -> Result<bool, ArchiveError> {
        Ok(!self
            .storage
            .folders(&self.table_path(signal))
            .await?
            .is_empty())
    }

    /// Whether a file of this node counts as written: not one of a flush
    /// after `committed` in this epoch.
    fn committed_file(&self, name: &FileName<'_>, committed: u64) -> bool {
        match name.flush {
            Some((epoch, flush)) => {
                epoch != self.epoch.load(Ordering::Acquire) || flush <= committed
            }
            None => true,
        }
    }

    /// Writes `batches` of `table`, one Parquet file per UTC hour of their
    /// rows. Every hour is tried; on failure the first error is returned,
    /// and the hours written before or after it stay written.
    pub async fn write(
        &self,
        table: &str,
        batches: Vec<RecordBatch>,
    ) -> Result<WriteReport, ArchiveError> {
        let signal = signal_of(table).ok_or_else(|| ArchiveError::UnknownTable {
            table: table.to_owned(),
        })?;
        let (report, failed) = self
            .write_hours(signal, split_by_hour(signal, batches)?)
            .await;
        match failed.into_iter().next() {
            Some((_, _, error)) => Err(error),
            None => Ok(report),
        }
    }

    /// Writes each hour's batches to a file; returns what was written, and
    /// the hours that failed with their batches, to try again.
    async fn write_hours(
        &self,
        signal: Signal,
        hours: BTreeMap<Hour, Vec<RecordBatch>>,
    ) -> (WriteReport, Vec<(Hour, Vec<RecordBatch>, ArchiveError)>) {
        let mut report = WriteReport::default();
        let mut failed = Vec::new();
        for (hour, batches) in hours {
            match self.write_hour(signal, hour, &batches).await {
                Ok((file, bytes)) => {
                    report.rows += rows(&batches);
                    report.bytes += bytes;
                    report.files.push(file);
                }
                Err(error) => failed.push((hour, batches, error)),
            }
        }
        (report, failed)
    }

    async fn write_hour(
        &self,
        signal: Signal,
        hour: Hour,
        batches: &[RecordBatch],
    ) -> Result<(String, u64), ArchiveError> {
        let first = batches
            .iter()
            .filter_map(|b| min(time_column(signal, b).ok()?))
            .min()
            .unwrap_or(hour.start());
        let offset = first - hour.start();
        let folder = self.partition_path(signal, hour);
        let mut name = self.next_write_name(offset);
        let shown = self.storage.relative(&folder.clone().join(name.as_str()));
        let metadata = vec![KeyValue::new(NODE_KEY.into(), self.node.clone())];
        let (schema, owned) = (signal.schema(), batches.to_vec());
        let bytes = encode_blocking(shown, schema, metadata, None, move |w| {
            owned.iter().try_for_each(|b| w.write(b))
        })
        .await?;
        let size = bytes.len() as u64;
        // A name already taken can only be another process of this node id
        // whose random nonce collided: take the next name.
        for _ in 0..3 {
            let path = folder.clone().join(name.as_str());
            match self.storage.create(&path, bytes.clone()).await {
                Ok(()) => {
                    self.dirty.lock().insert((signal, hour));
                    return Ok((self.storage.relative(&path), size));
                }
                Err(StorageError::Exists { .. }) => name = self.next_write_name(offset),
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::Exists {
            path: folder.join(name.as_str()).to_string(),
        }
        .into())
    }

    fn next_write_name(&self, offset: i64) -> String {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-{offset:013}_w{:016x}_{seq}.parquet",
            self.node, self.nonce
        )
    }

    fn table_path(&self, signal: Signal) -> Path {
        self.storage.path(&[PREFIX, signal.table()])
    }

    fn partition_path(&self, signal: Signal, hour: Hour) -> Path {
        let (date, hour) = hour.folders();
        self.storage.path(&[PREFIX, signal.table(), &date, &hour])
    }

    /// Merges this node's files of every hour closed for `compact_after`
    /// (`now` in UTC nanoseconds). The first pass of an instance looks at
    /// every partition, to finish what an earlier run left; later passes
    /// only at the partitions written to since.
    pub async fn compact(&self, now: i64) -> CompactReport {
        let mut report = CompactReport::default();
        let full = !self.scanned.load(Ordering::Acquire);
        let mut complete = true;
        let after = nanos(self.config.compact_after);
        for signal in Signal::ALL {
            let partitions = if full {
                match self.list_partitions(signal).await {
                    Ok(all) => all,
                    Err(error) => {
                        complete = false;
                        report.failures.push(CompactionFailure {
                            table: signal.table(),
                            partition: self.storage.relative(&self.table_path(signal)),
                            error,
                        });
                        continue;
                    }
                }
            } else {
                let hours: Vec<Hour> = {
                    let mut dirty = self.dirty.lock();
                    let due: Vec<Hour> = dirty
                        .iter()
                        .filter(|(s, h)| *s == signal && h.end().saturating_add(after) <= now)
                        .map(|(_, h)| *h)
                        .collect();
                    for h in &due {
                        dirty.remove(&(signal, *h));
                    }
                    due
                };
                let mut partitions = BTreeMap::new();
                for hour in hours {
                    match self.storage.list(&self.partition_path(signal, hour)).await {
                        Ok(objects) => {
                            partitions.insert(hour, objects);
                        }
                        Err(e) => {
                            self.dirty.lock().insert((signal, hour));
                            report.failures.push(CompactionFailure {
                                table: signal.table(),
                                partition: self
                                    .storage
                                    .relative(&self.partition_path(signal, hour)),
                                error: e.into(),
                            });
                        }
                    }
                }
                partitions
            };
            for (hour, objects) in partitions {
                if hour.end().saturating_add(after) > now {
                    // Not due yet: a later pass takes it, if this node has files there.
                    if objects.iter().any(|m| self.owns(m)) {
                        self.dirty.lock().insert((signal, hour));
                    }
                    continue;
                }
                match self.compact_partition(signal, hour, objects).await {
                    Ok(Some(c)) => report.compactions.push(c),
                    Ok(None) => {}
                    Err(error) => {
                        self.dirty.lock().insert((signal, hour));
                        report.failures.push(CompactionFailure {
                            table: signal.table(),
                            partition: self.storage.relative(&self.partition_path(signal, hour)),
                            error,
                        });
                    }
                }
            }
        }
        if full && complete {
            self.scanned.store(true, Ordering::Release);
        }
        report
    }

    /// Every file of a table, by hour partition, in one recursive listing.
    async fn list_partitions(
        &self,
        signal: Signal,
    ) -> Result<BTreeMap<Hour, Vec<ObjectMeta>>, ArchiveError> {
        let root = self.table_path(signal);
        let mut partitions: BTreeMap<Hour, Vec<ObjectMeta>> = BTreeMap::new();
        for meta in self.storage.list(&root).await? {
            let Some(parts) = meta.location.prefix_match(&root) else {
                continue;
            };
            let parts: Vec<_> = parts.collect();
            if let [date, hour, _file] = parts.as_slice()
                && let Some(hour) = Hour::parse(date.as_ref(), hour.as_ref())
            {
                partitions.entry(hour).or_default().push(meta);
            }
        }
        Ok(partitions)
    }

    fn owns(&self, meta: &ObjectMeta) -> bool {
        meta.location
            .filename()
            .and_then(FileName::parse)
            .is_some_and(|f| f.node == self.node)
    }

    async fn compact_partition(
        &self,
        signal: Signal,
        hour: Hour,
        objects: Vec<ObjectMeta>,
    ) -> Result<Option<Compaction>, ArchiveError> {
        let committed = self.committed.load(Ordering::Acquire);
        let own: Vec<(ObjectMeta, bool)> = objects
            .into_iter()
            .filter_map(|meta| {
                let name = FileName::parse(meta.location.filename()?)?;
                let merged = name.merged;
                // A flush still writing (or abandoned) is not merged.
                (name.node == self.node && self.committed_file(&name, committed))
                    .then_some((meta, merged))
            })
            .collect();
        if own.len() < 2 {
            return Ok(None);
        }
        let folder = self.partition_path(signal, hour);
        let mut compaction = Compaction {
            table: signal.table(),
            partition: self.storage.relative(&folder),
            merged: Vec::new(),
            inputs: 0,
            rows: 0,
            repaired: 0,
        };

        // First, finish interrupted merges: inputs a merged file covers go.
        let mut covered = HashSet::new();
        for (meta, _) in own.iter().filter(|(_, merged)| *merged) {
            covered.extend(self.merged_inputs(meta).await?);
        }
        let mut live = Vec::with_capacity(own.len());
        for (meta, _) in own {
            if meta
                .location
                .filename()
                .is_some_and(|n| covered.contains(n))
            {
                self.storage.delete(&meta.location).await?;
                compaction.repaired += 1;
            } else {
                live.push(meta);
            }
        }

        for group in merge_groups(live) {
            let (file, rows) = self.merge(signal, hour, &group).await?;
            for meta in &group {
                self.storage.delete(&meta.location).await?;
            }
            compaction.merged.push(file);
            compaction.inputs += group.len();
            compaction.rows += rows;
        }
        Ok((compaction.repaired > 0 || compaction.inputs > 0).then_some(compaction))
    }

    /// The inputs a merged file records, from its footer alone: two range
    /// reads, whatever the file's size.
    async fn merged_inputs(&self, meta: &ObjectMeta) -> Result<Vec<String>, ArchiveError> {
        let decode = |message: String| ArchiveError::Decode {
            path: self.storage.relative(&meta.location),
            source: ParquetError::General(message),
        };
        let read = async |range: std::ops::Range<u64>| {
            self.storage
                .object_store()
                .get_range(&meta.location, range)
                .await
                .map_err(|source| {
                    ArchiveError::Storage(StorageError::Store {
                        path: meta.location.to_string(),
                        source,
                    })
                })
        };
        let size = meta.size;
        let end = size
            .checked_sub(FOOTER_SIZE as u64)
            .ok_or_else(|| decode("too short for Parquet".into()))?;
        let tail = read(end..size).await?;
        let tail = <&[u8; FOOTER_SIZE]>::try_from(&tail[..])
            .map_err(|_| decode("short read of the footer".into()))
            .and_then(|t| FooterTail::try_new(t).map_err(|e| decode(e.to_string())))?;
        let start = end
            .checked_sub(tail.metadata_length() as u64)
            .ok_or_else(|| decode("footer longer than the file".into()))?;
        let footer = read(start..end).await?;
        let metadata =
            ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| decode(e.to_string()))?;
        let Some(value) = metadata
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == INPUTS_KEY))
            .and_then(|kv| kv.value.clone())
        else {
            return Ok(Vec::new());
        };
        serde_json::from_str(&value)
            .map_err(|e| decode(format!("{INPUTS_KEY} is not a JSON array of names: {e}")))
    }

    /// Merges `inputs` into one file sorted by time; returns its path and
    /// rows. The inputs are not deleted here.
    async fn merge(
        &self,
        signal: Signal,
        hour: Hour,
        inputs: &[ObjectMeta],
    ) -> Result<(String, u64), ArchiveError> {
        let mut files = Vec::with_capacity(inputs.len());
        let mut names = Vec::with_capacity(inputs.len());
        for meta in inputs {
            let bytes = self.storage.get(&meta.location).await?;
            files.push((self.storage.relative(&meta.location), bytes));
            names.push(meta.location.filename().unwrap_or_default().to_owned());
        }
        names.sort();
        let digest = Sha256::digest(names.join("\n").as_bytes());
        let digest = const_hex::encode(&digest[..8]);
        let batches = tokio::task::spawn_blocking(move || decode_files(files))
            .await
            .map_err(|e| ArchiveError::Decode {
                path: self.storage.relative(&self.partition_path(signal, hour)),
                source: ParquetError::General(e.to_string()),
            })??;
        let order = time_order(signal, &batches)?;
        let rows = order.len() as u64;
        let offset = order.first().map_or(0, |(t, _, _)| t - hour.start());
        let path = self
            .partition_path(signal, hour)
            .join(format!("{}-{offset:013}_m{digest}.parquet", self.node));
        let shown = self.storage.relative(&path);
        let metadata = vec![
            KeyValue::new(NODE_KEY.into(), self.node.clone()),
            KeyValue::new(
                INPUTS_KEY.into(),
                serde_json::to_string(&names).expect("a list of strings is JSON"),
            ),
        ];
        let schema = signal.schema();
        let sorting = sorting_column(signal, &schema);
        let bytes = encode_blocking(shown.clone(), schema, metadata, sorting, move |w| {
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            for chunk in order.chunks(MERGE_CHUNK_ROWS) {
                let indices: Vec<(usize, usize)> = chunk.iter().map(|(_, b, r)| (*b, *r)).collect();
                w.write(&interleave_record_batch(&refs, &indices)?)?;
            }
            Ok(())
        })
        .await?;
        match self.storage.create(&path, bytes).await {
            Ok(()) => Ok((shown, rows)),
            // The name is a digest of the inputs: a merge of the same inputs
            // by another process of this node id. Its inputs may go only if
            // it is really there (S3 can report a conflict for a write that
            // did not happen).
            Err(StorageError::Exists { .. }) => {
                self.storage.get(&path).await?;
                Ok((shown, rows))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the hour partitions, of every node, whose hour ended longer
    /// than their table's retention before `now` (UTC nanoseconds). Stops
    /// at the first failure; the next pass goes on from there.
    pub async fn expire(&self, now: i64) -> Result<Vec<ExpiredPartition>, ArchiveError> {
        let mut expired = Vec::new();
        for signal in Signal::ALL {
            let horizon = now.saturating_sub(nanos(self.config.retention(signal.table())));
            for folder in self.storage.folders(&self.table_path(signal)).await? {
                let Some(day) = folder.filename().and_then(parse_date) else {
                    continue;
                };
                if day * DAY >= horizon {
                    // Folders sort by date: the rest are newer still.
                    break;
                }
                let mut hours: BTreeMap<Hour, Vec<ObjectMeta>> = BTreeMap::new();
                for meta in self.storage.list(&folder).await? {
                    let Some(parts) = meta.location.prefix_match(&folder) else {
                        continue;
                    };
                    let parts: Vec<_> = parts.collect();
                    if let [hour, _file] = parts.as_slice()
                        && let Some(hour) =
                            Hour::parse(folder.filename().unwrap_or_default(), hour.as_ref())
                        && hour.end() <= horizon
                    {
                        hours.entry(hour).or_default().push(meta);
                    }
                }
                for (hour, objects) in hours {
                    for meta in &objects {
                        self.storage.delete(&meta.location).await?;
                    }
                    expired.push(ExpiredPartition {
                        table: signal.table(),
                        partition: self.storage.relative(&self.partition_path(signal, hour)),
                        files: objects.len(),
                        bytes: objects.iter().map(|m| m.size).sum(),
                    });
                }
            }
        }
        Ok(expired)
    }
}

fn signal_of(table: &str) -> Option<Signal> {
    Signal::ALL.into_iter().find(|s| s.table() == table)
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn rows(batches: &[RecordBatch]) -> u64 {
    batches.iter().map(|b| b.num_rows() as u64).sum()
}

/// Groups of at least two files whose Parquet bytes together stay under
/// [`MERGE_INPUT_LIMIT`], in name (time) order.
fn merge_groups(files: Vec<ObjectMeta>) -> Vec<Vec<ObjectMeta>> {
    let mut groups: Vec<Vec<ObjectMeta>> = Vec::new();
    let mut size = 0;
    for meta in files {
        match groups.last_mut() {
            Some(group) if size + meta.size <= MERGE_INPUT_LIMIT => {
                size += meta.size;
                group.push(meta);
            }
            _ => {
                size = meta.size;
                groups.push(vec![meta]);
            }
        }
    }
    groups.retain(|g| g.len() > 1);
    groups
}

#[cfg(test)]
mod tests;
