//! Where things live in `relations.zarr` and how each array is built: row arrays, the image
//! table, the teacher's qkv parameters, segment attributes, and the atomic metadata writes the
//! commit protocol rests on (made atomic by the [`Backend`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zarrs::array::codec::{Crc32cCodec, ZstdCodec};
use zarrs::array::{
    data_type, Array, ArrayBuilder, ArrayCreateError, ArrayMetadataOptions, ChunkKeySeparator,
};
use zarrs::group::{Group, GroupCreateError};
use zarrs::metadata::v3::GroupMetadataV3;
use zarrs::node::{meta_key_v3, NodePath};

use super::backend::{Backend, Storage};
use super::{Result, StoreError, StoreHeader};
use crate::encoding::Encoding;

/// A zarrs array of a store.
pub(crate) type StoreArray = Array<Storage>;

/// Folder of the segment groups.
pub(crate) const SEGMENTS: &str = "/segments";
/// Folder of the teacher's qkv parameters.
const TEACHER: &str = "/teacher";
/// Key of a segment's state in its group attributes.
const SEGMENT_ATTRIBUTE: &str = "tinymim_segment";
/// Image-table entries per chunk.
const IMAGE_CHUNK: u64 = 1024;
/// Target bytes of one shard of targets.
const SHARD_BYTES: u64 = 32 << 20;
/// Most rows per shard.
const MAX_SHARD_ROWS: u64 = 1024;
/// zstd level of every chunk.
const ZSTD_LEVEL: i32 = 3;

/// Rows per shard for rows of `row_bytes` bytes of targets: about 32 MB per shard, between 1
/// and 1024 rows.
pub(crate) fn default_shard_rows(row_bytes: u64) -> u64 {
    (SHARD_BYTES / row_bytes.max(1)).clamp(1, MAX_SHARD_ROWS)
}

/// Node path of segment `id`.
pub(crate) fn segment_path(id: &str) -> String {
    format!("{SEGMENTS}/{id}")
}

/// Wraps a zarrs error with the node path it concerns.
pub(crate) fn zarr_err<E: std::error::Error + Send + Sync + 'static>(
    path: &str,
) -> impl FnOnce(E) -> StoreError + '_ {
    move |e| StoreError::zarr(path, e)
}

/// Writes a group's `zarr.json` with `attributes`, atomically.
pub(crate) fn write_group(
    backend: &Backend,
    path: &str,
    attributes: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let (key, json) = group_document(path, attributes)?;
    backend.replace(&key, json)
}

/// The key and bytes of a group's `zarr.json` with `attributes`.
pub(crate) fn group_document(
    path: &str,
    attributes: serde_json::Map<String, serde_json::Value>,
) -> Result<(zarrs::storage::StoreKey, Vec<u8>)> {
    let node = NodePath::new(path).map_err(zarr_err(path))?;
    let metadata = GroupMetadataV3::new().with_attributes(attributes);
    let json = serde_json::to_vec_pretty(&metadata).expect("group metadata serialises");
    Ok((meta_key_v3(&node), json))
}

/// Writes an array's `zarr.json` (after a resize, say), atomically.
pub(crate) fn write_array_metadata(backend: &Backend, array: &StoreArray) -> Result<()> {
    let metadata = array.metadata_opt(&ArrayMetadataOptions::default());
    let json = serde_json::to_vec_pretty(&metadata).expect("array metadata serialises");
    backend.replace(&meta_key_v3(array.path()), json)
}

/// Opens a group's attributes; `None` when the group has no metadata (yet).
pub(crate) fn group_attributes(
    storage: &Arc<Storage>,
    path: &str,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
    match Group::open(storage.clone(), path) {
        Ok(group) => Ok(Some(group.attributes().clone())),
        Err(GroupCreateError::MissingMetadata) => Ok(None),
        Err(e) => Err(StoreError::zarr(path, e)),
    }
}

/// The chunk codecs after `bytes`: zstd, then a crc32c checksum.
fn compress_and_checksum() -> Vec<Arc<dyn zarrs::array::BytesToBytesCodecTraits>> {
    vec![
        Arc::new(ZstdCodec::new(ZSTD_LEVEL, false)),
        Arc::new(Crc32cCodec::new()),
    ]
}

/// Builds (without writing) an array of `shape`, chunked `chunk` along the first axis.
fn builder(
    shape: Vec<u64>,
    chunk_rows: u64,
    data_type: zarrs::array::DataType,
    fill: impl Into<zarrs::array::builder::ArrayBuilderFillValue>,
) -> ArrayBuilder {
    let mut chunk = shape.clone();
    chunk[0] = chunk_rows;
    let mut b = ArrayBuilder::new(shape, chunk, data_type, fill);
    b.bytes_to_bytes_codecs(compress_and_checksum());
    b
}

