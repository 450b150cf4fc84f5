//! Object storage: zarrs' object-store backend (`zarrs_object_store` over the `object_store`
//! crate's S3 client), made synchronous by a small tokio runtime of this module's own.
//! Endpoint, region and credentials come from the standard AWS environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, …).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutMode, PutPayload};
use zarrs::storage::byte_range::{ByteRange, ByteRangeIterator};
use zarrs::storage::storage_adapter::async_to_sync::{
    AsyncToSyncBlockOn, AsyncToSyncStorageAdapter,
};
use zarrs::storage::StoreKey;
use zarrs::storage::{
    Bytes, ListableStorageTraits, MaybeBytes, MaybeBytesIterator, OffsetBytesIterator,
    ReadableStorageTraits, StorageError, StoreKeys, StoreKeysPrefixes, StorePrefix,
    WritableStorageTraits,
};
use zarrs_object_store::AsyncObjectStore;

use super::{object_fetches, Storage, OBJECT_FETCHES};
use crate::store::{Result, StoreError};

/// The storage of the store at `prefix` of `bucket` (`shown` is the URL the user gave, for
/// messages), and the client its conditional writes go through.
pub(super) fn open(
    bucket: &str,
    prefix: &str,
    shown: &Path,
) -> Result<(Arc<Storage>, Arc<dyn ObjectStore>)> {
    object_fetches()?;
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    // An http:// endpoint (a local MinIO or test server) is what the user asked for.
    let endpoint = [AmazonS3ConfigKey::S3Endpoint, AmazonS3ConfigKey::Endpoint]
        .iter()
        .find_map(|key| builder.get_config_value(key));
    if endpoint.is_some_and(|e| e.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    let s3 = builder.build().map_err(|e| StoreError::Zarr {
        path: shown.to_path_buf(),
        source: Box::new(e),
    })?;
    let client: Arc<dyn ObjectStore> = Arc::new(PrefixStore::new(s3, prefix));
    let storage = RangeReads {
        inner: AsyncToSyncStorageAdapter::new(
            Arc::new(AsyncObjectStore::new(client.clone())),
            BlockOn,
        ),
        client: client.clone(),
    };
    Ok((Arc::new(storage), client))
}

/// Writes `bytes` to `key` only if it does not exist (a `PUT` with `If-None-Match: *`);
/// `Ok(false)` when it does.
pub(super) fn create(
    client: &Arc<dyn ObjectStore>,
    key: &StoreKey,
    bytes: Vec<u8>,
) -> Result<bool> {
    let location = object_store::path::Path::from(key.as_str());
    let put = client.put_opts(&location, PutPayload::from(bytes), PutMode::Create.into());
    match block_on(put) {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(StoreError::zarr(
            key.as_str(),
            ConditionalWriteError(e.to_string()),
        )),
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

/// The process's threads for concurrent reads from object storage, one per request in flight
/// ([`object_fetches`], checked when a store is opened), started on first use.
pub(super) fn fetch_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(object_fetches().unwrap_or(OBJECT_FETCHES))
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
