//! Reading committed rows: metadata in memory, targets on demand.

use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use super::backend::Storage;

use super::layout::{
    row_chunk, zarr_err, ImageArrays, RowArrays, SegmentState, StoreArray, NOT_RECORDED,
};
use super::targets::TargetRows;
use super::{
    ImageEntry, QkvParams, Result, RowMeta, StoreError, StoreHeader, VerifyProblem, VerifyReport,
};
use crate::encoding::Targets;
use crate::hash::{content_key, Hash32};
use crate::images::is_under_root;
use crate::relation::decode_maps;
use crate::view::View;
use half::f16;
use ndarray::Array4;

/// Read access to every committed row of a store. `Send + Sync`: parallel loader threads share
/// one reader. Row metadata and the merged image tables are held in memory; targets are read
/// (one inner chunk of one array) on demand.
///
/// Rows are ordered by segment id, then row; a content key committed by several segments
/// appears once (its first occurrence).
pub struct StoreReader {
    root: PathBuf,
    /// Runs the concurrent row reads of [`targets_of`](Self::targets_of) on object storage.
    fetch: Option<&'static rayon::ThreadPool>,
    header: StoreHeader,
    qkv: Option<QkvParams>,
    segments: Vec<SegmentRows>,
    rows: Vec<RowMeta>,
    /// (segment index, row within the segment) of every row.
    locations: Vec<(usize, u64)>,
    images: HashMap<Hash32, ImageEntry>,
}

/// One segment's committed part.
struct SegmentRows {
    id: String,
    arrays: RowArrays,
    targets: TargetRows,
    /// The scales of an 8-bit encoding.
    scales: Option<TargetRows>,
    committed_rows: u64,
    shard_rows: u64,
    images: HashSet<Hash32>,
}

impl StoreReader {
    /// Loads the metadata of every committed row of the given segments.
    pub(super) fn load(
        root: PathBuf,
        storage: &Arc<Storage>,
        fetch: Option<&'static rayon::ThreadPool>,
        header: StoreHeader,
        qkv: Option<QkvParams>,
        segments: Vec<(String, SegmentState)>,
    ) -> Result<Self> {
        let mut reader = StoreReader {
            root,
            fetch,
            header,
            qkv,
            segments: Vec::new(),
            rows: Vec::new(),
            locations: Vec::new(),
            images: HashMap::new(),
        };
        let mut seen = HashSet::new();
        for (id, state) in segments {
            if state.committed_rows == 0 {
                continue;
            }
            let path = super::layout::segment_path(&id);
            let arrays = RowArrays::open(storage, &path, &reader.header)?;
            check_row_arrays(&arrays, &reader.header, state.committed_rows)?;
            let rows_of = |array: &StoreArray| {
                TargetRows::new(super::layout::open(storage, array.path().as_str())?)
            };
            let targets = rows_of(&arrays.targets)?;
            let scales = arrays.scale.as_ref().map(rows_of).transpose()?;
            let table = read_image_table(storage, &path, state.committed_images)?;
            let meta = read_meta(&arrays, 0..state.committed_rows)?;
            let segment = reader.segments.len();
            for (r, row) in meta.into_iter().enumerate() {
                if seen.insert(row.key) {
                    reader.rows.push(row);
                    reader.locations.push((segment, r as u64));
                }
            }
            let images = table.iter().map(|e| e.hash).collect();
            for entry in table {
                reader.images.entry(entry.hash).or_insert(entry);
            }
            reader.segments.push(SegmentRows {
                id,
                arrays,
                targets,
                scales,
                committed_rows: state.committed_rows,
                shard_rows: state.shard_rows,
                images,
            });
        }
        Ok(reader)
    }

    /// What every row shares.
    pub fn header(&self) -> &StoreHeader {
        &self.header
    }

    /// The target block's qkv weight and bias (`ln1` and `ln1-int8` stores only), for decoding
    /// on a device.
    pub fn qkv_params(&self) -> Option<&QkvParams> {
        self.qkv.as_ref()
    }

