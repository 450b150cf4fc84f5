//! Writing one segment: buffered rows, whole shards, an atomic watermark.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::backend::Backend;
use super::layout::{
    replace_chunk, row_chunk, write_array_metadata, zarr_err, ImageArrays, RowArrays, SegmentState,
    NOT_RECORDED,
};
use super::{ImageEntry, Result, RowMeta, SegmentInfo, StoreError, StoreHeader};
use crate::encoding::Targets;
use crate::hash::{content_key, Hash32};

/// The single writer of one segment. Send it to the thread that extracts; see the
/// [`store`](crate::store) module for the commit protocol. Dropping it without
/// [`commit`](Self::commit) keeps the rows up to the last [`checkpoint`](Self::checkpoint).
pub struct SegmentWriter {
    root: PathBuf,
    id: String,
    backend: Arc<Backend>,
    header: StoreHeader,
    /// Values and scales of one row.
    row_lens: (usize, usize),
    rows: RowArrays,
    image_arrays: ImageArrays,
    state: SegmentState,
    /// Rows in shards on disk (a multiple of the shard rows until commit).
    written_rows: u64,
    pending: PendingShard,
    images: Vec<ImageEntry>,
    image_hashes: HashSet<Hash32>,
}

/// Rows buffered for the shard being filled.
struct PendingShard {
    rows: u64,
    keys: Vec<u8>,
    images: Vec<u8>,
    views: Vec<u32>,
    targets: Targets,
}

impl PendingShard {
    /// An empty buffer for rows of `encoding`.
    fn new(encoding: crate::Encoding) -> Self {
        PendingShard {
            rows: 0,
            keys: Vec::new(),
            images: Vec::new(),
            views: Vec::new(),
            targets: encoding.no_targets(),
        }
    }

    /// Empties the buffer, keeping its allocations for the next shard.
    fn clear(&mut self) {
        self.rows = 0;
        self.keys.clear();
        self.images.clear();
        self.views.clear();
        self.targets.resize((0, 0));
    }
}

impl SegmentWriter {
    /// The (empty, invisible) state of a new segment, which its id is claimed with.
    pub(super) fn initial_state(capacity: u64, shard_rows: u64) -> SegmentState {
        SegmentState {
            committed_rows: 0,
            committed_images: 0,
            closed: false,
            capacity,
            shard_rows,
            summary: serde_json::Value::Null,
        }
    }

    /// Creates the arrays of segment `id`, claimed with `state` (its
    /// [`initial_state`](Self::initial_state)).
    pub(super) fn create(
        root: PathBuf,
        backend: Arc<Backend>,
        header: StoreHeader,
        id: String,
        state: SegmentState,
    ) -> Result<Self> {
        let path = super::layout::segment_path(&id);
        let (capacity, shard_rows) = (state.capacity, state.shard_rows);
        let rows = RowArrays::create(&backend, &path, &header, capacity, shard_rows)?;
        let image_arrays = ImageArrays::create(&backend, &path, capacity.max(1))?;
        let (encoding, g) = (header.encoding, &header.geometry);
        Ok(SegmentWriter {
            row_lens: (encoding.row_len(g), encoding.scale_len(g)),
            pending: PendingShard::new(encoding),
            root,
            id,
            backend,
            header,
            rows,
            image_arrays,
            state,
            written_rows: 0,
            images: Vec::new(),
            image_hashes: HashSet::new(),
        })
    }

    /// The segment's id (its folder name under `segments/`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a source image to the segment's image table (an image already added is skipped).
    /// Every row's image must be added before the row is pushed.
    pub fn add_image(&mut self, entry: ImageEntry) -> Result<()> {
        if self.image_hashes.insert(entry.hash) {
            self.images.push(entry);
        }
        Ok(())
    }

