//! Decoding and rendering against independent references: an f64 transcription of PIL's
//! bicubic resample written here, and fixtures made once by Pillow (`fixtures/render/generate.py`).

use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};
use rayon::prelude::*;
use serde::Deserialize;
use tinymim_formats::render::render_view;
use tinymim_formats::view::sample_views;
use tinymim_formats::{Hash32, Normalization, RenderError, SourceImage, View, ViewRecipe};

fn cache_dir() -> PathBuf {
    std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/tinymim"))
}

fn photo(name: &str) -> (PathBuf, Vec<u8>) {
    let path = cache_dir().join("photos").join(name);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    (path, bytes)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/render")
            .join(name),
    )
    .unwrap()
}

fn rgb(image: &SourceImage, view: &View, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; 3 * (size * size) as usize];
    image.render_rgb(view, size, &mut out).unwrap();
    out
}

// ---- an f64 reference of PIL's resample ---------------------------------------------------------

/// PIL's bicubic kernel (a = −0.5), support 2.
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// PIL `precompute_coeffs` for one axis: for each output pixel, the first input index and the
/// normalised weights. The support widens by the scale when downscaling (antialiasing).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = 2.0 * filter_scale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            (xmin, k)
        })
        .collect()
}

fn clip8(v: f64) -> u8 {
    (v + 0.5).floor().clamp(0.0, 255.0) as u8
}

/// PIL `Image.resize(BICUBIC)` of an 8-bit RGB image: the horizontal pass, rounded and clamped
/// to 8 bits, then the vertical pass, rounded and clamped.
fn pil_bicubic(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let horizontal = coefficients(w, out_w);
    let mut mid = vec![0u8; h * out_w * 3];
    for y in 0..h {
        for (xx, (x0, k)) in horizontal.iter().enumerate() {
            for c in 0..3 {
                let s: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, wt)| wt * src[(y * w + x0 + i) * 3 + c] as f64)
                    .sum();
                mid[(y * out_w + xx) * 3 + c] = clip8(s);
            }
        }
    }
    let vertical = coefficients(h, out_h);
    let mut out = vec![0u8; out_h * out_w * 3];
    for (yy, (y0, k)) in vertical.iter().enumerate() {
        for x in 0..out_w {
            for c in 0..3 {
                let s: f64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, wt)| wt * mid[((y0 + i) * out_w + x) * 3 + c] as f64)
                    .sum();
                out[(yy * out_w + x) * 3 + c] = clip8(s);
            }
        }
    }
    out
}

/// PIL's `crop` of an 8-bit RGB image.
fn crop(image: &SourceImage, v: &View) -> Vec<u8> {
    let stride = image.width() as usize * 3;
    (v.y..v.y + v.h)
        .flat_map(|y| {
            let start = y as usize * stride + v.x as usize * 3;
            image.pixels()[start..start + v.w as usize * 3].to_vec()
        })
        .collect()
}

fn reference(image: &SourceImage, v: &View, size: u32) -> Vec<u8> {
    let s = size as usize;
    let mut out = pil_bicubic(&crop(image, v), v.w as usize, v.h as usize, s, s);
    if v.flip {
        out.chunks_exact_mut(3 * s)
            .for_each(|row| row.as_chunks_mut::<3>().0.reverse());
    }
    out
}

/// Level differences between two 8-bit renders: (max, fraction of values off by more than 1,
/// mean absolute difference).
fn differences(a: &[u8], b: &[u8]) -> (u8, f64, f64) {
    assert_eq!(a.len(), b.len());
    let d: Vec<u8> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
    let max = *d.iter().max().unwrap();
    let over_one = d.iter().filter(|&&x| x > 1).count() as f64 / d.len() as f64;
    let mean = d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64;
    (max, over_one, mean)
}

/// Tolerance against PIL's algorithm on exactly decoded (PNG) pixels: the resizer keeps 15-bit
/// weights (PIL 22) and runs the vertical pass first (PIL the horizontal), so two levels of
/// difference are allowed, at most 0.1% of values may be off by more than one level, and the
/// mean difference must stay under 0.3 levels (measured: max 2, at most 0.03% over one level,
/// mean 0.00–0.23 over the views below).
fn assert_close_to_pil(ours: &[u8], theirs: &[u8], what: &str) {
    let (max, over_one, mean) = differences(ours, theirs);
    eprintln!("{what}: max {max}, >1: {over_one}, mean {mean}");
    assert!(
        max <= 2 && over_one <= 0.001 && mean < 0.3,
        "{what}: max {max}, >1: {over_one}, mean {mean}"
    );
}

