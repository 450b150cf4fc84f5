//! The one function that turns an image and a view into pixels.
//!
//! Both phases call [`SourceImage::render`] and nothing else to make pixels: decode (JPEG, PNG;
//! grayscale, RGBA, CMYK and 16-bit inputs become 8-bit RGB), crop the view's box, resize
//! bicubically to `size`×`size`, mirror if the view says so, normalise, and write float32 CHW.
//!
//! # What the pixels match
//!
//! The reference TinyMIM pipeline is PIL `Image.convert("RGB")`, `crop` + `resize(BICUBIC)`
//! (torchvision's `resized_crop`), `hflip`, `ToTensor`, `Normalize`. Here:
//!
//! - **Decoding** is the `image` crate's. Alpha is dropped (like `convert("RGB")`), gray is
//!   replicated, CMYK JPEGs are converted to RGB by `zune-jpeg`, 16-bit samples become
//!   `round(v · 255 / 65535)` (PIL keeps the high byte of 16-bit RGB: at most 1 level apart).
//!   EXIF orientation is ignored, as PIL's `open` ignores it. A JPEG whose data ends before its
//!   end-of-image marker is refused as truncated (PIL refuses it too; the decoder underneath
//!   would silently fill the missing rows with gray).
//! - **Resizing** is `fast_image_resize`'s convolution with its Catmull-Rom filter, which is
//!   PIL's bicubic (a = −0.5) with the support widened by the scale factor when downscaling,
//!   on 8-bit pixels with rounding and clamping between the two passes, like PIL. The crop is a
//!   zero-copy view of the source, so the filter is clamped at the crop's edges exactly as
//!   after PIL's `crop` (the resizer's own crop option would read source pixels outside the
//!   box, like PIL's `resize(box=…)`, which is not what torchvision does). Two differences
//!   remain: the resizer runs the vertical pass first (PIL the horizontal) and keeps 15-bit
//!   rather than 22-bit fixed-point weights, so a pixel can differ from PIL's by a level or two
//!   (measured in `formats/tests/render.rs`).
//! - **Normalisation** is computed in f32 exactly as torchvision does it,
//!   `(p / 255 − mean) / std`.

use std::cell::RefCell;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use fast_image_resize::images::{TypedCroppedImage, TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};
use serde::{Deserialize, Serialize};

use crate::view::View;

/// Per-channel input normalisation: `(pixel / 255 − mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Per-channel mean (R, G, B) of pixels scaled to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) of pixels scaled to `[0, 1]`.
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics, used by MAE and DINOv2.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    /// The normalised value of an 8-bit `pixel` in channel `channel` (0 = R, 1 = G, 2 = B;
    /// larger indices are taken modulo 3), computed in f32 as torchvision's `ToTensor` +
    /// `Normalize` do: `(pixel / 255 − mean) / std`.
    pub fn value(&self, channel: usize, pixel: u8) -> f32 {
        let c = channel % 3;
        (f32::from(pixel) / 255.0 - self.mean[c]) / self.std[c]
    }

    /// Writes interleaved RGB pixels `rgb` (HWC) as normalised planes (CHW) into `out`, which
    /// must hold exactly as many values as `rgb` has bytes (callers check).
    fn write_chw(&self, rgb: &[u8], out: &mut [f32]) {
        let plane = rgb.len() / 3;
        let lut: [[f32; 256]; 3] =
            std::array::from_fn(|c| std::array::from_fn(|p| self.value(c, p as u8)));
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            r[i] = lut[0][usize::from(px[0])];
            g[i] = lut[1][usize::from(px[1])];
            b[i] = lut[2][usize::from(px[2])];
        }
    }
}

/// Why an image could not be decoded or rendered. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file has no bytes.
    #[error("{path}: empty file (0 bytes)")]
    Empty { path: PathBuf },
    /// The bytes are none of the formats read (JPEG, PNG, WebP, BMP, TIFF).
    #[error("{path}: not a JPEG, PNG, WebP, BMP or TIFF image")]
    NotAnImage { path: PathBuf },
    /// An image whose data is damaged, cut short, or uses a coding process the decoder
    /// lacks (lossless or arithmetic-coded JPEG).
    #[error("{path}: corrupt or truncated image: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A side over [`SourceImage::MAX_SIDE`]; refused before the pixels are allocated.
    #[error("{path}: {width}×{height} pixels is over the limit of {limit} pixels a side")]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u32,
    },
    /// The view's box is empty or reaches outside the image.
    #[error("{path}: view {view:?} does not lie inside the {width}×{height} image")]
    ViewOutOfBounds {
        path: PathBuf,
        view: View,
        width: u32,
        height: u32,
    },
    /// The output size is 0 or over [`SourceImage::MAX_SIDE`], or the output buffer does not
    /// hold `3·size·size` values.
    #[error(
        "{path}: cannot render at {size}×{size} into a buffer of {actual} values (need {expected})"
    )]
    OutputSize {
        path: PathBuf,
        size: u32,
        expected: usize,
        actual: usize,
    },
}