/// Creates an array: builds it and writes its metadata.
fn create(backend: &Backend, path: &str, builder: &ArrayBuilder) -> Result<StoreArray> {
    let array = builder
        .build(backend.storage().clone(), path)
        .map_err(zarr_err(path))?;
    write_array_metadata(backend, &array)?;
    Ok(array)
}

/// Opens an existing array.
pub(crate) fn open(storage: &Arc<Storage>, path: &str) -> Result<StoreArray> {
    Array::open(storage.clone(), path).map_err(zarr_err(path))
}

/// Opens the array at `path`; `None` when it has no metadata (an array added to the layout
/// after the segment was written).
fn open_if_present(storage: &Arc<Storage>, path: &str) -> Result<Option<StoreArray>> {
    match Array::open(storage.clone(), path) {
        Ok(array) => Ok(Some(array)),
        Err(ArrayCreateError::MissingMetadata) => Ok(None),
        Err(e) => Err(StoreError::zarr(path, e)),
    }
}

/// The row arrays of a segment. `targets` (and `ln1-int8`'s `scale`) are sharded, with inner
/// chunks of one row; the metadata arrays are read whole, so their chunk is the shard's rows.
pub(crate) struct RowArrays {
    pub key: StoreArray,
    pub image: StoreArray,
    pub view: StoreArray,
    pub targets: StoreArray,
    /// The per-row scales of an 8-bit encoding (`scale [R, D]` float16).
    pub scale: Option<StoreArray>,
}

/// Name of the scale array of an 8-bit encoding inside a segment.
const SCALE: &str = "scale";

/// A sharded row array: shards of `shard_rows` rows, inner chunks of one row.
fn sharded(
    capacity: u64,
    row_shape: Vec<u64>,
    shard_rows: u64,
    data_type: zarrs::array::DataType,
    fill: impl Into<zarrs::array::builder::ArrayBuilderFillValue>,
) -> ArrayBuilder {
    let mut shape = vec![capacity];
    shape.extend(row_shape);
    let mut subchunk = shape.clone();
    subchunk[0] = 1;
    let mut b = builder(shape, shard_rows, data_type, fill);
    b.subchunk_shape(subchunk);
    b
}

impl RowArrays {
    /// Creates the row arrays of a new segment with `capacity` rows and `shard_rows` per shard.
    pub(crate) fn create(
        backend: &Backend,
        segment: &str,
        header: &StoreHeader,
        capacity: u64,
        shard_rows: u64,
    ) -> Result<Self> {
        let (encoding, g) = (header.encoding, &header.geometry);
        let row_shape = encoding.row_shape(g);
        let targets = match encoding {
            Encoding::Ln1Int8 => sharded(capacity, row_shape, shard_rows, data_type::int8(), 0i8),
            _ => sharded(
                capacity,
                row_shape,
                shard_rows,
                data_type::float16(),
                half::f16::ZERO,
            ),
        };
        let scale = match encoding.scale_shape(g) {
            Some(shape) => Some(create(
                backend,
                &format!("{segment}/{SCALE}"),
                &sharded(
                    capacity,
                    shape,
                    shard_rows,
                    data_type::float16(),
                    half::f16::ZERO,
                ),
            )?),
            None => None,
        };
        Ok(RowArrays {
            key: create(
                backend,
                &format!("{segment}/key"),
                &builder(vec![capacity, 32], shard_rows, data_type::uint8(), 0u8),
            )?,
            image: create(
                backend,
                &format!("{segment}/image"),
                &builder(vec![capacity, 32], shard_rows, data_type::uint8(), 0u8),
            )?,
            view: create(
                backend,
                &format!("{segment}/view"),
                &builder(vec![capacity, 5], shard_rows, data_type::uint32(), 0u32),
            )?,
            targets: create(backend, &format!("{segment}/{}", encoding.name()), &targets)?,
            scale,
        })
    }

    /// Opens the row arrays of an existing segment.
    pub(crate) fn open(
        storage: &Arc<Storage>,
        segment: &str,
        header: &StoreHeader,
    ) -> Result<Self> {
        let encoding = header.encoding;
        let scale = match encoding.scale_shape(&header.geometry) {
            Some(_) => Some(open(storage, &format!("{segment}/{SCALE}"))?),
            None => None,
        };
        Ok(RowArrays {
            key: open(storage, &format!("{segment}/key"))?,
            image: open(storage, &format!("{segment}/image"))?,
            view: open(storage, &format!("{segment}/view"))?,
            targets: open(storage, &format!("{segment}/{}", encoding.name()))?,
            scale,
        })
    }

