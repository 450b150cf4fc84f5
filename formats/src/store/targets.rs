//! Random reads of one row of a sharded array (targets, scales) with the inner chunk's crc32c
//! verified.
//!
//! zarrs 0.23 reads a subset of a sharded array through partial decoders, and its crc32c
//! partial decoder strips the checksum without checking it (measured: a flipped byte in a
//! shard came back as silently wrong values). So a row is read as its encoded inner chunk
//! (located through the cached shard index) and decoded with the full codec chain, which
//! verifies the checksum.

use std::borrow::Cow;
use std::num::NonZeroU64;

use zarrs::array::{
    ArrayShardedReadableExt, ArrayShardedReadableExtCache, ArrayToBytesCodecTraits, CodecChain,
    CodecOptions, FromArrayBytes,
};
use zarrs::metadata::v3::MetadataV3;
use zarrs::metadata::ArrayMetadata;

use super::layout::{row_chunk, zarr_err, StoreArray};
use super::{Result, StoreError};

/// A segment's sharded row array (its targets, or an 8-bit encoding's scales), read one row
/// (one inner chunk) at a time.
pub(crate) struct TargetRows {
    array: StoreArray,
    cache: ArrayShardedReadableExtCache,
    inner: CodecChain,
    row_shape: Vec<NonZeroU64>,
}

impl TargetRows {
    /// Prepares row reads of a sharded target array with inner chunks of one row.
    pub(crate) fn new(array: StoreArray) -> Result<Self> {
        let path = array.path().as_str().to_string();
        let corrupt = |reason: &str| StoreError::corrupt(&path, reason);
        let ArrayMetadata::V3(metadata) = array.metadata() else {
            return Err(corrupt("not a Zarr v3 array"));
        };
        let sharding = match metadata.codecs.as_slice() {
            [codec] if codec.name() == "sharding_indexed" => codec,
            _ => return Err(corrupt("the targets are not stored in shards")),
        };
        let config = sharding
            .configuration()
            .ok_or_else(|| corrupt("sharding without configuration"))?;
        let codecs: Vec<MetadataV3> = config
            .get("codecs")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .ok_or_else(|| corrupt("sharding without inner codecs"))?;
        let inner = CodecChain::from_metadata(&codecs).map_err(zarr_err(&path))?;
        let inner_shape: Vec<u64> = config
            .get("chunk_shape")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let mut row_shape = array.shape().to_vec();
        row_shape[0] = 1;
        if inner_shape != row_shape {
            return Err(corrupt(&format!(
                "inner chunks of shape {inner_shape:?}, expected one row {row_shape:?}"
            )));
        }
        let row_shape = row_shape
            .into_iter()
            .map(NonZeroU64::new)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| corrupt("a target row has an empty axis"))?;
        Ok(TargetRows {
            cache: ArrayShardedReadableExtCache::new(&array),
            array,
            inner,
            row_shape,
        })
    }

    /// The decoded values of `row`, in the array's element type `T`; a checksum mismatch is an
    /// error naming the array.
    pub(crate) fn row<T: Clone + Default>(&self, row: u64) -> Result<Vec<T>>
    where
        Vec<T>: FromArrayBytes,
    {
        let path = self.array.path().as_str();
        let encoded = self
            .array
            .retrieve_encoded_subchunk(&self.cache, &row_chunk(&self.array, row))
            .map_err(zarr_err(path))?;
        let len = self.row_shape.iter().map(|n| n.get() as usize).product();
        let Some(encoded) = encoded else {
            return Ok(vec![T::default(); len]); // an all-zero row is not stored
        };
        let (data_type, fill) = (self.array.data_type(), self.array.fill_value());
        let bytes = self
            .inner
            .decode(
                Cow::Owned(encoded),
                &self.row_shape,
                data_type,
                fill,
                &CodecOptions::default(),
            )
            .map_err(zarr_err(path))?;
        let shape: Vec<u64> = self.row_shape.iter().map(|n| n.get()).collect();
        Vec::<T>::from_array_bytes(bytes, &shape, data_type).map_err(zarr_err(path))
    }
}
