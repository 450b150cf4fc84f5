//! Views: a crop box in source-image pixels plus a horizontal-flip bit, and the deterministic
//! sampler that draws them with torchvision's `RandomResizedCrop` recipe.
//!
//! # Replaying the sampler
//!
//! [`sample_view`] is a pure function of (recipe, image hash, image size, view index); any
//! program can replay it from this description.
//!
//! **Random stream.** The bytes of view `index` are the blake3 extendable output (XOF,
//! `blake3::Hasher::finalize_xof`) of this 59-byte message:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 15 | ASCII `tinymim.view.v1` (domain separation, version; no terminator) |
//! | 15 | 32 | image hash (blake3 of the image file's bytes) |
//! | 47 | 8 | run seed ([`ViewRecipe::seed`]), u64 little-endian |
//! | 55 | 4 | view index, u32 little-endian |
//!
//! The output is read as successive 8-byte little-endian words `u` (word 0 is output bytes
//! 0..8, word 1 bytes 8..16, …), each consumed once, in the order the steps below ask for them:
//!
//! - a *uniform* `U(a, b)` consumes one word: `a + (b − a) · ((u >> 11) · 2⁻⁵³)`, in f64;
//! - a *uniform integer* in `[0, n]` (inclusive) consumes words until one is accepted: with
//!   `m = n + 1` and `limit = floor(2⁶⁴ / m) · m`, the first word `u < limit` gives `u mod m`
//!   (rejection sampling, exactly unbiased; the expected number of words is below 2).
//!
//! **Crop box** (torchvision `RandomResizedCrop.get_params`, with this stream in place of
//! torch's RNG). For an image of `W`×`H` pixels, `area = W·H`; up to 10 attempts of:
//!
//! 1. `target_area = area · U(scale.0, scale.1)`;
//! 2. `aspect = exp(U(ln ratio.0, ln ratio.1))`;
//! 3. `w = round(√(target_area · aspect))`, `h = round(√(target_area / aspect))`, where
//!    `round` is round-half-to-even (Python's `round`, Rust's `f64::round_ties_even`);
//! 4. if `0 < w ≤ W` and `0 < h ≤ H`: `y` = uniform integer in `[0, H − h]`, then `x` =
//!    uniform integer in `[0, W − w]`, and the box is found.
//!
//! If no attempt succeeds, the centred fallback: with `in_ratio = W / H`, if
//! `in_ratio < min(ratio)` then `w = W`, `h = round(W / min(ratio))`; else if
//! `in_ratio > max(ratio)` then `h = H`, `w = round(H · max(ratio))`; else `w = W`, `h = H`.
//! Then `w` and `h` are clamped to `[1, W]` and `[1, H]` (**ours**: torchvision does not clamp;
//! it only matters for ratio ranges outside the default), `x = (W − w) / 2` and
//! `y = (H − h) / 2` in integer division. The fallback consumes no words.
//!
//! **Flip.** Finally one more uniform: `flip = U(0, 1) < flip_probability`.
//!
//! Every view therefore lies inside the image with `w, h ≥ 1`. An image side of 0 (which no
//! decoded image has) is treated as 1.
//!
//! `formats/tests/fixtures/render/generate.py` replays this in Python (`blake3` package), and
//! the tests check its views against [`sample_view`]. `ln` and `exp` come from the platform's
//! maths library; a last-bit difference there could change a view only where a square root
//! lands within an ulp of a half-integer. Views are stored explicitly, so stores never depend
//! on replaying them.

use serde::{Deserialize, Serialize};

use crate::hash::Hash32;

/// One view of a source image: the crop box `(x, y, w, h)` in source pixels (x to the right,
/// y down, `w`×`h` pixels starting at `(x, y)`) and whether the rendered crop is mirrored
/// left-right. Stored explicitly so that any program can replay it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    /// Left edge of the crop box, in source pixels.
    pub x: u32,
    /// Top edge of the crop box, in source pixels.
    pub y: u32,
    /// Width of the crop box, in source pixels.
    pub w: u32,
    /// Height of the crop box, in source pixels.
    pub h: u32,
    /// Whether the rendered crop is mirrored left-right.
    pub flip: bool,
}

impl View {
    /// The whole `width`×`height` image, not mirrored.
    pub fn full(width: u32, height: u32) -> View {
        View {
            x: 0,
            y: 0,
            w: width,
            h: height,
            flip: false,
        }
    }

    /// Whether the crop box is non-empty and lies inside a `width`×`height` image.
    pub fn fits(&self, width: u32, height: u32) -> bool {
        self.w >= 1
            && self.h >= 1
            && u64::from(self.x) + u64::from(self.w) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.h) <= u64::from(height)
    }
}

/// The recipe views are drawn with (recorded in the store's attributes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewRecipe {
    /// Run seed mixed into every view's RNG.
    pub seed: u64,
    /// RandomResizedCrop area fraction range, (0.2, 1.0) in TinyMIM.
    pub scale: (f64, f64),
    /// RandomResizedCrop aspect-ratio range (w/h), (3/4, 4/3).
    pub ratio: (f64, f64),
    /// Probability of a horizontal flip, 0.5.
    pub flip_probability: f64,
    /// Resampling filter name, `bicubic`.
    pub interpolation: String,
}

