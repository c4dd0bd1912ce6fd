//! Snapshots of what a writer's chain adds up to, so that a start reads the
//! latest snapshot and the entries after it instead of the whole history.
//!
//! ```text
//! memory/{node}/snapshot/{seq:020}.json.gz
//! ```
//!
//! A snapshot covers the entries before `seq`, and names the hash of the
//! last of them: the chain after it must link to that hash, so a start
//! verifies what it reads on top of the snapshot as it would the whole
//! chain. What a snapshot holds is the engine's business (the actor folds
//! entries into it); here it is a payload of JSON, gzip-compressed, written
//! create-only. Snapshots are derived data: the log stays the record, and
//! old snapshots are deleted once newer ones exist.

use std::io::Read as _;

use bytes::Bytes;
use object_store::path::Path;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::journal::{self, ChainEntry, MAX_BATCH, Problem, Tail};
use super::storage::{Storage, StorageError};

/// Where a snapshot stands in its chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covers {
    pub node: String,
    /// Entries before this one are folded in.
    pub seq: u64,
    /// The hash of entry `seq - 1` (the chain's genesis for `seq` 0).
    pub prev: String,
    /// When it was written (the writer's clock, UTC nanoseconds).
    pub written_at: i64,
}

#[derive(Serialize, Deserialize)]
struct Object<T> {
    covers: Covers,
    state: T,
}

fn prefix(storage: &Storage, node: &str) -> Path {
    storage.path(&["memory", node, "snapshot"])
}

fn name(seq: u64) -> String {
    format!("{seq:020}.json.gz")
}

/// Writes a snapshot of `node`'s chain. A snapshot at the same position
/// that is there already is left as it is.
pub async fn write<T: Serialize>(
    storage: &Storage,
    covers: &Covers,
    state: &T,
) -> Result<u64, StorageError> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    serde_json::to_writer(
        &mut encoder,
        &Object {
            covers: covers.clone(),
            state,
        },
    )
    .expect("snapshots serialize");
    let bytes = encoder.finish().expect("gzip into memory");
    let size = bytes.len() as u64;
    let path = prefix(storage, &covers.node).join(name(covers.seq));
    match storage.create(&path, Bytes::from(bytes)).await {
        Ok(()) | Err(StorageError::Exists { .. }) => Ok(size),
        Err(e) => Err(e),
    }
}

/// The latest snapshot of `node` that reads back, if any; one that does
/// not (cut short, altered) is skipped with a warning for the one before.
pub async fn latest<T: DeserializeOwned>(
    storage: &Storage,
    node: &str,
) -> Result<Option<(Covers, T)>, StorageError> {
    let objects = storage.list(&prefix(storage, node)).await?;
    for meta in objects.iter().rev() {
        let bytes = storage.get(&meta.location).await?;
        let mut text = Vec::new();
        let decoded = flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut text)
            .map_err(|e| e.to_string())
            .and_then(|_| serde_json::from_slice::<Object<T>>(&text).map_err(|e| e.to_string()));
        match decoded {
            Ok(o) if o.covers.node == node => return Ok(Some((o.covers, o.state))),
            Ok(o) => tracing::warn!(
                object = %meta.location, node = %o.covers.node,
                "a snapshot of another node under this one's folder: skipped"
            ),
            Err(e) => tracing::warn!(
                object = %meta.location, error = %e,
                "a snapshot that does not read back: the one before is used"
            ),
        }
    }
    Ok(None)
}

/// Deletes all but the newest `keep` snapshots of `node`.
pub async fn prune(storage: &Storage, node: &str, keep: usize) -> Result<usize, StorageError> {
    let objects = storage.list(&prefix(storage, node)).await?;
    let doomed = objects.len().saturating_sub(keep);
    for meta in &objects[..doomed] {
        storage.delete(&meta.location).await?;
    }
    Ok(doomed)
}

/// What a chain holds after a position: its entries, checked as
/// `read_chain` checks a whole chain, the last object read, and where the
/// chain goes on.
#[derive(Debug, Default)]
pub struct After {
    pub entries: Vec<ChainEntry>,
    pub problems: Vec<Problem>,
    pub last_object: Option<Path>,
    pub tail: Tail,
}

/// Reads `node`'s chain from entry `from.next_seq` on, which must link to
/// `from.prev`: one listing from the object that may hold that entry
/// (objects hold at most [`MAX_BATCH`] entries and are named after their
/// first), whatever the length of the history before it.
pub async fn read_after(storage: &Storage, node: &str, from: Tail) -> Result<After, StorageError> {
    let log = journal::log_prefix(storage, node);
    let objects = match from.next_seq.checked_sub(MAX_BATCH as u64) {
        Some(before) => {
            storage
                .list_after(&log, &log.clone().join(journal::object_name(before)))
                .await?
        }
        None => storage.list(&log).await?,
    };
    let last_object = objects.last().map(|m| m.location.clone());
    let (entries, problems, tail) =
        journal::read_objects_from(storage, node, objects, from.clone()).await?;
    Ok(After {
        entries,
        problems,
        last_object,
        tail,
    })
}