#[test]
fn renders_match_an_f64_reference_of_pil_bicubic_on_a_real_photo() {
    let (path, bytes) = photo("chelsea.png");
    let image = SourceImage::decode(&bytes, &path).unwrap();
    assert_eq!((image.width(), image.height()), (451, 300));
    let mut views = vec![
        View {
            x: 60,
            y: 20,
            w: 300,
            h: 240,
            flip: false,
        }, // downscale 4.7×, 3.75×
        View {
            x: 10,
            y: 10,
            w: 19,
            h: 33,
            flip: false,
        }, // upscale, non-square
        View {
            x: 0,
            y: 0,
            w: 451,
            h: 300,
            flip: true,
        }, // whole image, mirrored
        View {
            x: 100,
            y: 50,
            w: 64,
            h: 200,
            flip: false,
        }, // one axis unchanged
    ];
    views.extend(sample_views(
        &ViewRecipe::default(),
        &Hash32::of_bytes(&bytes),
        451,
        300,
        6,
    ));
    for v in &views {
        for size in [64, 224] {
            assert_close_to_pil(
                &rgb(&image, v, size),
                &reference(&image, v, size),
                &format!("{v:?} at {size}"),
            );
        }
    }
}

#[derive(Deserialize)]
struct PilRender {
    photo: String,
    blake3: String,
    view: View,
    size: u32,
    pixels: String,
}

/// Pillow's own crop + resize(BICUBIC) (+ hflip) of cached photos. PNG sources decode exactly,
/// so they get the resampling tolerance above. The JPEG source adds decoder differences
/// (Pillow uses libjpeg-turbo, we zune-jpeg; their IDCT and chroma upsampling may differ), so
/// it gets a looser bound: max 3 levels, mean under 0.3 (measured: max 1, mean 0.12).
#[test]
fn renders_match_pillow_fixtures() {
    let cases: Vec<PilRender> = serde_json::from_slice(&fixture("pil_renders.json")).unwrap();
    assert_eq!(cases.len(), 5);
    for case in &cases {
        let (path, bytes) = photo(&case.photo);
        assert_eq!(
            Hash32::of_bytes(&bytes).to_hex(),
            case.blake3,
            "{} is not the photo the fixture used",
            path.display()
        );
        let image = SourceImage::decode(&bytes, &path).unwrap();
        let ours = rgb(&image, &case.view, case.size);
        let theirs = fixture(&case.pixels);
        if case.photo.ends_with(".png") {
            assert_close_to_pil(&ours, &theirs, &case.photo);
            // The f64 reference is PIL's algorithm: it agrees with Pillow to a level.
            let (max, _, _) = differences(&reference(&image, &case.view, case.size), &theirs);
            assert!(max <= 1, "{}: reference vs Pillow {max}", case.photo);
        } else {
            let (max, _, mean) = differences(&ours, &theirs);
            eprintln!("{}: max {max}, mean {mean}", case.photo);
            assert!(
                max <= 3 && mean < 0.3,
                "{}: max {max}, mean {mean}",
                case.photo
            );
        }
    }
}

#[test]
fn flip_is_an_exact_mirror() {
    let (path, bytes) = photo("astronaut.png");
    let image = SourceImage::decode(&bytes, &path).unwrap();
    let plain = View {
        x: 31,
        y: 77,
        w: 301,
        h: 257,
        flip: false,
    };
    let a = rgb(&image, &plain, 96);
    let b = rgb(
        &image,
        &View {
            flip: true,
            ..plain
        },
        96,
    );
    for y in 0..96 {
        for x in 0..96 {
            let (i, j) = ((y * 96 + x) * 3, (y * 96 + 95 - x) * 3);
            assert_eq!(a[i..i + 3], b[j..j + 3], "pixel ({x}, {y})");
        }
    }
    assert_ne!(a, b);
}

#[test]
fn a_full_view_at_the_image_size_reproduces_the_pixels() {
    let (path, bytes) = photo("astronaut.png");
    let image = SourceImage::decode(&bytes, &path).unwrap();
    assert_eq!(rgb(&image, &View::full(512, 512), 512), image.pixels());
    // And the pixels are the PNG's own, decoded independently by the `image` crate.
    assert_eq!(
        image::load_from_memory(&bytes)
            .unwrap()
            .into_rgb8()
            .as_raw(),
        image.pixels()
    );
}

