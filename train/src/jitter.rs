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

    /// Applies the jitter in place to interleaved RGB (HWC) values in `[0, 1]`.
    pub fn apply(&self, rgb: &mut [f32]) {
        for adjustment in self.order {
            match adjustment {
                Adjustment::Brightness => {
                    let f = self.brightness;
                    rgb.iter_mut().for_each(|x| *x = (f * *x).clamp(0.0, 1.0));
                }
                Adjustment::Contrast => {
                    let pixels = (rgb.len() / 3).max(1) as f64;
                    let sum: f64 = rgb.chunks_exact(3).map(|p| f64::from(gray(p))).sum();
                    blend(rgb, self.contrast, |_| (sum / pixels) as f32);
                }
                Adjustment::Saturation => blend(rgb, self.saturation, gray),
            }
        }
    }
}

/// torchvision's `rgb_to_grayscale` of one RGB pixel.
fn gray(p: &[f32]) -> f32 {
    0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// `f·x + (1 − f)·other(pixel)`, clamped to `[0, 1]`, for every channel of every pixel.
fn blend(rgb: &mut [f32], f: f32, other: impl Fn(&[f32]) -> f32) {
    for p in rgb.chunks_exact_mut(3) {
        let o = (1.0 - f) * other(p);
        p.iter_mut().for_each(|x| *x = (f * *x + o).clamp(0.0, 1.0));
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
    let mut values: Vec<f32> = rgb.iter().map(|&p| f32::from(p) / 255.0).collect();
    jitter.apply(&mut values);
    let plane = values.len() / 3;
    for (i, p) in values.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (p[c] - norm.mean[c]) / norm.std[c];
        }
    }
}
