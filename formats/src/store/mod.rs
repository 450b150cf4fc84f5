//! The content-addressed relation store, `relations.zarr` (Zarr v3, written with zarrs).
//!
//! # Layout
//!
//! ```text
//! relations.zarr/zarr.json          root group; attributes {"tinymim": {"format": "tinymim.relations",
//!                                   "version": 1, "teacher": {"fingerprint": hex, "geometry": {...}},
//!                                   "encoding": "qkv", "dtype": "float16", "view_recipe": {...}}}
//! relations.zarr/teacher/qkv_weight [3D, D] float32    (ln1 and ln1-int8 only)
//! relations.zarr/teacher/qkv_bias   [3D]    float32    (ln1 and ln1-int8 only)
//! relations.zarr/segments/<id>/     group per writer; attributes {"tinymim_segment":
//!                                   {"committed_rows": n, "committed_images": m, "closed": bool,
//!                                    "capacity": c, "shard_rows": s, "summary": {...}}}
//!    key    [R, 32] uint8     content key (see `hash`)
//!    image  [R, 32] uint8     blake3 of the source image's bytes
//!    view   [R, 5]  uint32    x, y, w, h, flip (0 or 1)
//!    maps   [R, 2, H, N, N] | qkv [R, 3, H, N, d] | ln1 [R, N, D]   float16 (named by encoding)
//!    | ln1-int8 [R, N, D] int8 + scale [R, D] float16: x ≈ ln1-int8[r, n, c] · scale[r, c]
//!    images/hash  [M, 32] uint8    the segment's image table
//!    images/path  [M]     string   path relative to the source root (Zarr v3 `string`, vlen-utf8)
//!    images/size  [M]     uint64   file size in bytes
//!    images/label [M]     string   class label, "" = none
//!    images/modified [M]  int64    the file's modification time, ns since the Unix epoch, when it
//!                                  was read; i64::MIN = not recorded (absent in older segments)
//! ```
//!
//! Segment ids are `<unix seconds>-<pid>-<n>-<8 hex>`; readers order rows by segment id. Until
//! a segment is committed its arrays keep the writer's capacity as their first axis (R, M):
//! only rows below `committed_rows` and image entries below `committed_images` exist.
//!
//! # Chunking
//!
//! The target array (and `scale`) uses the sharding codec: a shard holds S rows (`shard_rows`, chosen so a
//! shard of targets is about 32 MB, between 1 and 1024 rows) in inner chunks of one row, each
//! `bytes → zstd → crc32c`, with the shard index `bytes → crc32c` at the end; reading a random
//! row decompresses one row. `key`, `image` and `view` are read whole when a store is opened,
//! so they are not sharded: their chunks are the same S rows, `bytes → zstd → crc32c`. The
//! image-table arrays have chunks of 1024 entries with flat chunk keys (`c.0`, `c.1`, …).
//! zarr-python 3 reads all of it (`tests/zarr_python.rs`).
//!
//! # Commit protocol
//!
//! `committed_rows` in a segment's attributes is its watermark: rows below it are complete and
//! visible to readers, rows at or above it do not exist for them. A writer buffers rows and
//! writes each shard whole, once, so every shard has exactly one writer. A segment's id is
//! claimed by creating its `zarr.json` only if absent, so no two writers share a segment.
//! [`SegmentWriter::checkpoint`] writes the image-table entries added so far (each changed chunk
//! replaced atomically) and then advances the watermark past the full shards written, by
//! replacing the segment's `zarr.json` atomically. [`SegmentWriter::commit`] writes the last,
//! partly filled shard, shrinks the arrays to the final counts (metadata replaced atomically
//! too), then sets the watermark and `closed`. A segment never checkpointed is invisible, and a
//! crash loses at most the rows after the last checkpoint.
//!
//! # Where a store lives
//!
//! In a local folder, or under a prefix of an S3-compatible bucket (`s3://bucket/prefix`). The
//! protocol asks two things of either place (see `backend`): an atomic replace (in a folder a
//! temporary file renamed over the old one and the folder synced, since zarrs'
//! `FilesystemStore::set` alone truncates and rewrites in place; on object storage one `PUT`) and
//! a create-if-absent (a hard link; a conditional `PUT` with `If-None-Match: *`). Nothing needs
//! a rename on object storage.
//!
//! # Checksums
//!
//! zarrs 0.23 checks crc32c when it decodes a whole chunk, but its partial reads of a subset
//! of a shard skip the check. The reader therefore reads metadata as whole chunks and a row's
//! targets as its whole encoded inner chunk (see `targets`), so every read is verified.