/// `render` is `render_rgb` followed by `(p / 255 − mean) / std` per channel, CHW; checked in f64.
#[test]
fn normalisation_writes_chw_planes() {
    let (path, bytes) = photo("coffee.png");
    let image = SourceImage::decode(&bytes, &path).unwrap();
    let view = View {
        x: 200,
        y: 100,
        w: 150,
        h: 120,
        flip: true,
    };
    let pixels = rgb(&image, &view, 32);
    let custom = Normalization {
        mean: [0.1, 0.5, 0.9],
        std: [0.5, 2.0, 0.25],
    };
    for norm in [Normalization::IMAGENET, custom] {
        let mut out = vec![0f32; 3 * 32 * 32];
        image.render(&view, 32, &norm, &mut out).unwrap();
        for c in 0..3 {
            for i in 0..32 * 32 {
                let p = pixels[i * 3 + c] as f64;
                let want = (p / 255.0 - norm.mean[c] as f64) / norm.std[c] as f64;
                assert!(
                    (out[c * 1024 + i] as f64 - want).abs() < 1e-5,
                    "channel {c} pixel {i}"
                );
            }
        }
    }
    let direct = render_view(&bytes, &path, &view, 32, &Normalization::IMAGENET).unwrap();
    let mut out = vec![0f32; 3 * 32 * 32];
    image
        .render(&view, 32, &Normalization::IMAGENET, &mut out)
        .unwrap();
    assert_eq!(direct, out);
}

/// Rendering from a parallel iterator, on a pool of 4 threads: the resizer itself splits each
/// render into rayon tasks, so a thread waiting inside one render may start another (work
/// stealing); the per-thread scratch must cope with that re-entry, and results must not change.
#[test]
fn source_images_render_from_many_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SourceImage>();
    let (path, bytes) = photo("chelsea.png");
    let image = SourceImage::decode(&bytes, &path).unwrap();
    let recipe = ViewRecipe::default();
    let views = sample_views(&recipe, &Hash32::of_bytes(&bytes), 451, 300, 300);
    let norm = Normalization::IMAGENET;
    let render = |v: &View| {
        let mut out = vec![0f32; 3 * 224 * 224];
        image.render(v, 224, &norm, &mut out).unwrap();
        out
    };
    let serial: Vec<Vec<f32>> = views.iter().map(render).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let parallel: Vec<Vec<f32>> = pool.install(|| views.par_iter().map(render).collect());
    assert!(serial == parallel);
}

#[test]
fn bad_views_and_buffers_are_errors() {
    let (path, bytes) = photo("chelsea.png");
    let image = SourceImage::decode(&bytes, &path).unwrap();
    let norm = Normalization::IMAGENET;
    let mut out = vec![0f32; 3 * 16 * 16];
    for view in [
        View {
            x: 400,
            y: 0,
            w: 52,
            h: 10,
            flip: false,
        },
        View {
            x: 0,
            y: 299,
            w: 10,
            h: 2,
            flip: false,
        },
        View {
            x: 0,
            y: 0,
            w: 0,
            h: 10,
            flip: false,
        },
        View {
            x: u32::MAX,
            y: 0,
            w: 2,
            h: 2,
            flip: false,
        },
    ] {
        let err = image.render(&view, 16, &norm, &mut out).unwrap_err();
        assert!(matches!(err, RenderError::ViewOutOfBounds { .. }), "{err}");
        assert!(err.to_string().contains("chelsea.png"), "{err}");
    }
    let ok = View::full(451, 300);
    let err = image.render(&ok, 16, &norm, &mut [0f32; 10]).unwrap_err();
    assert!(
        matches!(
            err,
            RenderError::OutputSize {
                expected: 768,
                actual: 10,
                ..
            }
        ),
        "{err}"
    );
    let err = image.render(&ok, 0, &norm, &mut []).unwrap_err();
    assert!(matches!(err, RenderError::OutputSize { .. }), "{err}");
    assert!(image.render_rgb(&ok, 16, &mut [0u8; 5]).is_err());
    // An absurd size is refused before anything is allocated.
    let err = render_view(&bytes, &path, &ok, u32::MAX, &norm).unwrap_err();
    assert!(
        matches!(err, RenderError::OutputSize { size: u32::MAX, .. }),
        "{err}"
    );
}

// ---- decoding -----------------------------------------------------------------------------------

fn png(pixels: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(pixels, w, h, color)
        .unwrap();
    out
}

fn jpeg(pixels: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(pixels, w, h, color)
        .unwrap();
    out
}

fn decode(bytes: &[u8]) -> Result<SourceImage, RenderError> {
    SourceImage::decode(bytes, Path::new("input/test-image.bin"))
}

/// A small smooth test pattern, one byte per sample.
fn pattern(w: u32, h: u32, channels: u32) -> Vec<u8> {
    (0..w * h * channels)
        .map(|i| {
            let (p, c) = (i / channels, i % channels);
            ((p % w) * 7 + (p / w) * 3 + c * 50) as u8
        })
        .collect()
}