    /// Appends one row; `targets` must hold exactly one row of the store's encoding (its values
    /// and, for `ln1-int8`, its scales), the row's
    /// image must be in the image table and its key must be the content key of
    /// (teacher, block, encoding, image, view). Writes a shard whenever one fills up; if that
    /// write fails the row stays buffered and the next push, checkpoint or commit retries it.
    pub fn push(&mut self, row: RowMeta, targets: &Targets) -> Result<()> {
        self.write_full_shard()?;
        let segment = &self.id;
        let h = &self.header;
        let what = format!("segment {segment}: targets of row {}", self.rows());
        h.encoding.check_row(&h.geometry, targets, &what)?;
        if self.rows() >= self.state.capacity {
            return Err(StoreError::CapacityExceeded {
                segment: segment.clone(),
                capacity: self.state.capacity,
            });
        }
        if !self.image_hashes.contains(&row.image) {
            return Err(StoreError::UnknownImage {
                segment: segment.clone(),
                image: row.image,
            });
        }
        let expected = content_key(
            &h.teacher,
            h.geometry.target_block,
            h.encoding,
            &row.image,
            &row.view,
        );
        if row.key != expected {
            return Err(StoreError::WrongKey {
                segment: segment.clone(),
                row: Box::new(row),
                expected,
            });
        }
        let p = &mut self.pending;
        p.keys.extend_from_slice(&row.key.0);
        p.images.extend_from_slice(&row.image.0);
        let v = row.view;
        p.views
            .extend_from_slice(&[v.x, v.y, v.w, v.h, u32::from(v.flip)]);
        p.targets.append(targets);
        p.rows += 1;
        self.write_full_shard()
    }

    /// Writes the buffered rows if they fill a shard.
    fn write_full_shard(&mut self) -> Result<()> {
        if self.pending.rows == self.state.shard_rows {
            self.write_shard().map_err(|e| e.within(&self.root))?;
        }
        Ok(())
    }

    /// Rows pushed so far (committed or not).
    pub fn rows(&self) -> u64 {
        self.written_rows + self.pending.rows
    }