/// A decoded source image (8-bit RGB), ready to render any number of views. `Send + Sync`:
/// one decoded image can be rendered from many threads at once.
pub struct SourceImage {
    name: PathBuf,
    rgb: image::RgbImage,
}

/// Per-thread scratch: the resizer's internal buffers and the 8-bit render of [`render`].
///
/// [`render`]: SourceImage::render
#[derive(Default)]
struct Scratch {
    resizer: Resizer,
    rgb: Vec<u8>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch. The resizer splits its work into rayon tasks, and a
/// thread waiting for them may start another render (work stealing) while its scratch is in
/// use; that nested render gets a fresh scratch instead.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The resize: PIL-style antialiased bicubic (Catmull-Rom, support scaled when downscaling).
fn resize_options() -> ResizeOptions {
    ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
        .use_alpha(false)
}

impl SourceImage {
    /// Largest accepted side in pixels; larger images are refused as [`RenderError::TooLarge`].
    pub const MAX_SIDE: u32 = 16384;

    /// Decodes image bytes (JPEG, PNG, WebP, BMP or TIFF, recognised by content, not by name:
    /// a PNG named `.JPEG` decodes as the PNG it is) to 8-bit RGB;
    /// `name` is only used in error messages. Never panics; each failure is a typed error.
    pub fn decode(bytes: &[u8], name: &Path) -> Result<Self, RenderError> {
        let path = || name.to_path_buf();
        if bytes.is_empty() {
            return Err(RenderError::Empty { path: path() });
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| RenderError::Corrupt {
                path: path(),
                reason: e.to_string(),
            })?;
        let format = match reader.format() {
            Some(
                f @ (ImageFormat::Jpeg
                | ImageFormat::Png
                | ImageFormat::WebP
                | ImageFormat::Bmp
                | ImageFormat::Tiff),
            ) => f,
            _ => return Err(RenderError::NotAnImage { path: path() }),
        };
        if format == ImageFormat::Jpeg && !jpeg_has_end(bytes) {
            return Err(RenderError::Corrupt {
                path: path(),
                reason: "JPEG data ends before its end-of-image marker".to_string(),
            });
        }
        // The header is read without an allocation limit (it allocates no pixels); the side
        // limit is checked on the header's dimensions before any pixel is allocated.
        reader.no_limits();
        let mut decoder = reader.into_decoder().map_err(|e| decode_error(e, name))?;
        let (width, height) = decoder.dimensions();
        if width > Self::MAX_SIDE || height > Self::MAX_SIDE {
            return Err(RenderError::TooLarge {
                path: path(),
                width,
                height,
                limit: Self::MAX_SIDE,
            });
        }
        if width == 0 || height == 0 {
            return Err(RenderError::Corrupt {
                path: path(),
                reason: format!("{width}×{height} pixels"),
            });
        }
        let mut limits = Limits::default();
        limits.max_image_width = Some(Self::MAX_SIDE);
        limits.max_image_height = Some(Self::MAX_SIDE);
        // Room for the largest accepted image at 16-bit RGBA plus its 8-bit RGB copy.
        limits.max_alloc = Some(u64::from(Self::MAX_SIDE).pow(2) * 11);
        decoder
            .set_limits(limits)
            .map_err(|e| decode_error(e, name))?;
        let image = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(e, name))?;
        Ok(SourceImage {
            name: path(),
            rgb: image.into_rgb8(),
        })
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

    /// The decoded pixels, 8-bit RGB, row-major (HWC).
    pub fn pixels(&self) -> &[u8] {
        self.rgb.as_raw()
    }

    /// Renders `view` at `size`×`size` into `out` (length `3·size·size`, CHW, normalised).
    ///
    /// A view outside the image, a `size` of 0 or over [`MAX_SIDE`](Self::MAX_SIDE), or a
    /// wrong `out` length is an error and leaves `out` untouched.
    pub fn render(
        &self,
        view: &View,
        size: u32,
        norm: &Normalization,
        out: &mut [f32],
    ) -> Result<(), RenderError> {
        self.check_output(size, out.len())?;
        with_scratch(|scratch| {
            scratch.rgb.resize(out.len(), 0);
            self.resize_into(&mut scratch.resizer, view, size, &mut scratch.rgb)?;
            norm.write_chw(&scratch.rgb, out);
            Ok(())
        })
    }

