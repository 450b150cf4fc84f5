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
fn gray(p: &[f32; 3]) -> f32 {
    0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

/// One pixel after `adjustments` with their factors; `mean_gray` is the image's mean
/// grayscale at the contrast step (unused by the others).
fn adjust(mut p: [f32; 3], adjustments: &[(Adjustment, f32)], mean_gray: f32) -> [f32; 3] {
    for &(adjustment, f) in adjustments {
        // Brightness blends with black: f·x + (1 − f)·0.
        let other = match adjustment {
            Adjustment::Brightness => None,
            Adjustment::Contrast => Some(mean_gray),
            Adjustment::Saturation => Some(gray(&p)),
        };
        match other {
            None => p.iter_mut().for_each(|x| *x = (f * *x).clamp(0.0, 1.0)),
            Some(other) => {
                let o = (1.0 - f) * other;
                p.iter_mut().for_each(|x| *x = (f * *x + o).clamp(0.0, 1.0));
            }
        }
    }
    p
}

/// Jitters 8-bit RGB pixels (HWC) and writes them normalised as CHW planes into `out`
/// (`out.len() == rgb.len()`): `x = p / 255`, jitter, then `(x − mean) / std`.
pub fn jitter_and_normalize(
    rgb: &[u8],
    jitter: &ColorJitter,
    norm: &Normalization,
    out: &mut [f32],
) {
    // Every adjustment is per pixel except contrast, which needs the mean gray of the image
    // as the adjustments before it left it. So two passes over the pixels, no buffer: the
    // first sums that gray, the second applies all three and normalises. Each pixel goes
    // through the same f32 operations in the same order as whole-image passes would.
    let steps = jitter.order.map(|a| (a, jitter.factor(a)));
    let contrast = steps
        .iter()
        .position(|(a, _)| *a == Adjustment::Contrast)
        .expect("the three adjustments include contrast");
    let before = &steps[..contrast];
    let pixel = |p: &[u8]| [p[0], p[1], p[2]].map(|v| f32::from(v) / 255.0);
    let pixels = rgb.len() / 3;
    let sum: f64 = rgb
        .chunks_exact(3)
        .map(|p| f64::from(gray(&adjust(pixel(p), before, 0.0))))
        .sum();
    let mean_gray = (sum / pixels.max(1) as f64) as f32;
    let (r, rest) = out.split_at_mut(pixels);
    let (g, b) = rest.split_at_mut(pixels);
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        let x = adjust(pixel(p), &steps, mean_gray);
        for (c, plane) in [&mut *r, &mut *g, &mut *b].into_iter().enumerate() {
            plane[i] = (x[c] - norm.mean[c]) / norm.std[c];
        }
    }
}
