//! Where a store lives — a local folder or a prefix of an S3-compatible bucket — and the writes
//! its commit protocol needs of either place:
//!
//! - **replace** an object so that a reader sees the old bytes or the new ones, never a torn
//!   mix: a temporary file renamed over the old one (and the folder synced) on a local disk; a
//!   single `PUT` on object storage, which S3 applies whole or not at all;
//! - **create** an object only if it does not exist yet: a hard link of a finished temporary file
//!   (which fails where the name exists) locally; a `PUT` with `If-None-Match: *` (S3's
//!   conditional write) on object storage. A segment id and a store's skeleton are claimed this
//!   way, so two writers never share one.
//!
//! Object storage is reached through zarrs' object-store backend (`zarrs_object_store` over the
//! `object_store` crate's S3 client), made synchronous by a small tokio runtime of this module's
//! own. Endpoint, region and credentials come from the standard AWS environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, …).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutPayload};
use zarrs::filesystem::FilesystemStore;
use zarrs::storage::byte_range::{ByteRange, ByteRangeIterator};
use zarrs::storage::storage_adapter::async_to_sync::{
    AsyncToSyncBlockOn, AsyncToSyncStorageAdapter,
};
use zarrs::storage::store::MemoryStore;
use zarrs::storage::StoreKey;
use zarrs::storage::{
    Bytes, ListableStorageTraits, MaybeBytes, MaybeBytesIterator, OffsetBytesIterator,
    ReadableStorageTraits, ReadableWritableListableStorageTraits, StorageError, StoreKeys,
    StoreKeysPrefixes, StorePrefix, WritableStorageTraits,
};
use zarrs_object_store::AsyncObjectStore;

use super::{Result, StoreError};

/// The zarrs storage every store node is read and written through.
pub(crate) type Storage = dyn ReadableWritableListableStorageTraits;

/// Concurrent requests a reader keeps in flight against object storage (rows are fetched as
/// byte ranges of their shards, one request per row, so latency is hidden by concurrency).
pub const OBJECT_FETCHES: usize = 32;

/// Where a store is, parsed from the path a user gives: `s3://bucket/prefix` (or `s3a://`) is a
/// prefix in an S3-compatible bucket, anything else a local folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// A folder on a local (or shared, POSIX) file system.
    Local(PathBuf),
    /// A prefix (possibly empty) in an S3-compatible bucket.
    S3 {
        /// The bucket.
        bucket: String,
        /// Key prefix of the store's objects, without leading or trailing `/`.
        prefix: String,
    },
}