    /// Renders `view` at `size`×`size` as 8-bit RGB (HWC, length `3·size·size`) into `out`:
    /// the pixels [`render`](Self::render) normalises, before normalisation (for colour
    /// augmentation, which works on 8-bit pixels like torchvision's on PIL images).
    pub fn render_rgb(&self, view: &View, size: u32, out: &mut [u8]) -> Result<(), RenderError> {
        self.check_output(size, out.len())?;
        with_scratch(|scratch| self.resize_into(&mut scratch.resizer, view, size, out))
    }

    /// Checks `1 ≤ size ≤ MAX_SIDE` and that a buffer of `len` values holds `3·size·size`.
    fn check_output(&self, size: u32, len: usize) -> Result<(), RenderError> {
        let expected = output_len(size);
        if size == 0 || size > Self::MAX_SIDE || len != expected {
            return Err(RenderError::OutputSize {
                path: self.name.clone(),
                size,
                expected,
                actual: len,
            });
        }
        Ok(())
    }

    /// Crops, resizes and mirrors into `out` (3·size·size bytes, already checked).
    fn resize_into(
        &self,
        resizer: &mut Resizer,
        view: &View,
        size: u32,
        out: &mut [u8],
    ) -> Result<(), RenderError> {
        let out_of_bounds = || RenderError::ViewOutOfBounds {
            path: self.name.clone(),
            view: *view,
            width: self.width(),
            height: self.height(),
        };
        if !view.fits(self.width(), self.height()) {
            return Err(out_of_bounds());
        }
        let source =
            TypedImageRef::<U8x3>::from_buffer(self.width(), self.height(), self.rgb.as_raw())
                .map_err(|_| out_of_bounds())?;
        let crop = TypedCroppedImage::from_ref(&source, view.x, view.y, view.w, view.h)
            .map_err(|_| out_of_bounds())?;
        let actual = out.len();
        let mut target = TypedImage::<U8x3>::from_buffer(size, size, out).map_err(|_| {
            RenderError::OutputSize {
                path: self.name.clone(),
                size,
                expected: output_len(size),
                actual,
            }
        })?;
        // The only error the resizer reports for matching U8x3 images is a bad crop box.
        resizer
            .resize_typed(&crop, &mut target, &resize_options())
            .map_err(|_| out_of_bounds())?;
        drop(target);
        if view.flip {
            for row in out.chunks_exact_mut(3 * size as usize) {
                row.as_chunks_mut::<3>().0.reverse();
            }
        }
        Ok(())
    }
}

/// Decodes `bytes` and renders one view into a new vector (CHW, `3·size·size` values).
pub fn render_view(
    bytes: &[u8],
    name: &Path,
    view: &View,
    size: u32,
    norm: &Normalization,
) -> Result<Vec<f32>, RenderError> {
    let image = SourceImage::decode(bytes, name)?;
    image.check_output(size, output_len(size))?;
    let mut out = vec![0.0; output_len(size)];
    image.render(view, size, norm, &mut out)?;
    Ok(out)
}

/// `3·size·size`, the values of one rendered view (saturating; sizes are checked against
/// [`SourceImage::MAX_SIDE`] before anything is allocated).
fn output_len(size: u32) -> usize {
    (size as usize)
        .saturating_mul(size as usize)
        .saturating_mul(3)
}

/// Maps a decoding error to [`RenderError::Corrupt`], naming the file. (Unsupported coding
/// processes, e.g. arithmetic-coded JPEG, also surface here as format errors.)
fn decode_error(error: ImageError, name: &Path) -> RenderError {
    RenderError::Corrupt {
        path: name.to_path_buf(),
        reason: error.to_string(),
    }
}

/// Whether a JPEG's data reaches an end-of-image marker (`FF D9`) after its last scan header
/// (`FF DA`). Entropy-coded data never contains `FF DA` or `FF D9` (a data byte `FF` is
/// followed by `00` or a restart marker), and embedded thumbnails sit in APP segments before
/// the main image's first scan, so a file cut inside its scan data has no `FF D9` after the
/// last `FF DA`.
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    let after = last_scan.map_or(bytes, |p| &bytes[p..]);
    after.windows(2).any(|w| w == [0xFF, 0xD9])
}
