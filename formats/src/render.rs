//! The one function that turns an image and a view into pixels.
//!
//! Both phases call [`SourceImage::render`] and nothing else to make pixels: decode (JPEG, PNG;
//! grayscale, RGBA, CMYK and 16-bit inputs become 8-bit RGB), crop the view's box, resize
//! bicubically to `size`×`size`, mirror if the view says so, normalise, and write float32 CHW.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::view::View;

/// Per-channel input normalisation: `(pixel / 255 − mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics, used by MAE and DINOv2.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

/// Why an image could not be decoded or rendered. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: empty file (0 bytes)")]
    Empty { path: PathBuf },
    #[error("{path}: not a JPEG or PNG image")]
    NotAnImage { path: PathBuf },
    #[error("{path}: corrupt or truncated image: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {width}×{height} pixels is over the limit of {limit} pixels a side")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u32,
    },
    #[error("{path}: view {view:?} does not lie inside the {width}×{height} image")]
    ViewOutOfBounds {
        path: PathBuf,
        view: View,
        width: u32,
        height: u32,
    },
}

/// A decoded source image (8-bit RGB), ready to render any number of views.
pub struct SourceImage {
    name: PathBuf,
    rgb: image::RgbImage,
}

impl SourceImage {
    /// Largest accepted side in pixels; larger images are refused as [`RenderError::TooLarge`].
    pub const MAX_SIDE: u32 = 16384;

    /// Decodes image bytes; `name` is only used in error messages.
    pub fn decode(bytes: &[u8], name: &Path) -> Result<Self, RenderError> {
        let _ = (bytes, name);
        todo!("formats helper: decode")
    }

    /// Reads and decodes a file, returning the image and the blake3 hash of its bytes.
    pub fn open(path: &Path) -> Result<(Self, crate::Hash32), RenderError> {
        let bytes = std::fs::read(path).map_err(|source| RenderError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let hash = crate::Hash32::of_bytes(&bytes);
        Ok((Self::decode(&bytes, path)?, hash))
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.rgb.height()
    }

    /// The name given at decode time.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// Renders `view` at `size`×`size` into `out` (length `3·size·size`, CHW, normalised).
    pub fn render(
        &self,
        view: &View,
        size: u32,
        norm: &Normalization,
        out: &mut [f32],
    ) -> Result<(), RenderError> {
        let _ = (view, size, norm, out);
        todo!("formats helper: render")
    }
}
