//! Pixels of a micro-batch: every distinct source image decoded once, every row's view
//! rendered with `SourceImage::render` at the requested size, in parallel.

use std::collections::HashMap;

use rayon::prelude::*;
use tinymim_formats::{Hash32, Normalization, SourceImage};

use super::error::Result;
use super::images::ImageCatalog;
use super::rows::Row;
use crate::jitter::{jitter_and_normalize, ColorJitter};

/// How one model's input is rendered.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RenderSpec {
    /// Side in pixels.
    pub size: u32,
    /// Input normalisation.
    pub normalization: Normalization,
    /// Colour jitter seeded with this run seed (the student's), or none (the teacher's, or
    /// `--no-jitter`).
    pub jitter_seed: Option<u64>,
}

impl RenderSpec {
    /// Values of one rendered view (3·size·size).
    pub fn view_len(&self) -> usize {
        3 * (self.size as usize).pow(2)
    }
}

/// Decodes every distinct image of `rows` once (in parallel), verifying its hash.
pub fn decode_images(catalog: &ImageCatalog, rows: &[Row]) -> Result<HashMap<Hash32, SourceImage>> {
    let mut hashes: Vec<Hash32> = rows.iter().map(|r| r.image).collect();
    hashes.sort();
    hashes.dedup();
    hashes
        .into_par_iter()
        .map(|h| Ok((h, catalog.load(&h)?)))
        .collect()
}

/// Renders `rows` (views of `images`) in epoch `epoch` as `[B, 3, S, S]` values.
pub fn render_rows(
    images: &HashMap<Hash32, SourceImage>,
    rows: &[Row],
    epoch: u64,
    spec: &RenderSpec,
) -> Result<Vec<f32>> {
    let len = spec.view_len();
    let mut out = vec![0f32; rows.len() * len];
    out.par_chunks_mut(len)
        .zip(rows.par_iter())
        .try_for_each(|(dst, row)| -> Result<()> {
            let image = &images[&row.image];
            match spec.jitter_seed {
                None => image.render(&row.view, spec.size, &spec.normalization, dst)?,
                Some(seed) => {
                    let mut rgb = vec![0u8; len];
                    image.render_rgb(&row.view, spec.size, &mut rgb)?;
                    let jitter = ColorJitter::draw(seed, epoch, &row.image, &row.view);
                    jitter_and_normalize(&rgb, &jitter, &spec.normalization, dst);
                }
            }
            Ok(())
        })?;
    Ok(out)
}