impl StoreLocation {
    /// Parses `path`: an `s3://` or `s3a://` URL names object storage, anything else a folder.
    /// A URL without a bucket is refused.
    pub fn of(path: &Path) -> Result<Self> {
        let text = path.to_string_lossy();
        let rest = ["s3://", "s3a://"]
            .iter()
            .find_map(|scheme| text.strip_prefix(scheme));
        let Some(rest) = rest else {
            return Ok(StoreLocation::Local(path.to_path_buf()));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
                reason: "an s3:// URL needs a bucket: s3://BUCKET/PREFIX".to_string(),
            });
        }
        Ok(StoreLocation::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

/// A store's storage with the writes of the commit protocol.
pub(crate) struct Backend {
    storage: Arc<Storage>,
    place: Place,
}

enum Place {
    /// A folder; object keys are paths below it.
    Folder(PathBuf),
    /// Memory, where a new store's skeleton is assembled before it is created in its place.
    Memory,
    /// A bucket prefix, through an S3 client.
    Bucket { client: Arc<dyn ObjectStore> },
}

impl Backend {
    /// Opens the storage at `location` (`shown` is the path the user gave, for messages). A
    /// folder is created when `create` is set; an object store needs no creation.
    pub(crate) fn open(location: &StoreLocation, shown: &Path, create: bool) -> Result<Self> {
        let zarr_error = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Zarr {
            path: shown.to_path_buf(),
            source: e,
        };
        match location {
            StoreLocation::Local(folder) => {
                if create {
                    std::fs::create_dir_all(folder).map_err(|e| StoreError::io(folder, e))?;
                }
                let storage = FilesystemStore::new(folder).map_err(|e| zarr_error(Box::new(e)))?;
                Ok(Backend {
                    storage: Arc::new(storage),
                    place: Place::Folder(folder.clone()),
                })
            }
            StoreLocation::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                // An http:// endpoint (a local MinIO or test server) is what the user asked for.
                let endpoint = [AmazonS3ConfigKey::S3Endpoint, AmazonS3ConfigKey::Endpoint]
                    .iter()
                    .find_map(|key| builder.get_config_value(key));
                if endpoint.is_some_and(|e| e.starts_with("http://")) {
                    builder = builder.with_allow_http(true);
                }
                let s3 = builder.build().map_err(|e| zarr_error(Box::new(e)))?;
                let client: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(s3, prefix.as_str()));
                let storage = RangeReads {
                    inner: AsyncToSyncStorageAdapter::new(
                        Arc::new(AsyncObjectStore::new(client.clone())),
                        BlockOn,
                    ),
                    client: client.clone(),
                };
                Ok(Backend {
                    storage: Arc::new(storage),
                    place: Place::Bucket { client },
                })
            }
        }
    }

    /// An empty store in memory.
    pub(crate) fn memory() -> Self {
        Backend {
            storage: Arc::new(MemoryStore::new()),
            place: Place::Memory,
        }
    }

    /// Creates every object of this store in `target` where `target` does not have it yet
    /// ([`create`](Self::create)), the object `last` after all others.
    pub(crate) fn copy_new_into(&self, target: &Backend, last: &str) -> Result<()> {
        let mut keys = self.storage.list().map_err(|e| StoreError::zarr("/", e))?;
        keys.sort_by_key(|k| k.as_str() == last);
        for key in keys {
            let bytes = self
                .storage
                .get(&key)
                .map_err(|e| StoreError::zarr(key.as_str(), e))?
                .unwrap_or_default();
            target.create(&key, bytes.to_vec())?;
        }
        Ok(())
    }

    /// The zarrs storage.
    pub(crate) fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The thread pool that reads rows concurrently from object storage; `None` for a folder,
    /// where the caller's own parallelism suffices.
    pub(crate) fn fetch_pool(&self) -> Option<&'static rayon::ThreadPool> {
        match &self.place {
            Place::Folder(_) | Place::Memory => None,
            Place::Bucket { .. } => Some(fetch_pool()),
        }
    }

    /// True where objects can be renamed (a folder): a chunk rewritten in place is then staged
    /// and renamed, while on object storage a single `PUT` already replaces it whole.
    pub(crate) fn renames(&self) -> bool {
        matches!(self.place, Place::Folder(_))
    }

    /// Replaces `key` with `bytes` so that a reader (or a crash) sees the old or the new value,
    /// never a torn one; on a folder the rename is synced before this returns.
    pub(crate) fn replace(&self, key: &StoreKey, bytes: Vec<u8>) -> Result<()> {
        match &self.place {
            Place::Folder(_) => {
                let tmp = format!("{}.{}.tmp", key.as_str(), crate::atomic::unique_tag());
                let tmp = StoreKey::new(tmp).map_err(|e| StoreError::zarr(key.as_str(), e))?;
                self.storage
                    .set(&tmp, bytes.into())
                    .map_err(|e| StoreError::zarr(key.as_str(), e))?;
                self.rename(&tmp, key)
            }
            Place::Bucket { .. } | Place::Memory => self
                .storage
                .set(key, bytes.into())
                .map_err(|e| StoreError::zarr(key.as_str(), e)),
        }
    }

    /// Renames `from` over `to` (folders only) and syncs the folder of `to`, so that the
    /// rename is on disk before anything that depends on it (a watermark) is written.
    pub(crate) fn rename(&self, from: &StoreKey, to: &StoreKey) -> Result<()> {
        let Place::Folder(root) = &self.place else {
            return Err(StoreError::corrupt(
                to.as_str(),
                "object storage has no rename (a bug: objects are replaced by one PUT)",
            ));
        };
        let (from_path, to_path) = (root.join(from.as_str()), root.join(to.as_str()));
        std::fs::rename(&from_path, &to_path).map_err(|e| StoreError::io(&to_path, e))?;
        crate::atomic::sync_folder(folder_of(&to_path)).map_err(|e| StoreError::io(&to_path, e))
    }

    /// Writes `bytes` to `key` only if `key` does not exist; `Ok(false)` when it does (another
    /// writer got there first), and its value is left as it was.
    pub(crate) fn create(&self, key: &StoreKey, bytes: Vec<u8>) -> Result<bool> {
        match &self.place {
            Place::Memory => {
                let exists = self
                    .storage
                    .get(key)
                    .map_err(|e| StoreError::zarr(key.as_str(), e))?
                    .is_some();
                if !exists {
                    self.replace(key, bytes)?;
                }
                Ok(!exists)
            }
            Place::Folder(root) => {
                let path = root.join(key.as_str());
                let folder = folder_of(&path);
                let io = |e| StoreError::io(&path, e);
                std::fs::create_dir_all(folder).map_err(io)?;
                let tmp = tempfile::Builder::new()
                    .prefix(".create.")
                    .suffix(".tmp")
                    .tempfile_in(folder)
                    .map_err(io)?;
                std::fs::write(tmp.path(), &bytes).map_err(io)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
                        .map_err(io)?;
                }
                tmp.as_file().sync_all().map_err(io)?;
                // A hard link fails where the name exists: the claim is exclusive. The
                // temporary name is removed when `tmp` drops.
                match std::fs::hard_link(tmp.path(), &path) {
                    Ok(()) => {
                        crate::atomic::sync_folder(folder).map_err(io)?;
                        Ok(true)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => Err(io(e)),
                }
            }
            Place::Bucket { client, .. } => {
                let location = object_store::path::Path::from(key.as_str());
                let put =
                    client.put_opts(&location, PutPayload::from(bytes), PutMode::Create.into());
                match block_on(put) {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                    Err(e) => Err(StoreError::zarr(
                        key.as_str(),
                        ConditionalWriteError(e.to_string()),
                    )),
                }
            }
        }
    }
}