mod backend;
mod error;
mod header;
mod layout;
mod reader;
mod targets;
pub(crate) mod types;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use zarrs::storage::{ListableStorageTraits, StorePrefix};

pub use backend::{
    object_fetches, StoreLocation, MAX_OBJECT_FETCHES, OBJECT_FETCHES, OBJECT_FETCHES_VARIABLE,
};
pub use error::{Result, StoreError};
pub use reader::StoreReader;
pub use types::{
    ImageEntry, QkvParams, RowMeta, SegmentInfo, SourceRoot, StoreHeader, VerifyProblem,
    VerifyReport,
};
pub use writer::SegmentWriter;

use crate::hash::Hash32;
use backend::Backend;
use header::{check_same, RootAttributes};
use layout::{group_attributes, write_group, SegmentState, SEGMENTS};
use types::check_geometry;

/// A relation store in a local folder or on S3-compatible object storage (a `path` of the form
/// `s3://bucket/prefix`, see [`StoreLocation`]).
pub struct RelationStore {
    path: PathBuf,
    backend: Arc<Backend>,
    header: StoreHeader,
}

impl RelationStore {
    /// Creates a new store at `path`, or opens the existing one there if its header equals
    /// `header`. A differing teacher fingerprint, geometry, encoding or view recipe is refused
    /// with [`StoreError::Mismatch`] naming the field and both values. The `ln1` encoding needs
    /// `qkv` (the target block's qkv weight and bias), which must equal the stored ones when the
    /// store exists. A folder (or bucket prefix) that is not empty and holds no store is
    /// refused. Concurrent creators of one new store are safe: every object of the skeleton is
    /// written only if absent, the root `zarr.json` last, so one creator's header wins and the
    /// others are refused unless theirs is the same.
    pub fn create_or_open(
        path: &Path,
        header: &StoreHeader,
        qkv: Option<&QkvParams>,
    ) -> Result<Self> {
        check_geometry(&header.geometry)?;
        let dim = header.geometry.dim as usize;
        let qkv = match (header.encoding.stores_ln1(), qkv) {
            (true, None) => return Err(StoreError::MissingQkvParams),
            (true, Some(params)) => {
                params.views(dim)?;
                Some(params)
            }
            (false, _) => None,
        };
        let backend = Arc::new(Backend::open(&StoreLocation::of(path)?, path, true)?);
        let exists = group_attributes(backend.storage(), "/")
            .map_err(|e| e.within(path))?
            .is_some();
        if !exists {
            Self::create(path, &backend, header, qkv)?;
        }
        let store = Self::with_backend(path, backend)?;
        check_same(&store.header, header)?;
        if let Some(params) = qkv {
            let stored = store.qkv_params()?.ok_or_else(|| {
                StoreError::corrupt("teacher", "an ln1 store without qkv parameters").within(path)
            })?;
            for (what, s, w) in [
                ("qkv weight", &stored.weight, &params.weight),
                ("qkv bias", &stored.bias, &params.bias),
            ] {
                if s != w {
                    return Err(StoreError::Mismatch {
                        what: what.to_string(),
                        store: values_digest(s),
                        writer: values_digest(w),
                    });
                }
            }
        }
        Ok(store)
    }

