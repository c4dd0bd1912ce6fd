//! Where the memory and the archive live: a local folder or an object-store
//! URL (`s3://`, `gs://`, `az://`, `file://`, `memory://`), behind one
//! `object_store` handle.
//!
//! Objects are written create-only ([`PutMode::Create`]): nothing is ever
//! overwritten, and a second writer racing for the same name gets
//! [`StorageError::Exists`] instead of replacing the first one's object.
//! On a local folder every object is fsync'd, and so is its folder, before
//! the write counts as done: `object_store`'s local store only renames.
//!
//! Credentials come from the variables each store's SDK reads: `AWS_*`
//! (`AWS_ENDPOINT_URL` and `AWS_ALLOW_HTTP=true` for S3-compatible servers),
//! `GOOGLE_*`, `AZURE_*`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload};

/// Why storage could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid data location {location:?}: {message}")]
    Location { location: String, message: String },
    #[error("{path} already exists: another writer uses this name")]
    Exists { path: String },
    #[error("{path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("cannot write {path} durably: {source}")]
    Sync {
        path: String,
        source: std::io::Error,
    },
}

/// An object store and the prefix everything lives under.
#[derive(Debug, Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// The location as given, for messages.
    location: String,
    /// The folder behind a local store, whose writes are fsync'd.
    local: Option<Arc<LocalFileSystem>>,
    /// The URL DataFusion knows this store by (`scheme://authority`).
    url: url::Url,
}

impl Storage {
    /// Opens a local folder (created if missing) or an object-store URL.
    pub fn open(location: &str) -> Result<Self, StorageError> {
        let bad = |message: String| StorageError::Location {
            location: location.to_owned(),
            message,
        };
        if !location.contains("://") {
            return Self::local(location, PathBuf::from(location));
        }
        let url = url::Url::parse(location).map_err(|e| bad(e.to_string()))?;
        let root =
            Path::parse(url.path().trim_start_matches('/')).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("not a local path".into()))?;
                return Self::local(location, path);
            }
            "memory" => Arc::new(InMemory::new()),
            "s3" | "s3a" => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "abfs" | "abfss" | "azure" => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            other => {
                return Err(bad(format!(
                    "unknown scheme {other:?}: use a local folder, file://, s3://, gs://, az:// or memory://"
                )));
            }
        };
        let base = url::Url::parse(&format!("{}://{}", url.scheme(), url.authority()))
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store,
            root,
            location: location.to_owned(),
            local: None,
            url: base,
        })
    }

    fn local(location: &str, dir: PathBuf) -> Result<Self, StorageError> {
        let bad = |message: String| StorageError::Location {
            location: location.to_owned(),
            message,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
        let fs = Arc::new(
            LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| bad(e.to_string()))?
                .with_automatic_cleanup(true),
        );
        let canonical = std::fs::canonicalize(&dir).map_err(|e| bad(e.to_string()))?;
        let url = url::Url::from_directory_path(&canonical)
            .map_err(|()| bad("not an absolute path".into()))?;
        Ok(Self {
            store: fs.clone(),
            root: Path::default(),
            location: location.to_owned(),
            local: Some(fs),
            url,
        })
    }

    /// An in-memory store: for tests and benches.
    pub fn in_memory() -> Self {
        Self::open("memory://").expect("memory:// is always valid")
    }

    /// The location as the user gave it.
    pub fn location(&self) -> &str {
        &self.location
    }

    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL to register [`Storage::object_store`] under in DataFusion,
    /// and the prefix table paths start with.
    pub fn url(&self) -> &url::Url {
        &self.url
    }

    /// `root/part/part...`
    pub fn path(&self, parts: &[&str]) -> Path {
        let mut path = self.root.clone();
        for part in parts {
            for piece in part.split('/').filter(|p| !p.is_empty()) {
                path = path.clone().join(piece);
            }
        }
        path
    }

    /// A path relative to the root, for messages and listings.
    pub fn relative(&self, path: &Path) -> String {
        match path.prefix_match(&self.root) {
            Some(parts) => parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/"),
            None => path.to_string(),
        }
    }

    /// Writes `bytes` at `path` unless something is there already; durable
    /// (fsync'd, folder included) on a local store when it returns.
    pub async fn create(&self, path: &Path, bytes: Bytes) -> Result<(), StorageError> {
        if let Some(fs) = &self.local {
            let file = fs
                .path_to_filesystem(path)
                .map_err(|source| StorageError::Store {
                    path: path.to_string(),
                    source,
                })?;
            let shown = path.to_string();
            let written = tokio::task::spawn_blocking(move || create_durable(&file, &bytes))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r);
            return match written {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(StorageError::Exists { path: shown })
                }
                Err(source) => Err(StorageError::Sync {
                    path: shown,
                    source,
                }),
            };
        }
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(StorageError::Exists {
                    path: path.to_string(),
                });
            }
            Err(source) => {
                return Err(StorageError::Store {
                    path: path.to_string(),
                    source,
                });
            }
        }
        Ok(())
    }

    /// Writes `bytes` at `path`, replacing what is there: only for the
    /// cluster's heartbeats, which say "alive at" and are meant to be
    /// overwritten. Everything else is [`Storage::create`].
    pub async fn replace(&self, path: &Path, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|source| StorageError::Store {
                path: path.to_string(),
                source,
            })
    }

    /// [`Storage::get`], with `None` for an object that is not there.
    pub async fn get_opt(&self, path: &Path) -> Result<Option<Bytes>, StorageError> {
        match self.get(path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(StorageError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The objects under `prefix` whose paths sort after `offset`, sorted.
    pub async fn list_after(
        &self,
        prefix: &Path,
        offset: &Path,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        sorted(prefix, self.store.list_with_offset(Some(prefix), offset)).await
    }

    pub async fn get(&self, path: &Path) -> Result<Bytes, StorageError> {
        let result = async { self.store.get(path).await?.bytes().await };
        result.await.map_err(|source| StorageError::Store {
            path: path.to_string(),
            source,
        })
    }

    /// Every object under `prefix`, sorted by path.
    pub async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, StorageError> {
        sorted(prefix, self.store.list(Some(prefix))).await
    }

    /// The folders directly under `prefix` (their full paths), sorted.
    pub async fn folders(&self, prefix: &Path) -> Result<Vec<Path>, StorageError> {
        let listing = self
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(|source| StorageError::Store {
                path: prefix.to_string(),
                source,
            })?;
        let mut folders = listing.common_prefixes;
        folders.sort();
        Ok(folders)
    }

    pub async fn delete(&self, path: &Path) -> Result<(), StorageError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(StorageError::Store {
                path: path.to_string(),
                source,
            }),
        }
    }
}