impl Default for ViewRecipe {
    fn default() -> Self {
        ViewRecipe {
            seed: 0,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_probability: 0.5,
            interpolation: "bicubic".to_string(),
        }
    }
}

/// Domain-separation prefix of the view RNG (15 ASCII bytes, no terminator).
const VIEW_DOMAIN: &[u8; 15] = b"tinymim.view.v1";

/// Attempts at a random box before the centred fallback (torchvision's 10).
const ATTEMPTS: u32 = 10;

/// The view RNG: successive little-endian u64 words of a blake3 XOF (see the module docs).
struct ViewRng {
    xof: blake3::OutputReader,
}

impl ViewRng {
    fn new(image: &Hash32, seed: u64, index: u32) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(VIEW_DOMAIN);
        hasher.update(&image.0);
        hasher.update(&seed.to_le_bytes());
        hasher.update(&index.to_le_bytes());
        ViewRng {
            xof: hasher.finalize_xof(),
        }
    }

    fn next_word(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.xof.fill(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    /// A uniform double in `[lo, hi)`: `lo + (hi − lo) · (u >> 11) · 2⁻⁵³`.
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let unit = (self.next_word() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        lo + (hi - lo) * unit
    }

    /// A uniform integer in `[0, n]`, by rejection: words `u ≥ floor(2⁶⁴/m)·m` are redrawn.
    fn integer_inclusive(&mut self, n: u32) -> u32 {
        let m = u64::from(n) + 1;
        // floor(2^64 / m) * m, computed without overflow: 2^64 - (2^64 mod m).
        let limit = 0u64.wrapping_sub(((u64::MAX % m) + 1) % m);
        loop {
            let u = self.next_word();
            // limit == 0 only when m divides 2^64 (m a power of two): every word is accepted.
            if limit == 0 || u < limit {
                return (u % m) as u32;
            }
        }
    }
}

/// Rounds half to even (Python's `round`) and converts to an integer, saturating (NaN → 0).
fn round_to_int(v: f64) -> u64 {
    v.round_ties_even() as u64
}

/// Draws view `index` of an image with the given hash and size; see the module documentation
/// for the exact procedure. The result always lies inside the image with `w, h ≥ 1`.
pub fn sample_view(
    recipe: &ViewRecipe,
    image: &Hash32,
    width: u32,
    height: u32,
    index: u32,
) -> View {
    let (width, height) = (width.max(1), height.max(1));
    let mut rng = ViewRng::new(image, recipe.seed, index);
    let (x, y, w, h) = random_box(&mut rng, recipe, width, height)
        .unwrap_or_else(|| centred_box(recipe, width, height));
    let flip = rng.uniform(0.0, 1.0) < recipe.flip_probability;
    View { x, y, w, h, flip }
}

/// Views `0..count` of one image (see [`sample_view`]).
pub fn sample_views(
    recipe: &ViewRecipe,
    image: &Hash32,
    width: u32,
    height: u32,
    count: u32,
) -> Vec<View> {
    (0..count)
        .map(|index| sample_view(recipe, image, width, height, index))
        .collect()
}

/// Up to [`ATTEMPTS`] random boxes `(x, y, w, h)`; `None` when none fits.
fn random_box(
    rng: &mut ViewRng,
    recipe: &ViewRecipe,
    width: u32,
    height: u32,
) -> Option<(u32, u32, u32, u32)> {
    let area = f64::from(width) * f64::from(height);
    let (log_lo, log_hi) = (recipe.ratio.0.ln(), recipe.ratio.1.ln());
    for _ in 0..ATTEMPTS {
        let target_area = area * rng.uniform(recipe.scale.0, recipe.scale.1);
        let aspect = rng.uniform(log_lo, log_hi).exp();
        let w = round_to_int((target_area * aspect).sqrt());
        let h = round_to_int((target_area / aspect).sqrt());
        if (1..=u64::from(width)).contains(&w) && (1..=u64::from(height)).contains(&h) {
            let (w, h) = (w as u32, h as u32);
            let y = rng.integer_inclusive(height - h);
            let x = rng.integer_inclusive(width - w);
            return Some((x, y, w, h));
        }
    }
    None
}

/// torchvision's centred fallback box, clamped into the image.
fn centred_box(recipe: &ViewRecipe, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let in_ratio = f64::from(width) / f64::from(height);
    let min_ratio = recipe.ratio.0.min(recipe.ratio.1);
    let max_ratio = recipe.ratio.0.max(recipe.ratio.1);
    let (w, h) = if in_ratio < min_ratio {
        (u64::from(width), round_to_int(f64::from(width) / min_ratio))
    } else if in_ratio > max_ratio {
        (
            round_to_int(f64::from(height) * max_ratio),
            u64::from(height),
        )
    } else {
        (u64::from(width), u64::from(height))
    };
    let w = w.clamp(1, u64::from(width)) as u32;
    let h = h.clamp(1, u64::from(height)) as u32;
    ((width - w) / 2, (height - h) / 2, w, h)
}
