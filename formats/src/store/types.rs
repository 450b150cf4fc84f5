//! The records a store holds besides the targets: header, qkv parameters, image entries, row
//! metadata, segment state and verification results.

use ndarray::{ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use super::{Result, StoreError};

use crate::encoding::Encoding;
use crate::hash::Hash32;
use crate::teacher::TeacherGeometry;
use crate::view::{View, ViewRecipe};

/// What every row of a store shares: the teacher, its geometry, the encoding and the view recipe.
/// Stored in the root group's attributes; a writer may only add to a store whose header equals
/// its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreHeader {
    /// blake3 fingerprint of the teacher ONNX file.
    pub teacher: Hash32,
    /// The teacher's geometry (tokens, heads, width, target block, …).
    pub geometry: TeacherGeometry,
    /// How the targets are encoded.
    pub encoding: Encoding,
    /// The recipe the views were drawn with.
    pub recipe: ViewRecipe,
}

/// The target block's qkv projection, stored once per `ln1` and `ln1-int8` store.
#[derive(Clone, Debug, PartialEq)]
pub struct QkvParams {
    /// Weight `[3D, D]`, row-major (rows: D of q, then D of k, then D of v).
    pub weight: Vec<f32>,
    /// Bias `[3D]`.
    pub bias: Vec<f32>,
}

impl QkvParams {
    /// The weight as `[3D, D]` and the bias as `[3D]`, for a block of width `dim`; a wrong
    /// number of values is a [`StoreError::Length`] naming the tensor.
    pub fn views(&self, dim: usize) -> Result<(ArrayView2<'_, f32>, ArrayView1<'_, f32>)> {
        check_len("qkv weight [3D, D]", 3 * dim * dim, self.weight.len())?;
        check_len("qkv bias [3D]", 3 * dim, self.bias.len())?;
        let weight =
            ArrayView2::from_shape((3 * dim, dim), &self.weight).expect("length checked above");
        Ok((weight, ArrayView1::from(&self.bias)))
    }
}

/// A [`StoreError::Length`] unless `got == expected`.
pub(crate) fn check_len(what: &str, expected: usize, got: usize) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(StoreError::Length {
            what: what.to_string(),
            expected,
            got,
        })
    }
}

/// Refuses a geometry no relation map can have (zero tokens or heads, heads not dividing D).
pub(crate) fn check_geometry(g: &TeacherGeometry) -> Result<()> {
    if g.tokens == 0 || g.heads == 0 || g.dim == 0 || !g.dim.is_multiple_of(g.heads) {
        return Err(StoreError::BadGeometry {
            tokens: g.tokens,
            heads: g.heads,
            dim: g.dim,
        });
    }
    Ok(())
}

/// One source image in a segment's image table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageEntry {
    /// blake3 of the image file's bytes.
    pub hash: Hash32,
    /// Path relative to the source root, `/`-separated.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Class label (ImageNet layout: the parent folder), if any.
    pub label: Option<String>,
    /// The file's modification time when it was read, in nanoseconds since the Unix epoch
    /// (`None`: not recorded, as in segments written before it was). With `path` and `size` it
    /// lets a rerun skip a file it has done without opening it.
    pub modified: Option<i64>,
}

/// The metadata of one row: its content key, the source image and the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowMeta {
    /// Content key of (teacher, block, encoding, image, view).
    pub key: Hash32,
    /// blake3 of the source image's bytes.
    pub image: Hash32,
    /// The view the targets were computed on.
    pub view: View,
}

/// State of one segment as recorded in its group attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct SegmentInfo {
    /// The segment's id (its folder name under `segments/`).
    pub id: String,
    /// Rows visible to readers (the commit watermark).
    pub committed_rows: u64,
    /// Whether the writer committed the segment (no more rows will come).
    pub closed: bool,
    /// Free-form summary the writer recorded at commit (timings, provider, …); null before.
    pub summary: serde_json::Value,
}

impl SegmentInfo {
    /// The source root this segment's commit summary records ([`SourceRoot`]), if any.
    pub fn source_root(&self) -> Option<std::path::PathBuf> {
        SourceRoot::deserialize(&self.summary)
            .ok()
            .map(|s| s.source_root)
    }
}

/// The folder a segment's image paths are relative to (absolute), as the writer records it in
/// the segment's commit summary: `extract` flattens this into its summary, and `train` reads it
/// back ([`SegmentInfo::source_root`]) when it is given no `--images`. The one place the key,
/// `source_root`, is spelled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRoot {
    /// The folder.
    pub source_root: std::path::PathBuf,
}

/// A problem found by [`StoreReader::verify`](super::StoreReader::verify).
#[derive(Clone, Debug, PartialEq)]
pub enum VerifyProblem {
    /// A row's chunks could not be read or failed their checksum.
    Unreadable {
        segment: String,
        row: u64,
        reason: String,
    },
    /// A row's stored content key is not the key of its (teacher, block, encoding, image, view).
    WrongKey {
        segment: String,
        row: u64,
        stored: Hash32,
        expected: Hash32,
    },
    /// A row's image hash is missing from the segment's image table.
    UnknownImage {
        segment: String,
        row: u64,
        image: Hash32,
    },
}

impl std::fmt::Display for VerifyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyProblem::Unreadable {
                segment,
                row,
                reason,
            } => write!(f, "segment {segment} row {row}: unreadable: {reason}"),
            VerifyProblem::WrongKey {
                segment,
                row,
                stored,
                expected,
            } => write!(
                f,
                "segment {segment} row {row}: stored key {} but its content gives {}",
                stored.short(),
                expected.short()
            ),
            VerifyProblem::UnknownImage {
                segment,
                row,
                image,
            } => write!(
                f,
                "segment {segment} row {row}: image {} is not in the image table",
                image.short()
            ),
        }
    }
}

/// What [`StoreReader::verify`](super::StoreReader::verify) found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyReport {
    /// Rows checked.
    pub rows: u64,
    /// Segments checked.
    pub segments: usize,
    /// Everything wrong, in row order; empty for a sound store.
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::{SegmentInfo, SourceRoot};

    #[test]
    fn the_source_root_is_read_back_from_a_summary_among_other_fields() {
        let info = |summary| SegmentInfo {
            id: "s".into(),
            committed_rows: 0,
            closed: true,
            summary,
        };
        let written = SourceRoot {
            source_root: "/data/imagenet/train".into(),
        };
        let mut summary = serde_json::to_value(&written).unwrap();
        summary["views_written"] = 12.into();
        assert_eq!(info(summary).source_root(), Some(written.source_root));
        assert_eq!(info(serde_json::Value::Null).source_root(), None);
        let other = serde_json::json!({ "source_root": 3 });
        assert_eq!(
            info(other).source_root(),
            None,
            "a non-path value is no root"
        );
    }
}