    /// Every row array.
    pub(crate) fn all_mut(&mut self) -> Vec<&mut StoreArray> {
        let mut all = vec![
            &mut self.key,
            &mut self.image,
            &mut self.view,
            &mut self.targets,
        ];
        all.extend(self.scale.as_mut());
        all
    }
}

/// The image table of a segment: `images/{hash,path,size,label,modified}`, chunked by 1024
/// entries (`modified` is absent from segments written before it was recorded).
/// Chunks are replaced atomically (written under a staging array, then renamed), because a
/// checkpoint rewrites the last, partly filled chunk.
pub(crate) struct ImageArrays {
    pub hash: StoreArray,
    pub path: StoreArray,
    pub size: StoreArray,
    pub label: StoreArray,
    pub modified: Option<StoreArray>,
}

/// The stored `images/modified` value of an entry whose modification time is not recorded.
pub(crate) const NOT_RECORDED: i64 = i64::MIN;

impl ImageArrays {
    /// Entries per chunk.
    pub(crate) const CHUNK: u64 = IMAGE_CHUNK;

    fn builders(capacity: u64) -> [(&'static str, ArrayBuilder); 5] {
        let mut b = [
            (
                "hash",
                builder(vec![capacity, 32], IMAGE_CHUNK, data_type::uint8(), 0u8),
            ),
            (
                "path",
                builder(vec![capacity], IMAGE_CHUNK, data_type::string(), ""),
            ),
            (
                "size",
                builder(vec![capacity], IMAGE_CHUNK, data_type::uint64(), 0u64),
            ),
            (
                "label",
                builder(vec![capacity], IMAGE_CHUNK, data_type::string(), ""),
            ),
            (
                "modified",
                builder(
                    vec![capacity],
                    IMAGE_CHUNK,
                    data_type::int64(),
                    NOT_RECORDED,
                ),
            ),
        ];
        // Flat chunk keys (`c.3`), so a staged chunk is renamed within one folder.
        for (_, builder) in &mut b {
            builder.chunk_key_encoding_default_separator(ChunkKeySeparator::Dot);
        }
        b
    }

    /// Creates the image table of a new segment, for at most `capacity` images.
    pub(crate) fn create(backend: &Backend, segment: &str, capacity: u64) -> Result<Self> {
        write_group(backend, &format!("{segment}/images"), Default::default())?;
        let [hash, path, size, label, modified] = Self::builders(capacity)
            .map(|(name, b)| create(backend, &format!("{segment}/images/{name}"), &b));
        Ok(ImageArrays {
            hash: hash?,
            path: path?,
            size: size?,
            label: label?,
            modified: Some(modified?),
        })
    }

    /// Opens the image table of an existing segment.
    pub(crate) fn open(storage: &Arc<Storage>, segment: &str) -> Result<Self> {
        Ok(ImageArrays {
            hash: open(storage, &format!("{segment}/images/hash"))?,
            path: open(storage, &format!("{segment}/images/path"))?,
            size: open(storage, &format!("{segment}/images/size"))?,
            label: open(storage, &format!("{segment}/images/label"))?,
            modified: open_if_present(storage, &format!("{segment}/images/modified"))?,
        })
    }

    /// Every array of the table.
    pub(crate) fn all_mut(&mut self) -> Vec<&mut StoreArray> {
        let mut all = vec![
            &mut self.hash,
            &mut self.path,
            &mut self.size,
            &mut self.label,
        ];
        all.extend(self.modified.as_mut());
        all
    }
}

/// Indices of chunk `index` along the first axis (0 along the others).
pub(crate) fn row_chunk(array: &StoreArray, index: u64) -> Vec<u64> {
    let mut chunk = vec![0; array.dimensionality()];
    chunk[0] = index;
    chunk
}

/// Replaces chunk `index` (along the first axis) of `array` atomically with `data`. On object
/// storage the chunk's single `PUT` is atomic by itself; in a folder it is encoded into a
/// staging array beside it (`<array>/staging`, never given metadata), then renamed into place.
pub(crate) fn replace_chunk<'a>(
    backend: &Backend,
    array: &StoreArray,
    index: u64,
    data: impl zarrs::array::IntoArrayBytes<'a>,
) -> Result<()> {
    let path = array.path().as_str();
    let chunk = row_chunk(array, index);
    let options = zarrs::array::CodecOptions::default().with_store_empty_chunks(true);
    if !backend.renames() {
        return array
            .store_chunk_opt(&chunk, data, &options)
            .map_err(zarr_err(path));
    }
    let staging_path = format!("{path}/staging");
    let staging = ArrayBuilder::from_array(array)
        .build(array.storage(), &staging_path)
        .map_err(zarr_err(path))?;
    staging
        .store_chunk_opt(&chunk, data, &options)
        .map_err(zarr_err(path))?;
    backend.rename(&staging.chunk_key(&chunk), &array.chunk_key(&chunk))
}

