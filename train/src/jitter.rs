//! The student's colour jitter: torchvision's `ColorJitter(brightness=0.4, contrast=0.4,
//! saturation=0.4)` on `[0, 1]` RGB tensors, before normalisation. The teacher never sees it.
//!
//! Per view: three factors drawn from U(0.6, 1.4) and the three adjustments applied in a
//! random order, as torchvision does (its hue step is off at hue = 0). The adjustments are
//! torchvision's tensor formulas, each clamped to `[0, 1]`:
//!
//! - brightness f: `f·x`;
//! - contrast f: `f·x + (1 − f)·m`, m the mean of the image's grayscale;
//! - saturation f: `f·x + (1 − f)·g`, g the pixel's grayscale;
//!
//! grayscale being `0.2989·r + 0.587·g + 0.114·b`. The draw is a pure function of (run seed,
//! epoch, image hash, view), so a resumed run jitters every view exactly as before.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinymim_formats::{Hash32, Normalization, View};

/// Jitter strength of each factor: factors are drawn from U(1 − s, 1 + s).
pub const STRENGTH: f32 = 0.4;

/// Domain separation of the jitter's random stream.
const DOMAIN: &[u8] = b"tinymim.jitter.v1";

/// One of the three colour adjustments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjustment {
    /// Scale every channel.
    Brightness,
    /// Blend with the image's mean gray.
    Contrast,
    /// Blend with each pixel's gray.
    Saturation,
}

/// The jitter of one view: the order of the adjustments and their factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorJitter {
    /// The adjustments in the order they are applied.
    pub order: [Adjustment; 3],
    /// Brightness factor.
    pub brightness: f32,
    /// Contrast factor.
    pub contrast: f32,
    /// Saturation factor.
    pub saturation: f32,
}

impl ColorJitter {
    /// The jitter of `view` of `image` in epoch `epoch` of a run seeded with `seed`.
    pub fn draw(seed: u64, epoch: u64, image: &Hash32, view: &View) -> ColorJitter {
        let mut hasher = blake3::Hasher::new();
        hasher.update(DOMAIN);
        hasher.update(&seed.to_le_bytes());
        hasher.update(&epoch.to_le_bytes());
        hasher.update(&image.0);
        for v in [view.x, view.y, view.w, view.h, u32::from(view.flip)] {
            hasher.update(&v.to_le_bytes());
        }
        let mut rng = ChaCha8Rng::from_seed(*hasher.finalize().as_bytes());
        let mut order = [
            Adjustment::Brightness,
            Adjustment::Contrast,
            Adjustment::Saturation,
        ];
        order.shuffle(&mut rng);
        let mut factor = || rng.random_range(1.0 - STRENGTH..1.0 + STRENGTH);
        ColorJitter {
            order,
            brightness: factor(),
            contrast: factor(),
            saturation: factor(),
        }
    }

    /// The factor of `adjustment`.
    fn factor(&self, adjustment: Adjustment) -> f32 {
        match adjustment {
            Adjustment::Brightness => self.brightness,
            Adjustment::Contrast => self.contrast,
            Adjustment::Saturation => self.saturation,
        }
    }
}

/// torchvision's `rgb_to_grayscale` of one RGB pixel.
fn gray(p: &[f32]) -> f32 {
    0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// Pixels per block of [`jitter_and_normalize`]: small enough to stay in the L1 cache.
const BLOCK: usize = 256;

/// Applies `steps` (adjustments with their factors) to a block of interleaved RGB values in
/// `[0, 1]`, one adjustment over the whole block at a time; `mean_gray` is the image's mean
/// grayscale at the contrast step. Each is torchvision's blend `f·x + (1 − f)·other`, clamped.
fn adjust(block: &mut [f32], steps: &[(Adjustment, f32)], mean_gray: f32) {
    for &(adjustment, f) in steps {
        match adjustment {
            // A blend with black.
            Adjustment::Brightness => block.iter_mut().for_each(|x| *x = (f * *x).clamp(0.0, 1.0)),
            Adjustment::Contrast => {
                let o = (1.0 - f) * mean_gray;
                block
                    .iter_mut()
                    .for_each(|x| *x = (f * *x + o).clamp(0.0, 1.0));
            }
            Adjustment::Saturation => {
                for p in block.chunks_exact_mut(3) {
                    let o = (1.0 - f) * gray(p);
                    p.iter_mut().for_each(|x| *x = (f * *x + o).clamp(0.0, 1.0));
                }
            }
        }
    }
}

/// Jitters 8-bit RGB pixels (HWC) and writes them normalised as CHW planes into `out`
/// (`out.len() == rgb.len()`): `x = p / 255`, jitter, then `(x − mean) / std`.
pub fn jitter_and_normalize(
    rgb: &[u8],
    jitter: &ColorJitter,
    norm: &Normalization,
    out: &mut [f32],
) {
    // Every adjustment is per pixel except contrast, which needs the mean gray of the image as
    // the adjustments before it left it. So two passes over the view in blocks that stay in
    // cache, and no float copy of the view: the first sums that gray, the second applies all
    // three and normalises. Every value goes through the same f32 operations in the same order,
    // and the gray is summed in the same order, as with whole-image passes.
    let steps = jitter.order.map(|a| (a, jitter.factor(a)));
    let contrast = steps
        .iter()
        .position(|(a, _)| *a == Adjustment::Contrast)
        .expect("the three adjustments include contrast");
    let mut block = [0f32; 3 * BLOCK];
    let load = |bytes: &[u8], block: &mut [f32]| {
        for (x, &p) in block.iter_mut().zip(bytes) {
            *x = f32::from(p) / 255.0;
        }
    };
    let mut sum = 0f64;
    for bytes in rgb.chunks(3 * BLOCK) {
        let block = &mut block[..bytes.len()];
        load(bytes, block);
        adjust(block, &steps[..contrast], 0.0);
        for p in block.chunks_exact(3) {
            sum += f64::from(gray(p));
        }
    }
    let mean_gray = (sum / (rgb.len() / 3).max(1) as f64) as f32;
    let plane = rgb.len() / 3;
    for (b, bytes) in rgb.chunks(3 * BLOCK).enumerate() {
        let block = &mut block[..bytes.len()];
        load(bytes, block);
        adjust(block, &steps, mean_gray);
        for c in 0..3 {
            let first = c * plane + b * BLOCK;
            let dst = &mut out[first..first + bytes.len() / 3];
            let (mean, std) = (norm.mean[c], norm.std[c]);
            for (o, p) in dst.iter_mut().zip(block.chunks_exact(3)) {
                *o = (p[c] - mean) / std;
            }
        }
    }
}
