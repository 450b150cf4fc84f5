//! `extract verify STORE [--images DIR --teacher T --sample M]`: checks every row's checksums
//! and content key, and optionally recomputes a sample of rows from the source images with the
//! teacher and compares their relation maps.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tinymim_formats::{decode_maps, Hash32, RelationStore, SourceImage, StoreError};

use crate::encode::encode_batch;
use crate::pipeline::ExtractError;
use crate::teacher::Teacher;

/// Largest difference between a stored and a recomputed relation-map entry that counts as
/// equal: a few float16 steps near probability 1 (2⁻¹¹ each), room for ONNX Runtime's
/// batch-dependent float32 summation order.
pub const RECOMPUTE_TOLERANCE: f32 = 2e-3;

/// A row whose recomputed targets disagree with the stored ones (or cannot be recomputed).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecomputeProblem {
    /// Row index in reader order.
    pub row: usize,
    /// The source image's path relative to the image root, when known.
    pub path: Option<String>,
    /// What went wrong.
    pub reason: String,
}

/// What `extract verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyOutcome {
    /// Rows whose checksums and keys were checked.
    pub rows: u64,
    /// Segments checked.
    pub segments: usize,
    /// Checksum and key problems, one sentence each.
    pub store_problems: Vec<String>,
    /// Rows recomputed with the teacher.
    pub recomputed: usize,
    /// Largest map difference seen among recomputed rows.
    pub max_map_difference: f32,
    /// Recomputation problems.
    pub recompute_problems: Vec<RecomputeProblem>,
}

impl VerifyOutcome {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.store_problems.is_empty() && self.recompute_problems.is_empty()
    }
}

/// Recomputation of sampled rows.
pub struct Recompute<'a> {
    /// The teacher the store was made with.
    pub teacher: &'a mut Teacher,
    /// The source image root.
    pub images: PathBuf,
    /// Rows to recompute, spread evenly over the store.
    pub sample: usize,
}

/// Why verification could not run (problems found in the store are not errors).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The teacher is not the store's.
    #[error("the store was made with teacher {store}, but --teacher {path} is {given}")]
    WrongTeacher {
        /// The store's teacher fingerprint.
        store: Hash32,
        /// The given teacher's fingerprint.
        given: Hash32,
        /// The given teacher file.
        path: PathBuf,
    },
    /// The teacher failed.
    #[error(transparent)]
    Extract(#[from] ExtractError),
}

/// Verifies the store at `path`, recomputing a sample of rows when `recompute` is given.
pub fn verify(path: &Path, recompute: Option<Recompute<'_>>) -> Result<VerifyOutcome, VerifyError> {
    let store = RelationStore::open(path)?;
    let reader = store.reader()?;
    let report = reader.verify()?;
    let mut outcome = VerifyOutcome {
        rows: report.rows,
        segments: report.segments,
        store_problems: report.problems.iter().map(|p| p.to_string()).collect(),
        recomputed: 0,
        max_map_difference: 0.0,
        recompute_problems: Vec::new(),
    };
    let Some(Recompute {
        teacher,
        images,
        sample,
    }) = recompute
    else {
        return Ok(outcome);
    };
    let header = reader.header();
    if teacher.fingerprint() != header.teacher {
        return Err(VerifyError::WrongTeacher {
            store: header.teacher,
            given: teacher.fingerprint(),
            path: teacher.path().to_path_buf(),
        });
    }
    let qkv = store.qkv_params()?;
    let g = &header.geometry;
    let count = sample.min(reader.len());
    for s in 0..count {
        let row = s * reader.len() / count;
        let meta = *reader.row(row);
        let problem = |path: Option<String>, reason: String| RecomputeProblem { row, path, reason };
        let Some(entry) = reader.image(&meta.image) else {
            outcome.recompute_problems.push(problem(
                None,
                format!("image {} is not in any image table", meta.image.short()),
            ));
            continue;
        };
        let file = images.join(&entry.path);
        let shown = Some(entry.path.clone());
        let bytes = match std::fs::read(&file) {
            Ok(b) => b,
            Err(e) => {
                outcome.recompute_problems.push(problem(
                    shown,
                    format!("cannot read {}: {e}", file.display()),
                ));
                continue;
            }
        };
        if Hash32::of_bytes(&bytes) != meta.image {
            outcome.recompute_problems.push(problem(
                shown,
                "the file's bytes differ from those extracted".into(),
            ));
            continue;
        }
        let mut pixels = vec![0.0; teacher.pixels_per_view()];
        let rendered = SourceImage::decode(&bytes, &file).and_then(|image| {
            image.render(&meta.view, g.image_size, &g.normalization, &mut pixels)
        });
        if let Err(e) = rendered {
            outcome
                .recompute_problems
                .push(problem(shown, e.to_string()));
            continue;
        }
        let batch = teacher.run(&pixels, 1).map_err(ExtractError::from)?;
        let fresh = encode_batch(header.encoding, &batch).map_err(ExtractError::from)?;
        let stored = decode_maps(header.encoding, &reader.targets(row)?, g, qkv.as_ref())?;
        let fresh = decode_maps(header.encoding, &fresh[0], g, qkv.as_ref())?;
        let diff = (&stored - &fresh)
            .iter()
            .fold(0.0f32, |m, d| m.max(d.abs()));
        outcome.recomputed += 1;
        outcome.max_map_difference = outcome.max_map_difference.max(diff);
        if diff.is_nan() || diff > RECOMPUTE_TOLERANCE {
            outcome.recompute_problems.push(problem(
                shown,
                format!("stored and recomputed relation maps differ by up to {diff:.2e} (tolerance {RECOMPUTE_TOLERANCE:.0e})"),
            ));
        }
    }
    Ok(outcome)
}