/// A listing, collected and sorted by path.
async fn sorted(
    prefix: &Path,
    listing: futures::stream::BoxStream<'static, object_store::Result<ObjectMeta>>,
) -> Result<Vec<ObjectMeta>, StorageError> {
    let mut objects: Vec<ObjectMeta> =
        listing
            .try_collect()
            .await
            .map_err(|source| StorageError::Store {
                path: prefix.to_string(),
                source,
            })?;
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(objects)
}

/// Create-only and crash-safe on a local disk: the bytes go to a staging
/// file (`name#digits`, which listings skip) that is fsync'd before it is
/// hard-linked to its name (failing if the name exists), then the folder
/// is fsync'd. A crash at any point leaves the name absent or complete,
/// never partial. Folders created on the way are made durable too.
fn create_durable(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicU64, Ordering};
    static STAGED: AtomicU64 = AtomicU64::new(0);
    let dir = file
        .parent()
        .ok_or_else(|| std::io::Error::other("a file without a folder"))?;
    create_dirs_durable(dir)?;
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::other("a path without a file name"))?;
    let mut staged_name = name.to_os_string();
    // Digits only (listings skip `name#digits`), unique per process and
    // start: a staging file a crash left behind is never taken for it.
    let started = crate::ingest::now_nanos();
    staged_name.push(format!(
        "#{}{started}{:010}",
        std::process::id(),
        STAGED.fetch_add(1, Ordering::Relaxed)
    ));
    let staged = dir.join(staged_name);
    let result = (|| {
        // Only the link failing means the name exists.
        let mut f = std::fs::File::create_new(&staged)
            .map_err(|e| std::io::Error::other(format!("staging file: {e}")))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::hard_link(&staged, file)
    })();
    let _ = std::fs::remove_file(&staged);
    result?;
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, with each new folder's parent fsync'd so that the new
/// entry survives a power loss.
fn create_dirs_durable(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_never_overwrites_and_lists_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path().to_str().unwrap()).unwrap();
        let a = storage.path(&["memory", "n1", "b"]);
        let b = storage.path(&["memory", "n1", "a"]);
        storage
            .create(&a, Bytes::from_static(b"one"))
            .await
            .unwrap();
        storage
            .create(&b, Bytes::from_static(b"two"))
            .await
            .unwrap();
        let again = storage.create(&a, Bytes::from_static(b"three")).await;
        assert!(
            matches!(again, Err(StorageError::Exists { .. })),
            "{again:?}"
        );
        assert_eq!(storage.get(&a).await.unwrap(), Bytes::from_static(b"one"));
        let listed: Vec<String> = storage
            .list(&storage.path(&["memory"]))
            .await
            .unwrap()
            .into_iter()
            .map(|m| storage.relative(&m.location))
            .collect();
        assert_eq!(listed, ["memory/n1/a", "memory/n1/b"]);
        assert!(dir.path().join("memory/n1/b").is_file());
    }

    #[test]
    fn locations_are_checked() {
        let e = Storage::open("ftp://x/y").unwrap_err().to_string();
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
        let memory = Storage::open("memory:///pre/fix").unwrap();
        assert_eq!(memory.path(&["a/b", "c"]).to_string(), "pre/fix/a/b/c");
    }
}