/// A conditional write the object store refused or does not support.
#[derive(Debug, thiserror::Error)]
#[error(
    "a conditional write (PUT with If-None-Match: *) failed: {0}; tinymim claims segments and \
     creates stores with conditional writes, which the object store must support (AWS S3, \
     MinIO, Ceph RGW and Cloudflare R2 do)"
)]
struct ConditionalWriteError(String);

/// The folder holding `path`.
fn folder_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// The process's [`OBJECT_FETCHES`] threads for concurrent reads from object storage, started
/// on first use.
fn fetch_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(OBJECT_FETCHES)
            .thread_name(|i| format!("tinymim-fetch-{i}"))
            .build()
            .expect("the OS can start the fetch threads")
    })
}

/// The runtime that drives the object-store client's futures for synchronous callers.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tinymim-s3")
            .enable_all()
            .build()
            .expect("the OS can start the object-store runtime's threads")
    })
}

/// Runs `future` to completion on [`runtime`], from a thread outside it.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().handle().block_on(future)
}

/// zarrs' async-to-sync adapter driven by [`runtime`].
struct BlockOn;

impl AsyncToSyncBlockOn for BlockOn {
    fn block_on<F: core::future::Future>(&self, future: F) -> F::Output {
        block_on(future)
    }
}

/// The object-store storage zarrs reads and writes through: zarrs' sync adapter over
/// `zarrs_object_store`, except that reads of byte ranges whose bounds are known (a row of a
/// shard, located through the cached shard index) go to the client directly as one ranged `GET`
/// each; `zarrs_object_store` would first ask the object's size with a `HEAD`, doubling the
/// requests per row.
struct RangeReads {
    inner: AsyncToSyncStorageAdapter<AsyncObjectStore<Arc<dyn ObjectStore>>, BlockOn>,
    client: Arc<dyn ObjectStore>,
}

impl ReadableStorageTraits for RangeReads {
    fn get(&self, key: &StoreKey) -> Result<MaybeBytes, StorageError> {
        self.inner.get(key)
    }

    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        let ranges: Vec<ByteRange> = byte_ranges.collect();
        let bounded: Option<Vec<std::ops::Range<u64>>> = ranges
            .iter()
            .map(|range| match *range {
                ByteRange::FromStart(offset, Some(length)) => Some(offset..offset + length),
                _ => None,
            })
            .collect();
        let Some(bounded) = bounded else {
            return self
                .inner
                .get_partial_many(key, Box::new(ranges.into_iter()));
        };
        let location = object_store::path::Path::from(key.as_str());
        match block_on(self.client.get_ranges(&location, &bounded)) {
            Ok(parts) => Ok(Some(Box::new(parts.into_iter().map(Ok)))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::Other(e.to_string())),
        }
    }

    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        self.inner.size_key(key)
    }

    fn supports_get_partial(&self) -> bool {
        true
    }
}

impl WritableStorageTraits for RangeReads {
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        self.inner.set(key, value)
    }

    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        self.inner.set_partial_many(key, offset_values)
    }

    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        self.inner.erase(key)
    }

    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        self.inner.erase_prefix(prefix)
    }

    fn supports_set_partial(&self) -> bool {
        self.inner.supports_set_partial()
    }
}

impl ListableStorageTraits for RangeReads {
    fn list(&self) -> Result<StoreKeys, StorageError> {
        self.inner.list()
    }

    fn list_prefix(&self, prefix: &StorePrefix) -> Result<StoreKeys, StorageError> {
        self.inner.list_prefix(prefix)
    }

    fn list_dir(&self, prefix: &StorePrefix) -> Result<StoreKeysPrefixes, StorageError> {
        self.inner.list_dir(prefix)
    }

    fn size_prefix(&self, prefix: &StorePrefix) -> Result<u64, StorageError> {
        self.inner.size_prefix(prefix)
    }
}
