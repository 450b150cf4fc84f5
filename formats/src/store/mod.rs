//! The content-addressed relation store, `relations.zarr` (Zarr v3, written with zarrs).
//!
//! # Layout
//!
//! ```text
//! relations.zarr/zarr.json          root group; attributes {"tinymim": {"format": "tinymim.relations",
//!                                   "version": 1, "teacher": {"fingerprint": hex, "geometry": {...}},
//!                                   "encoding": "qkv", "dtype": "float16", "view_recipe": {...}}}
//! relations.zarr/teacher/qkv_weight [3D, D] float32    (ln1 encoding only)
//! relations.zarr/teacher/qkv_bias   [3D]    float32    (ln1 encoding only)
//! relations.zarr/segments/<id>/     group per writer; attributes {"tinymim_segment":
//!                                   {"committed_rows": n, "closed": bool, "summary": {...}}}
//!    key    [R, 32] uint8     content key (see `hash`)
//!    image  [R, 32] uint8     blake3 of the source image's bytes
//!    view   [R, 5]  uint32    x, y, w, h, flip
//!    maps   [R, 2, H, N, N] | qkv [R, 3, H, N, d] | ln1 [R, N, D]   float16 (named by encoding)
//!    images/hash  [M, 32] uint8    the segment's image table
//!    images/path  [M]     string   path relative to the source root
//!    images/size  [M]     uint64   file size in bytes
//!    images/label [M]     string   class label, "" = none
//! ```
//!
//! All row arrays of a segment share one chunking: the sharding codec with shards of S rows
//! (S chosen so that a shard of targets holds about 32 MB, between 1 and 1024 rows) and inner
//! chunks of one row, so reading a random row decompresses one row. Inside a shard each inner
//! chunk is `bytes → zstd → crc32c`, and the shard index is `bytes → crc32c`.
//!
//! # Commit protocol
//!
//! `committed_rows` in a segment's attributes is its watermark: rows below it are complete and
//! visible to readers, rows at or above it do not exist for them. A writer buffers rows and
//! writes each shard whole, once, so every shard has exactly one writer;
//! [`SegmentWriter::checkpoint`] writes the full shards buffered so far and then advances the
//! watermark by rewriting the segment's `zarr.json` atomically (temporary file + rename in the
//! same folder). [`SegmentWriter::commit`] writes the rest, shrinks the row arrays from the
//! writer's capacity to the final row count, and sets `closed`. A segment never checkpointed is
//! invisible, and a crash loses at most the rows after the last checkpoint.

mod error;
mod reader;
mod types;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use error::{Result, StoreError};
pub use reader::StoreReader;
pub use types::{
    ImageEntry, QkvParams, RowMeta, SegmentInfo, StoreHeader, VerifyProblem, VerifyReport,
};
pub use writer::SegmentWriter;

use crate::hash::Hash32;

/// A relation store on the local file system.
pub struct RelationStore {
    path: PathBuf,
    header: StoreHeader,
}

impl RelationStore {
    /// Creates a new store at `path`, or opens the existing one there if its header equals
    /// `header`. A differing teacher fingerprint, geometry, encoding or view recipe is refused
    /// with [`StoreError::Mismatch`] naming the field and both values. The `ln1` encoding needs
    /// `qkv` (the target block's qkv weight and bias), which must equal the stored ones when the
    /// store exists.
    pub fn create_or_open(
        path: &Path,
        header: &StoreHeader,
        qkv: Option<&QkvParams>,
    ) -> Result<Self> {
        let _ = (path, header, qkv);
        todo!()
    }

    /// Opens an existing store.
    pub fn open(path: &Path) -> Result<Self> {
        let _ = path;
        todo!()
    }

    /// The store's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What every row of the store shares.
    pub fn header(&self) -> &StoreHeader {
        &self.header
    }

    /// The target block's qkv weight and bias (`ln1` stores only; `None` otherwise).
    pub fn qkv_params(&self) -> Result<Option<QkvParams>> {
        todo!()
    }

    /// Every segment with its watermark, ordered by id.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        todo!()
    }

    /// Content keys of all committed rows (below each segment's watermark): a resumed
    /// extraction skips these.
    pub fn committed_keys(&self) -> Result<HashSet<Hash32>> {
        todo!()
    }

    /// Begins a new segment with a fresh unique id, for at most `capacity` rows.
    pub fn begin_segment(&self, capacity: u64) -> Result<SegmentWriter> {
        let _ = capacity;
        todo!()
    }

    /// A reader over all committed rows, ordered by segment id then row.
    pub fn reader(&self) -> Result<StoreReader> {
        todo!()
    }

    /// Bytes the store occupies on disk (all files under its folder).
    pub fn disk_bytes(&self) -> Result<u64> {
        todo!()
    }
}