    /// Number of committed rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the store has no committed row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Metadata of row `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn row(&self, i: usize) -> &RowMeta {
        &self.rows[i]
    }

    /// The image-table entry of an image hash (tables of all segments merged).
    pub fn image(&self, hash: &Hash32) -> Option<&ImageEntry> {
        self.images.get(hash)
    }

    /// Every image-table entry, one per image hash (the first segment's), in no order.
    pub fn images(&self) -> impl Iterator<Item = &ImageEntry> {
        self.images.values()
    }

    /// The stored targets of row `i`, as encoded: `encoding.row_len(geometry)` values (and
    /// `encoding.scale_len(geometry)` scales for `ln1-int8`).
    pub fn targets(&self, i: usize) -> Result<Targets> {
        let &(segment, row) = self.locations.get(i).ok_or(StoreError::RowOutOfRange {
            index: i,
            len: self.len(),
        })?;
        self.segments[segment]
            .targets(row)
            .map_err(|e| e.within(&self.root))
    }

    /// The stored targets of rows `rows`, in that order, read in parallel: on object storage by
    /// [`OBJECT_FETCHES`](super::OBJECT_FETCHES) requests in flight (one byte range of a shard
    /// per row), in a folder on the caller's rayon pool.
    pub fn targets_of(&self, rows: &[usize]) -> Result<Vec<Targets>> {
        let read = || rows.par_iter().map(|&i| self.targets(i)).collect();
        match &self.fetch {
            Some(pool) => pool.install(read),
            None => read(),
        }
    }

    /// The relation maps of row `i`, decoded from any encoding: `[2, H, N, N]`.
    pub fn maps(&self, i: usize) -> Result<Array4<f32>> {
        let targets = self.targets(i)?;
        decode_maps(
            self.header.encoding,
            &targets,
            &self.header.geometry,
            self.qkv.as_ref(),
        )
    }

    /// Reads every committed row's chunks (crc32c checked by the codecs) and recomputes every
    /// row's content key from (teacher, block, encoding, image, view). Problems are listed in
    /// the report; an error is returned only when the store cannot be read at all.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport {
            segments: self.segments.len(),
            ..Default::default()
        };
        for segment in &self.segments {
            let mut start = 0;
            while start < segment.committed_rows {
                let end = (start + segment.shard_rows).min(segment.committed_rows);
                self.verify_shard(segment, start..end, &mut report.problems);
                report.rows += end - start;
                start = end;
            }
        }
        Ok(report)
    }

    /// Checks rows `range` (one shard) of a segment.
    fn verify_shard(
        &self,
        segment: &SegmentRows,
        range: Range<u64>,
        problems: &mut Vec<VerifyProblem>,
    ) {
        let unreadable = |row: u64, reason: String| VerifyProblem::Unreadable {
            segment: segment.id.clone(),
            row,
            reason,
        };
        if let Err(shard_error) = segment.read_shard(range.clone()) {
            // Find the rows whose inner chunks fail; blame the shard's first row otherwise.
            let before = problems.len();
            for row in range.clone() {
                if let Err(e) = segment.targets(row) {
                    problems.push(unreadable(row, e.within(&self.root).to_string()));
                }
            }
            if problems.len() == before {
                let reason = shard_error.within(&self.root).to_string();
                problems.push(unreadable(range.start, reason));
            }
        }
        let meta = match read_meta(&segment.arrays, range.clone()) {
            Ok(meta) => meta,
            Err(e) => {
                let reason = e.within(&self.root).to_string();
                problems.extend(range.map(|row| unreadable(row, reason.clone())));
                return;
            }
        };
        let h = &self.header;
        for (row, m) in range.zip(meta) {
            let expected = content_key(
                &h.teacher,
                h.geometry.target_block,
                h.encoding,
                &m.image,
                &m.view,
            );
            if m.key != expected {
                problems.push(VerifyProblem::WrongKey {
                    segment: segment.id.clone(),
                    row,
                    stored: m.key,
                    expected,
                });
            }
            if !segment.images.contains(&m.image) {
                problems.push(VerifyProblem::UnknownImage {
                    segment: segment.id.clone(),
                    row,
                    image: m.image,
                });
            }
        }
    }
}

impl SegmentRows {
    /// Row `row`'s targets (and scales), each inner chunk's checksum verified.
    fn targets(&self, row: u64) -> Result<Targets> {
        match &self.scales {
            None => Ok(Targets::Half(self.targets.row::<f16>(row)?)),
            Some(scales) => Ok(Targets::Int8 {
                values: self.targets.row::<i8>(row)?,
                scales: scales.row::<f16>(row)?,
            }),
        }
    }

    /// Reads the shards holding rows `range` whole (every checksum verified), for `verify`.
    fn read_shard(&self, range: Range<u64>) -> Result<()> {
        match &self.arrays.scale {
            None => read_rows::<f16>(&self.arrays.targets, range).map(drop),
            Some(scale) => {
                read_rows::<i8>(&self.arrays.targets, range.clone())?;
                read_rows::<f16>(scale, range).map(drop)
            }
        }
    }
}

/// The content keys of rows `0..rows` of segment `id`.
pub(super) fn read_keys(storage: &Arc<Storage>, id: &str, rows: u64) -> Result<Vec<Hash32>> {
    let path = super::layout::segment_path(id);
    let key = super::layout::open(storage, &format!("{path}/key"))?;
    Ok(hashes(read_rows::<u8>(&key, 0..rows)?))
}