    /// Writes a new store's skeleton: assembled in memory, then each object created in the
    /// store only if absent, the root `zarr.json` last, so a half-created store is no store.
    fn create(
        path: &Path,
        backend: &Backend,
        header: &StoreHeader,
        qkv: Option<&QkvParams>,
    ) -> Result<()> {
        // A concurrent creator may have begun the same skeleton; anything else is foreign.
        let listing = backend
            .storage()
            .list_dir(&StorePrefix::root())
            .map_err(|e| StoreError::zarr("/", e).within(path))?;
        let foreign = listing
            .keys()
            .iter()
            .map(|k| k.as_str().to_string())
            .filter(|k| !(k.starts_with("zarr.json") || k.starts_with(".create.")))
            .chain(
                listing
                    .prefixes()
                    .iter()
                    .map(|p| p.as_str().to_string())
                    .filter(|p| !(p == "segments/" || p == "teacher/")),
            )
            .next();
        if let Some(entry) = foreign {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
                reason: format!(
                    "it holds {entry:?} but no zarr.json; choose a new or empty folder (or \
                     prefix) for a new store"
                ),
            });
        }
        let skeleton = Backend::memory();
        if let Some(params) = qkv {
            layout::write_qkv_params(&skeleton, u64::from(header.geometry.dim), params)?;
        }
        write_group(&skeleton, SEGMENTS, Default::default())?;
        write_group(&skeleton, "/", RootAttributes::of(header).to_attributes())?;
        skeleton
            .copy_new_into(backend, "zarr.json")
            .map_err(|e| e.within(path))
    }

    /// Opens an existing store.
    pub fn open(path: &Path) -> Result<Self> {
        let location = StoreLocation::of(path)?;
        if let StoreLocation::Local(folder) = &location {
            if !folder.is_dir() {
                return Err(StoreError::NotAStore {
                    path: path.to_path_buf(),
                    reason: "no such folder".to_string(),
                });
            }
        }
        Self::with_backend(path, Arc::new(Backend::open(&location, path, false)?))
    }

    /// The store whose root `zarr.json` is in `backend` (at `path`, for messages).
    fn with_backend(path: &Path, backend: Arc<Backend>) -> Result<Self> {
        let not_a_store = |reason: String| StoreError::NotAStore {
            path: path.to_path_buf(),
            reason,
        };
        let attributes = group_attributes(backend.storage(), "/")
            .map_err(|e| e.within(path))?
            .ok_or_else(|| not_a_store("no zarr.json at its root".to_string()))?;
        let header = RootAttributes::parse(&attributes).map_err(not_a_store)?;
        Ok(RelationStore {
            path: path.to_path_buf(),
            backend,
            header,
        })
    }

    /// The store's folder or `s3://` URL, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What every row of the store shares.
    pub fn header(&self) -> &StoreHeader {
        &self.header
    }

    /// The target block's qkv weight and bias (`ln1` and `ln1-int8` stores only; `None` otherwise).
    pub fn qkv_params(&self) -> Result<Option<QkvParams>> {
        let params =
            layout::read_qkv_params(self.backend.storage()).map_err(|e| e.within(&self.path))?;
        if let Some(p) = &params {
            p.views(self.header.geometry.dim as usize)?;
        }
        Ok(params)
    }

    /// Every segment with its watermark, ordered by id. Segments still being created (no
    /// metadata yet) are left out.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        Ok(self
            .segment_states()?
            .into_iter()
            .map(|(id, s)| SegmentInfo {
                id,
                committed_rows: s.committed_rows,
                closed: s.closed,
                summary: s.summary,
            })
            .collect())
    }

    /// Content keys of all committed rows (below each segment's watermark): a resumed
    /// extraction skips these.
    pub fn committed_keys(&self) -> Result<HashSet<Hash32>> {
        let mut keys = HashSet::new();
        for (id, state) in self.segment_states()? {
            if state.committed_rows > 0 {
                keys.extend(
                    reader::read_keys(self.backend.storage(), &id, state.committed_rows)
                        .map_err(|e| e.within(&self.path))?,
                );
            }
        }
        Ok(keys)
    }

    /// Begins a new segment with a fresh unique id, for at most `capacity` rows, with shards of
    /// about 32 MB (see [`default_shard_rows`](Self::default_shard_rows)).
    pub fn begin_segment(&self, capacity: u64) -> Result<SegmentWriter> {
        self.begin_segment_with_shard_rows(capacity, self.default_shard_rows())
    }

    /// Rows per shard that [`begin_segment`](Self::begin_segment) uses: about 32 MB of
    /// targets per shard, between 1 and 1024 rows.
    pub fn default_shard_rows(&self) -> u64 {
        layout::default_shard_rows(self.header.encoding.row_bytes(&self.header.geometry))
    }

    /// Begins a new segment with `shard_rows` rows per shard (at least 1): fewer rows per shard
    /// make checkpoints finer-grained.
    pub fn begin_segment_with_shard_rows(
        &self,
        capacity: u64,
        shard_rows: u64,
    ) -> Result<SegmentWriter> {
        let state = SegmentWriter::initial_state(capacity, shard_rows.max(1));
        let id = self
            .claim_segment_id(&state)
            .map_err(|e| e.within(&self.path))?;
        SegmentWriter::create(
            self.path.clone(),
            self.backend.clone(),
            self.header.clone(),
            id,
            state,
        )
        .map_err(|e| e.within(&self.path))
    }

    /// A reader over all committed rows, ordered by segment id then row.
    pub fn reader(&self) -> Result<StoreReader> {
        StoreReader::load(
            self.path.clone(),
            self.backend.storage(),
            self.backend.fetch_pool(),
            self.header.clone(),
            self.qkv_params()?,
            self.segment_states()?,
        )
        .map_err(|e| e.within(&self.path))
    }

    /// Bytes the store occupies (all files under its folder, or objects under its prefix).
    pub fn disk_bytes(&self) -> Result<u64> {
        self.backend
            .storage()
            .size()
            .map_err(|e| StoreError::zarr("/", e).within(&self.path))
    }

    /// (id, state) of every segment with metadata, ordered by id.
    fn segment_states(&self) -> Result<Vec<(String, SegmentState)>> {
        let prefix = StorePrefix::new("segments/").expect("a valid prefix");
        let listing = self
            .backend
            .storage()
            .list_dir(&prefix)
            .map_err(|e| StoreError::zarr(SEGMENTS, e).within(&self.path))?;
        let mut ids: Vec<String> = listing
            .prefixes()
            .iter()
            .filter_map(|p| p.as_str().strip_prefix("segments/"))
            .map(|id| id.trim_end_matches('/').to_string())
            .collect();
        ids.sort();
        let mut states = Vec::new();
        for id in ids {
            if let Some(state) =
                SegmentState::read(self.backend.storage(), &id).map_err(|e| e.within(&self.path))?
            {
                states.push((id, state));
            }
        }
        Ok(states)
    }

    /// Claims a fresh segment id, `<unix seconds>-<pid>-<n>-<8 hex>`, by creating its
    /// `zarr.json` with `state` exclusively, so that two writers (on any hosts) never share one.
    fn claim_segment_id(&self, state: &SegmentState) -> Result<String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let pid = std::process::id();
            let salt = format!(
                "{}:{pid}:{n}:{:?}",
                now.as_nanos(),
                std::thread::current().id()
            );
            let id = format!(
                "{:010}-{pid}-{n}-{}",
                now.as_secs(),
                &Hash32::of_bytes(salt.as_bytes()).to_hex()[..8]
            );
            if state.claim(&self.backend, &id)? {
                return Ok(id);
            }
        }
    }
}

/// A short digest of float values, for mismatch messages.
fn values_digest(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    format!(
        "{} values, blake3 {}",
        values.len(),
        Hash32::of_bytes(&bytes).short()
    )
}
