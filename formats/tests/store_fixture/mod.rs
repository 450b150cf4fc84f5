//! Small deterministic stores for the store, relation and zarr-python tests: a tiny teacher
//! geometry (N = 5, H = 2, D = 8), images, views and targets from a seeded generator.

#![allow(dead_code)] // each test binary uses a different part

use half::f16;
use tinymim_formats::{
    content_key, Encoding, Hash32, ImageEntry, Normalization, QkvParams, RowMeta, StoreHeader,
    Targets, TeacherGeometry, View, ViewRecipe,
};

/// A tiny teacher: 5 tokens, 2 heads of width 4.
pub fn geometry() -> TeacherGeometry {
    TeacherGeometry {
        arch: "tiny-test".to_string(),
        tokens: 5,
        heads: 2,
        dim: 8,
        target_block: 3,
        patch: 2,
        image_size: 4,
        normalization: Normalization::IMAGENET,
    }
}

/// A header for `encoding` with a fixed teacher fingerprint.
pub fn header(encoding: Encoding) -> StoreHeader {
    StoreHeader {
        teacher: Hash32::of_bytes(b"tiny teacher"),
        geometry: geometry(),
        encoding,
        recipe: ViewRecipe::default(),
    }
}

/// A seeded generator (SplitMix64) of uniform values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n).map(|_| scale * self.uniform()).collect()
    }
}

/// The qkv weight and bias of the tiny teacher's target block.
pub fn qkv_params(seed: u64) -> QkvParams {
    let d = geometry().dim as usize;
    let mut rng = Rng::new(seed);
    QkvParams {
        weight: rng
            .vec(3 * d * d, 0.5)
            .into_iter()
            .map(|x| x as f32)
            .collect(),
        bias: rng.vec(3 * d, 0.1).into_iter().map(|x| x as f32).collect(),
    }
}

/// Image `i` of a test source set; every third image has no label.
pub fn image(i: u64) -> ImageEntry {
    ImageEntry {
        hash: Hash32::of_bytes(format!("image {i}").as_bytes()),
        path: format!("class{}/img_{i}.jpg", i % 3),
        size: 1000 + i,
        label: (!i.is_multiple_of(3)).then(|| format!("class{}", i % 3)),
        // Recorded for even images only: both kinds of entry round-trip.
        modified: i
            .is_multiple_of(2)
            .then(|| 1_765_000_000_000_000_000 + i as i64),
    }
}

/// View `j` of an image.
pub fn view(j: u64) -> View {
    View {
        x: j as u32,
        y: 2 * j as u32,
        w: 10 + j as u32,
        h: 12 + j as u32,
        flip: j % 2 == 1,
    }
}

/// Row metadata of (image, view) under `header`, with the right content key.
pub fn row(header: &StoreHeader, image: &ImageEntry, view: View) -> RowMeta {
    RowMeta {
        key: content_key(
            &header.teacher,
            header.geometry.target_block,
            header.encoding,
            &image.hash,
            &view,
        ),
        image: image.hash,
        view,
    }
}

/// One row of arbitrary targets for `encoding`: float16 values, or (`ln1-int8`) int8 values
/// with positive per-channel scales.
pub fn targets(encoding: Encoding, seed: u64) -> Targets {
    let g = geometry();
    let mut rng = Rng::new(seed);
    let n = encoding.row_len(&g);
    match encoding {
        Encoding::Ln1Int8 => Targets::Int8 {
            values: (0..n)
                .map(|_| (127.0 * rng.uniform()).round() as i8)
                .collect(),
            scales: (0..encoding.scale_len(&g))
                .map(|_| f16::from_f64(0.03 + 0.02 * rng.uniform()))
                .collect(),
        },
        _ => Targets::Half(rng.vec(n, 2.0).into_iter().map(f16::from_f64).collect()),
    }
}

/// `count` rows over images `first_image..`, two views per image, with their targets.
pub fn rows(
    header: &StoreHeader,
    first_image: u64,
    count: u64,
) -> Vec<(ImageEntry, RowMeta, Targets)> {
    (0..count)
        .map(|i| {
            let image = image(first_image + i / 2);
            let meta = row(header, &image, view(i % 2));
            let seed = first_image * 1000 + i;
            (image, meta, targets(header.encoding, seed))
        })
        .collect()
}

/// The bit patterns of stored targets, for exact comparisons: values (int8 as bytes), then
/// scales.
pub fn bits(targets: &Targets) -> Vec<u16> {
    match targets {
        Targets::Half(values) => values.iter().map(|v| v.to_bits()).collect(),
        Targets::Int8 { values, scales } => values
            .iter()
            .map(|&v| u16::from(v as u8))
            .chain(scales.iter().map(|s| s.to_bits()))
            .collect(),
    }
}