/// Refuses row arrays too short for the watermark or shaped for another geometry.
fn check_row_arrays(arrays: &RowArrays, header: &StoreHeader, committed: u64) -> Result<()> {
    let (encoding, g) = (header.encoding, &header.geometry);
    let with_rows = |shape: Vec<u64>| [vec![0], shape].concat();
    let mut expected = vec![
        (&arrays.key, vec![0, 32]),
        (&arrays.image, vec![0, 32]),
        (&arrays.view, vec![0, 5]),
        (&arrays.targets, with_rows(encoding.row_shape(g))),
    ];
    if let (Some(scale), Some(shape)) = (&arrays.scale, encoding.scale_shape(g)) {
        expected.push((scale, with_rows(shape)));
    }
    for (array, row_shape) in expected {
        let shape = array.shape();
        if shape.len() != row_shape.len() || shape[1..] != row_shape[1..] || shape[0] < committed {
            return Err(StoreError::corrupt(
                array.path().as_str(),
                format!(
                    "shape {shape:?}, expected [≥{committed}, {}]",
                    row_shape[1..]
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Rows `range` of a row array, flattened, read as whole chunks: zarrs checks chunk
/// checksums when it decodes a whole chunk, but not in the partial reads of a subset.
fn read_rows<T: zarrs::array::ElementOwned + Clone>(
    array: &StoreArray,
    range: Range<u64>,
) -> Result<Vec<T>> {
    let path = array.path().as_str();
    let chunk_rows = array
        .chunk_shape(&row_chunk(array, 0))
        .map_err(zarr_err(path))?[0]
        .get();
    let row_len: usize = array.shape()[1..].iter().map(|&n| n as usize).product();
    let mut out = Vec::with_capacity((range.end - range.start) as usize * row_len);
    let mut start = range.start;
    while start < range.end {
        let chunk = start / chunk_rows;
        let end = range.end.min((chunk + 1) * chunk_rows);
        let values = array
            .retrieve_chunk::<Vec<T>>(&row_chunk(array, chunk))
            .map_err(zarr_err(path))?;
        let first = (start - chunk * chunk_rows) as usize * row_len;
        out.extend_from_slice(&values[first..first + (end - start) as usize * row_len]);
        start = end;
    }
    Ok(out)
}

/// Splits a flat byte vector into 32-byte hashes.
fn hashes(bytes: Vec<u8>) -> Vec<Hash32> {
    bytes
        .chunks_exact(32)
        .map(|c| Hash32(c.try_into().expect("chunks of 32")))
        .collect()
}

/// Row metadata of rows `range` of a segment.
fn read_meta(arrays: &RowArrays, range: Range<u64>) -> Result<Vec<RowMeta>> {
    let keys = hashes(read_rows::<u8>(&arrays.key, range.clone())?);
    let images = hashes(read_rows::<u8>(&arrays.image, range.clone())?);
    let views = read_rows::<u32>(&arrays.view, range.clone())?;
    keys.into_iter()
        .zip(images)
        .zip(views.chunks_exact(5))
        .zip(range)
        .map(|(((key, image), v), row)| {
            if v[4] > 1 {
                return Err(StoreError::corrupt(
                    arrays.view.path().as_str(),
                    format!("row {row}: flip is {}, expected 0 or 1", v[4]),
                ));
            }
            let view = View {
                x: v[0],
                y: v[1],
                w: v[2],
                h: v[3],
                flip: v[4] == 1,
            };
            Ok(RowMeta { key, image, view })
        })
        .collect()
}

/// The first `len` entries of a segment's image table.
fn read_image_table(storage: &Arc<Storage>, segment: &str, len: u64) -> Result<Vec<ImageEntry>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let table = ImageArrays::open(storage, segment)?;
    let hash = hashes(read_rows::<u8>(&table.hash, 0..len)?);
    let path = read_rows::<String>(&table.path, 0..len)?;
    if let Some((i, bad)) = path.iter().enumerate().find(|(_, p)| !is_under_root(p)) {
        return Err(StoreError::corrupt(
            &format!("{segment}/images/path"),
            format!(
                "image table entry {i} is `{bad}`, which is not a path under the source root \
                 (absolute, empty, or with a `.` or `..` part): refused before any image is opened"
            ),
        ));
    }
    let size = read_rows::<u64>(&table.size, 0..len)?;
    let label = read_rows::<String>(&table.label, 0..len)?;
    let modified = match &table.modified {
        Some(array) => read_rows::<i64>(array, 0..len)?,
        None => vec![NOT_RECORDED; len as usize],
    };
    Ok(hash
        .into_iter()
        .zip(path)
        .zip(size)
        .zip(label)
        .zip(modified)
        .map(|((((hash, path), size), label), modified)| ImageEntry {
            hash,
            path,
            size,
            label: (!label.is_empty()).then_some(label),
            modified: (modified != NOT_RECORDED).then_some(modified),
        })
        .collect())
}