#[test]
fn colour_types_decode_to_8_bit_rgb() {
    let (w, h) = (13, 7);
    // Gray: replicated into R, G and B.
    let gray = pattern(w, h, 1);
    let image = decode(&png(&gray, w, h, ExtendedColorType::L8)).unwrap();
    let want: Vec<u8> = gray.iter().flat_map(|&g| [g, g, g]).collect();
    assert_eq!(image.pixels(), want);

    // RGBA and gray+alpha: alpha dropped, colour kept even where alpha is 0 (PIL convert("RGB")).
    let mut rgba = pattern(w, h, 4);
    rgba.iter_mut()
        .skip(3)
        .step_by(4)
        .enumerate()
        .for_each(|(i, a)| *a = (i * 40) as u8);
    let image = decode(&png(&rgba, w, h, ExtendedColorType::Rgba8)).unwrap();
    let want: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    assert_eq!(image.pixels(), want);
    let la = pattern(w, h, 2);
    let image = decode(&png(&la, w, h, ExtendedColorType::La8)).unwrap();
    let want: Vec<u8> = la.chunks(2).flat_map(|p| [p[0], p[0], p[0]]).collect();
    assert_eq!(image.pixels(), want);

    // 16-bit (the encoder takes native-endian samples): round(v · 255 / 65535), checked over the whole range of v.
    let samples: Vec<u16> = (0..w * h * 3)
        .map(|i| (i as u64 * 65535 / (w * h * 3 - 1) as u64) as u16)
        .collect();
    let native: Vec<u8> = samples.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let image = decode(&png(&native, w, h, ExtendedColorType::Rgb16)).unwrap();
    let want: Vec<u8> = samples
        .iter()
        .map(|&v| (v as f64 * 255.0 / 65535.0).round() as u8)
        .collect();
    assert_eq!(image.pixels(), want);
    let gray16 = &native[..(w * h * 2) as usize];
    let image = decode(&png(gray16, w, h, ExtendedColorType::L16)).unwrap();
    let want: Vec<u8> = samples[..(w * h) as usize]
        .iter()
        .flat_map(|&v| [(v as f64 * 255.0 / 65535.0).round() as u8; 3])
        .collect();
    assert_eq!(image.pixels(), want);

    // Gray JPEG: lossy, but R = G = B and close to the source.
    let image = decode(&jpeg(&gray, w, h, ExtendedColorType::L8)).unwrap();
    for (p, &g) in image.pixels().chunks(3).zip(&gray) {
        assert!(
            p[0] == p[1] && p[1] == p[2] && p[0].abs_diff(g) <= 8,
            "{p:?} vs {g}"
        );
    }
}

/// A CMYK JPEG written by Pillow (Adobe-inverted CMYK), against Pillow's own convert("RGB").
/// The decoders differ (zune-jpeg vs libjpeg-turbo, and the CMYK → RGB arithmetic), so the
/// bound is max 2 levels, mean under 0.05 (measured: max 1, mean 0.007).
#[test]
fn cmyk_jpeg_decodes_like_pillow() {
    let image = decode(&fixture("cmyk.jpg")).unwrap();
    assert_eq!((image.width(), image.height()), (48, 32));
    let (max, _, mean) = differences(image.pixels(), &fixture("cmyk_pil.rgb"));
    eprintln!("CMYK: max {max}, mean {mean}");
    assert!(max <= 2 && mean < 0.05, "max {max}, mean {mean}");
}

