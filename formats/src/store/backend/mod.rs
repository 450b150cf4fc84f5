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
//! Object storage ([`s3`], the `s3` feature, on by default) is reached through zarrs'
//! object-store backend; a build without it refuses `s3://` stores with a sentence.

#[cfg(feature = "s3")]
mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zarrs::filesystem::FilesystemStore;
use zarrs::storage::store::MemoryStore;
use zarrs::storage::{
    ListableStorageTraits, ReadableStorageTraits, ReadableWritableListableStorageTraits, StoreKey,
    WritableStorageTraits,
};

use super::{Result, StoreError};

/// The zarrs storage every store node is read and written through.
pub(crate) type Storage = dyn ReadableWritableListableStorageTraits;

/// Concurrent requests a reader keeps in flight against object storage by default (rows are
/// fetched as byte ranges of their shards, one request per row, so latency is hidden by
/// concurrency); [`OBJECT_FETCHES_VARIABLE`] sets another number.
pub const OBJECT_FETCHES: usize = 32;

/// The environment variable that sets how many requests a reader keeps in flight against
/// object storage, 1 to [`MAX_OBJECT_FETCHES`] (a high-latency store wants more).
pub const OBJECT_FETCHES_VARIABLE: &str = "TINYMIM_S3_REQUESTS";

/// The most requests in flight [`OBJECT_FETCHES_VARIABLE`] may ask for (one thread each).
pub const MAX_OBJECT_FETCHES: usize = 1024;

/// Requests a reader keeps in flight against object storage: `$TINYMIM_S3_REQUESTS`, else
/// [`OBJECT_FETCHES`]; a value that is no number from 1 to [`MAX_OBJECT_FETCHES`] is refused.
pub fn object_fetches() -> Result<usize> {
    fetches_from(std::env::var_os(OBJECT_FETCHES_VARIABLE).as_deref())
}

/// [`object_fetches`] for the variable's value `value`.
fn fetches_from(value: Option<&std::ffi::OsStr>) -> Result<usize> {
    let Some(value) = value else {
        return Ok(OBJECT_FETCHES);
    };
    let text = value.to_string_lossy();
    text.trim()
        .parse()
        .ok()
        .filter(|n| (1..=MAX_OBJECT_FETCHES).contains(n))
        .ok_or_else(|| StoreError::Environment {
            name: OBJECT_FETCHES_VARIABLE,
            value: text.into_owned(),
            reason: format!("requests in flight must be a number from 1 to {MAX_OBJECT_FETCHES}"),
        })
}

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
    #[cfg(feature = "s3")]
    Bucket {
        client: Arc<dyn object_store::ObjectStore>,
    },
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
            #[cfg(feature = "s3")]
            StoreLocation::S3 { bucket, prefix } => {
                let (storage, client) = s3::open(bucket, prefix, shown)?;
                Ok(Backend {
                    storage,
                    place: Place::Bucket { client },
                })
            }
            #[cfg(not(feature = "s3"))]
            StoreLocation::S3 { .. } => Err(StoreError::NotAStore {
                path: shown.to_path_buf(),
                reason: "this build has no s3:// support: build with the `s3` feature (on by \
                         default: `cargo build --release`)"
                    .to_string(),
            }),
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
            #[cfg(feature = "s3")]
            Place::Bucket { .. } => Some(s3::fetch_pool()),
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
            _ => self
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
            #[cfg(feature = "s3")]
            Place::Bucket { client } => s3::create(client, key, bytes),
        }
    }
}

/// The folder holding `path`.
fn folder_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn requests_in_flight_default_to_32_and_take_numbers_from_1_to_1024() {
        assert_eq!(fetches_from(None).unwrap(), OBJECT_FETCHES);
        for (value, n) in [("1", 1), (" 64 ", 64), ("1024", 1024)] {
            assert_eq!(fetches_from(Some(OsStr::new(value))).unwrap(), n, "{value}");
        }
        for value in ["0", "1025", "-3", "many", ""] {
            let err = fetches_from(Some(OsStr::new(value)))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("TINYMIM_S3_REQUESTS={value}: "))
                    && err.contains("1 to 1024"),
                "{err}"
            );
        }
    }
}