    /// Writes every full shard buffered so far and the image table, then advances the
    /// watermark past the written rows. Rows of a partly filled shard stay buffered.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.write_full_shard()?;
        self.write_images().map_err(|e| e.within(&self.root))?;
        self.state.committed_rows = self.written_rows;
        self.state.committed_images = self.images.len() as u64;
        self.state
            .write(&self.backend, &self.id)
            .map_err(|e| e.within(&self.root))
    }

    /// Writes the remaining rows and the image table, shrinks the arrays to the row and image
    /// counts and closes the segment with `summary` recorded in its attributes.
    pub fn commit(mut self, summary: serde_json::Value) -> Result<SegmentInfo> {
        let root = self.root.clone();
        self.commit_inner(summary).map_err(|e| e.within(&root))
    }

    fn commit_inner(&mut self, summary: serde_json::Value) -> Result<SegmentInfo> {
        if self.pending.rows > 0 {
            self.write_shard()?;
        }
        self.write_images()?;
        let (rows, images) = (self.written_rows, self.images.len() as u64);
        for array in self.rows.all_mut() {
            resize(&self.backend, array, rows)?;
        }
        for array in self.image_arrays.all_mut() {
            resize(&self.backend, array, images)?;
        }
        self.state = SegmentState {
            committed_rows: rows,
            committed_images: images,
            closed: true,
            capacity: rows,
            shard_rows: self.state.shard_rows,
            summary: summary.clone(),
        };
        self.state.write(&self.backend, &self.id)?;
        Ok(SegmentInfo {
            id: self.id.clone(),
            committed_rows: rows,
            closed: true,
            summary,
        })
    }

    /// Writes the buffered rows as shard `written_rows / shard_rows`, padded to a whole shard.
    /// On failure the rows stay buffered, unpadded.
    fn write_shard(&mut self) -> Result<()> {
        let shard_rows = self.state.shard_rows;
        let index = self.written_rows / shard_rows;
        let p = &mut self.pending;
        let lens = (
            p.keys.len(),
            p.images.len(),
            p.views.len(),
            p.targets.lens(),
        );
        let missing = (shard_rows - p.rows) as usize;
        p.keys.resize(lens.0 + 32 * missing, 0);
        p.images.resize(lens.1 + 32 * missing, 0);
        p.views.resize(lens.2 + 5 * missing, 0);
        let (values, scales) = lens.3;
        p.targets.resize((
            values + self.row_lens.0 * missing,
            scales + self.row_lens.1 * missing,
        ));
        let r = &self.rows;
        let written = store_shard(&r.key, index, &p.keys)
            .and_then(|()| store_shard(&r.image, index, &p.images))
            .and_then(|()| store_shard(&r.view, index, &p.views))
            .and_then(|()| match (&p.targets, &r.scale) {
                (Targets::Half(values), _) => store_shard(&r.targets, index, values),
                (Targets::Int8 { values, scales }, Some(scale)) => {
                    store_shard(&r.targets, index, values)
                        .and_then(|()| store_shard(scale, index, scales))
                }
                (Targets::Int8 { .. }, None) => Err(StoreError::corrupt(
                    r.targets.path().as_str(),
                    "int8 targets without their scale array",
                )),
            });
        if let Err(e) = written {
            p.keys.truncate(lens.0);
            p.images.truncate(lens.1);
            p.views.truncate(lens.2);
            p.targets.resize(lens.3);
            return Err(e);
        }
        self.written_rows += p.rows;
        p.clear();
        Ok(())
    }

    /// Writes the image-table chunks holding entries added since the last write, growing the
    /// table's arrays first when needed.
    fn write_images(&mut self) -> Result<()> {
        let (done, len) = (self.state.committed_images, self.images.len() as u64);
        if len == done {
            return Ok(());
        }
        if len > self.image_arrays.hash.shape()[0] {
            for array in self.image_arrays.all_mut() {
                resize(&self.backend, array, (2 * len).max(ImageArrays::CHUNK))?;
            }
        }
        let chunk = ImageArrays::CHUNK;
        for c in done / chunk..len.div_ceil(chunk) {
            let entries = &self.images[(c * chunk) as usize..((c + 1) * chunk).min(len) as usize];
            let pad = chunk as usize - entries.len();
            let mut hashes: Vec<u8> = entries.iter().flat_map(|e| e.hash.0).collect();
            hashes.resize(hashes.len() + 32 * pad, 0);
            let strings = |f: fn(&ImageEntry) -> &str| -> Vec<&str> {
                let mut v: Vec<&str> = entries.iter().map(f).collect();
                v.resize(v.len() + pad, "");
                v
            };
            let mut sizes: Vec<u64> = entries.iter().map(|e| e.size).collect();
            sizes.resize(sizes.len() + pad, 0);
            let (a, b) = (&self.image_arrays, self.backend.as_ref());
            replace_chunk(b, &a.hash, c, hashes)?;
            replace_chunk(b, &a.path, c, strings(|e| e.path.as_str()))?;
            replace_chunk(b, &a.size, c, sizes)?;
            replace_chunk(
                b,
                &a.label,
                c,
                strings(|e| e.label.as_deref().unwrap_or("")),
            )?;
            if let Some(modified) = &a.modified {
                let mut times: Vec<i64> = entries
                    .iter()
                    .map(|e| e.modified.unwrap_or(NOT_RECORDED))
                    .collect();
                times.resize(times.len() + pad, NOT_RECORDED);
                replace_chunk(b, modified, c, times)?;
            }
        }
        Ok(())
    }
}

/// Stores a whole shard (chunk `index` along the row axis) of a row array.
fn store_shard<T: zarrs::array::Element>(
    array: &super::layout::StoreArray,
    index: u64,
    data: &[T],
) -> Result<()> {
    array
        .store_chunk(&row_chunk(array, index), data)
        .map_err(zarr_err(array.path().as_str()))
}

/// Sets an array's first axis to `len` and rewrites its metadata atomically.
fn resize(backend: &Backend, array: &mut super::layout::StoreArray, len: u64) -> Result<()> {
    let mut shape = array.shape().to_vec();
    shape[0] = len;
    let path = array.path().as_str().to_string();
    array.set_shape(shape).map_err(zarr_err(&path))?;
    write_array_metadata(backend, array)
}