/// WebP (lossless and lossy), BMP and TIFF files and a PNG named `.JPEG`, written by Pillow,
/// decode to exactly Pillow's pixels (image-webp's lossy decode is libwebp's, bit for bit).
#[test]
fn other_formats_decode_like_pillow() {
    for name in [
        "lossless.webp",
        "lossy.webp",
        "image.bmp",
        "raw.tif",
        "lzw.tif",
        "png_named.JPEG",
    ] {
        let image =
            decode(&fixture(&format!("formats/{name}"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((image.width(), image.height()), (48, 32), "{name}");
        let (max, _, mean) = differences(image.pixels(), &fixture(&format!("formats/{name}.rgb")));
        assert_eq!(max, 0, "{name}: max {max}, mean {mean}");
    }
}

fn assert_error(
    result: Result<SourceImage, RenderError>,
    what: &str,
    variant: fn(&RenderError) -> bool,
) {
    let err = result.err().unwrap_or_else(|| panic!("{what}: decoded"));
    assert!(variant(&err), "{what}: wrong variant: {err:?}");
    assert!(
        err.to_string().contains("input/test-image.bin"),
        "{what}: {err}"
    );
}

#[test]
fn bad_images_are_typed_errors_naming_the_file() {
    let (_, jpeg_bytes) = photo("china.jpg");
    let (_, png_bytes) = photo("chelsea.png");
    assert_error(decode(&[]), "empty", |e| {
        matches!(e, RenderError::Empty { .. })
    });
    for cut in [3, 20, 300, jpeg_bytes.len() / 2, jpeg_bytes.len() - 2] {
        assert_error(
            decode(&jpeg_bytes[..cut]),
            &format!("JPEG cut at {cut}"),
            |e| matches!(e, RenderError::Corrupt { .. }),
        );
    }
    for cut in [8, 30, png_bytes.len() / 2, png_bytes.len() - 13] {
        assert_error(
            decode(&png_bytes[..cut]),
            &format!("PNG cut at {cut}"),
            |e| matches!(e, RenderError::Corrupt { .. }),
        );
    }
    let random: Vec<u8> = Hash32::of_bytes(b"noise")
        .0
        .iter()
        .cycle()
        .take(4096)
        .copied()
        .collect();
    assert_error(decode(&random), "random bytes", |e| {
        matches!(e, RenderError::NotAnImage { .. })
    });
    assert_error(decode(b"just some text, not a picture\n"), "text", |e| {
        matches!(e, RenderError::NotAnImage { .. })
    });
    assert_error(decode(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"), "GIF", |e| {
        matches!(e, RenderError::NotAnImage { .. })
    });

    // A PNG whose header claims 100000×100000 RGB (30 GB of pixels): refused from the header.
    let mut huge_png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    huge_png.extend_from_slice(&100_000u32.to_be_bytes());
    huge_png.extend_from_slice(&100_000u32.to_be_bytes());
    huge_png.extend_from_slice(&[8, 2, 0, 0, 0]);
    huge_png.extend_from_slice(&0x27309c9fu32.to_be_bytes()); // CRC-32 of "IHDR" + data (zlib.crc32)
                                                              // Then the start of the pixel data: 16 zero bytes, zlib-compressed, and the end chunk.
    huge_png.extend_from_slice(b"\x00\x00\x00\x0bIDAT\x78\x9c\x63\x60\x40\x05\x00\x00\x10\x00\x01");
    huge_png.extend_from_slice(&0x39bd8f65u32.to_be_bytes());
    huge_png.extend_from_slice(b"\x00\x00\x00\x00IEND\xae\x42\x60\x82");
    let err = decode(&huge_png).err().unwrap();
    assert!(
        matches!(
            err,
            RenderError::TooLarge {
                width: 100_000,
                height: 100_000,
                limit: 16384,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("input/test-image.bin"));

    // A JPEG whose frame header claims 60000×40000: the SOF0 height and width patched in.
    let mut huge_jpeg = jpeg(&pattern(8, 8, 3), 8, 8, ExtendedColorType::Rgb8);
    let sof = huge_jpeg
        .windows(2)
        .position(|m| m == [0xFF, 0xC0])
        .unwrap();
    huge_jpeg[sof + 5..sof + 7].copy_from_slice(&40_000u16.to_be_bytes());
    huge_jpeg[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
    let err = decode(&huge_jpeg).err().unwrap();
    assert!(
        matches!(
            err,
            RenderError::TooLarge {
                width: 60_000,
                height: 40_000,
                ..
            }
        ),
        "{err:?}"
    );
}

/// Every prefix length class and many corrupted bytes of a small JPEG and PNG: each decode
/// returns (an image or a typed error) without panicking.
#[test]
fn damaged_images_never_panic() {
    let pixels = pattern(24, 16, 3);
    for bytes in [
        jpeg(&pixels, 24, 16, ExtendedColorType::Rgb8),
        png(&pixels, 24, 16, ExtendedColorType::Rgb8),
    ] {
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        let noise = Hash32::of_bytes(&bytes).0;
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= noise[i % 32] | 1;
            if let Ok(image) = decode(&damaged) {
                let mut out = vec![0f32; 3 * 8 * 8];
                let full = View::full(image.width(), image.height());
                image
                    .render(&full, 8, &Normalization::IMAGENET, &mut out)
                    .unwrap();
            }
        }
    }
    // Formats are recognised by content, not by the name's extension.
    assert!(SourceImage::decode(
        &png(&pixels, 24, 16, ExtendedColorType::Rgb8),
        Path::new("x.jpg")
    )
    .is_ok());
}