/// Creates the teacher's qkv parameter arrays of an `ln1` or `ln1-int8` store.
pub(crate) fn write_qkv_params(
    backend: &Backend,
    dim: u64,
    params: &super::QkvParams,
) -> Result<()> {
    write_group(backend, TEACHER, Default::default())?;
    for (name, shape, values) in [
        ("qkv_weight", vec![3 * dim, dim], &params.weight),
        ("qkv_bias", vec![3 * dim], &params.bias),
    ] {
        let path = format!("{TEACHER}/{name}");
        let rows = shape[0];
        let array = create(
            backend,
            &path,
            &builder(shape, rows, data_type::float32(), 0f32),
        )?;
        array
            .store_chunk(&vec![0; array.dimensionality()], values.as_slice())
            .map_err(zarr_err(&path))?;
    }
    Ok(())
}

/// Reads the teacher's qkv parameters; `None` when the store has none.
pub(crate) fn read_qkv_params(storage: &Arc<Storage>) -> Result<Option<super::QkvParams>> {
    if group_attributes(storage, TEACHER)?.is_none() {
        return Ok(None);
    }
    let read = |name: &str| -> Result<Vec<f32>> {
        let path = format!("{TEACHER}/{name}");
        let array = open(storage, &path)?;
        array
            .retrieve_array_subset::<Vec<f32>>(&array.subset_all())
            .map_err(zarr_err(&path))
    };
    Ok(Some(super::QkvParams {
        weight: read("qkv_weight")?,
        bias: read("qkv_bias")?,
    }))
}

/// A segment's state, kept in its group attributes under `tinymim_segment`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SegmentState {
    /// The watermark: rows below it are complete and visible.
    pub committed_rows: u64,
    /// Image-table entries written (entries below it are complete).
    pub committed_images: u64,
    /// True once committed.
    pub closed: bool,
    /// Rows the arrays were created for (their first axis until commit).
    pub capacity: u64,
    /// Rows per shard.
    pub shard_rows: u64,
    /// The writer's summary (null until commit).
    pub summary: serde_json::Value,
}

impl SegmentState {
    /// Writes the state into segment `id`'s `zarr.json`, atomically.
    pub(crate) fn write(&self, backend: &Backend, id: &str) -> Result<()> {
        write_group(backend, &segment_path(id), self.attributes())
    }

    /// Writes the state of a new segment `id` only if no segment `id` exists; `Ok(false)`
    /// when one does (the id is another writer's).
    pub(crate) fn claim(&self, backend: &Backend, id: &str) -> Result<bool> {
        let (key, json) = group_document(&segment_path(id), self.attributes())?;
        backend.create(&key, json)
    }

    fn attributes(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            SEGMENT_ATTRIBUTE.to_string(),
            serde_json::to_value(self).expect("segment state serialises"),
        );
        attributes
    }

    /// Reads segment `id`'s state; `None` while the segment's group has no metadata yet.
    pub(crate) fn read(storage: &Arc<Storage>, id: &str) -> Result<Option<Self>> {
        let path = segment_path(id);
        let Some(attributes) = group_attributes(storage, &path)? else {
            return Ok(None);
        };
        let state = attributes
            .get(SEGMENT_ATTRIBUTE)
            .ok_or_else(|| format!("attribute `{SEGMENT_ATTRIBUTE}` is missing"))
            .and_then(|v| {
                serde_json::from_value::<SegmentState>(v.clone())
                    .map_err(|e| format!("attribute `{SEGMENT_ATTRIBUTE}`: {e}"))
            })
            .map_err(|reason| StoreError::corrupt(&path, reason))?;
        if state.committed_rows > state.capacity || state.shard_rows == 0 {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "{} committed rows, capacity {}, {} rows per shard",
                    state.committed_rows, state.capacity, state.shard_rows
                ),
            ));
        }
        Ok(Some(state))
    }
}
