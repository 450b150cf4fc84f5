//! Views: a crop box in source-image pixels plus a horizontal-flip bit.

use serde::{Deserialize, Serialize};

/// One view of a source image: the crop box `(x, y, w, h)` in source pixels (x to the right,
/// y down, `w`×`h` pixels starting at `(x, y)`) and whether the rendered crop is mirrored
/// left-right. Stored explicitly so that any program can replay it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub flip: bool,
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
