//! The student's colour jitter against an f64 implementation of torchvision's tensor
//! `ColorJitter` formulas, and its seeding.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinymim_formats::{Hash32, Normalization, View};
use tinymim_train::jitter::{jitter_and_normalize, Adjustment, ColorJitter};

/// torchvision.transforms.functional (tensor branch), in f64: `_blend` clamps to [0, 1];
/// `rgb_to_grayscale` = 0.2989 r + 0.587 g + 0.114 b; contrast blends with the mean gray.
fn reference(rgb: &[f64], j: &ColorJitter) -> Vec<f64> {
    let gray = |p: &[f64]| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mut img = rgb.to_vec();
    for a in j.order {
        let (f, others): (f64, Vec<f64>) = match a {
            Adjustment::Brightness => (f64::from(j.brightness), vec![0.0; img.len() / 3]),
            Adjustment::Contrast => {
                let mean = img.chunks(3).map(gray).sum::<f64>() / (img.len() / 3) as f64;
                (f64::from(j.contrast), vec![mean; img.len() / 3])
            }
            Adjustment::Saturation => (f64::from(j.saturation), img.chunks(3).map(gray).collect()),
        };
        for (p, o) in img.chunks_mut(3).zip(others) {
            p.iter_mut()
                .for_each(|x| *x = (f * *x + (1.0 - f) * o).clamp(0.0, 1.0));
        }
    }
    img
}

fn view(x: u32) -> View {
    View {
        x,
        y: 1,
        w: 10,
        h: 12,
        flip: false,
    }
}

#[test]
fn jitter_matches_torchvision_formulas_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let rgb: Vec<u8> = (0..3 * 16 * 16).map(|_| rng.random()).collect();
    let norm = Normalization::IMAGENET;
    for epoch in 0..12 {
        let j = ColorJitter::draw(3, epoch, &Hash32::of_bytes(b"img"), &view(0));
        let mut got = vec![0f32; rgb.len()];
        jitter_and_normalize(&rgb, &j, &norm, &mut got);
        let want = reference(
            &rgb.iter()
                .map(|&p| f64::from(p) / 255.0)
                .collect::<Vec<_>>(),
            &j,
        );
        let plane = rgb.len() / 3;
        for (i, p) in want.chunks(3).enumerate() {
            for c in 0..3 {
                let w = (p[c] - f64::from(norm.mean[c])) / f64::from(norm.std[c]);
                let g = f64::from(got[c * plane + i]);
                assert!(
                    (g - w).abs() < 1e-5,
                    "epoch {epoch} pixel {i} channel {c}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn identity_factors_leave_the_render_normalisation() {
    let rgb: Vec<u8> = (0..3 * 4).map(|i| (i * 20) as u8).collect();
    let j = ColorJitter {
        order: [
            Adjustment::Contrast,
            Adjustment::Brightness,
            Adjustment::Saturation,
        ],
        brightness: 1.0,
        contrast: 1.0,
        saturation: 1.0,
    };
    let norm = Normalization::IMAGENET;
    let mut got = vec![0f32; rgb.len()];
    jitter_and_normalize(&rgb, &j, &norm, &mut got);
    for (i, p) in rgb.chunks(3).enumerate() {
        for c in 0..3 {
            assert!((got[c * 4 + i] - norm.value(c, p[c])).abs() < 1e-6);
        }
    }
}

#[test]
fn draws_are_seeded_per_epoch_and_view_within_range_in_every_order() {
    let image = Hash32::of_bytes(b"a");
    let a = ColorJitter::draw(1, 0, &image, &view(0));
    assert_eq!(
        a,
        ColorJitter::draw(1, 0, &image, &view(0)),
        "reproducible (resume)"
    );
    assert_ne!(
        a,
        ColorJitter::draw(1, 1, &image, &view(0)),
        "new each epoch"
    );
    assert_ne!(a, ColorJitter::draw(1, 0, &image, &view(1)), "per view");
    assert_ne!(a, ColorJitter::draw(2, 0, &image, &view(0)), "per run seed");
    let mut orders = std::collections::HashSet::new();
    for epoch in 0..200 {
        let j = ColorJitter::draw(1, epoch, &image, &view(0));
        for f in [j.brightness, j.contrast, j.saturation] {
            assert!((0.6..1.4).contains(&f), "{f}");
        }
        orders.insert(format!("{:?}", j.order));
    }
    assert_eq!(orders.len(), 6, "all orders of the three adjustments occur");
}

/// The jitter as whole-image passes in f32, one adjustment after the other over all pixels,
/// then normalised to CHW: the straightforward order of operations the fused two-pass
/// implementation must reproduce bit for bit (resumed runs and earlier stores see the same data).
fn whole_image_passes(rgb: &[u8], j: &ColorJitter, norm: &Normalization) -> Vec<f32> {
    let gray = |p: &[f32]| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mut img: Vec<f32> = rgb.iter().map(|&p| f32::from(p) / 255.0).collect();
    for a in j.order {
        match a {
            Adjustment::Brightness => img
                .iter_mut()
                .for_each(|x| *x = (j.brightness * *x).clamp(0.0, 1.0)),
            Adjustment::Contrast => {
                let sum: f64 = img.chunks(3).map(|p| f64::from(gray(p))).sum();
                let o = (1.0 - j.contrast) * (sum / (img.len() / 3) as f64) as f32;
                img.iter_mut()
                    .for_each(|x| *x = (j.contrast * *x + o).clamp(0.0, 1.0));
            }
            Adjustment::Saturation => {
                for p in img.chunks_mut(3) {
                    let o = (1.0 - j.saturation) * gray(p);
                    p.iter_mut()
                        .for_each(|x| *x = (j.saturation * *x + o).clamp(0.0, 1.0));
                }
            }
        }
    }
    let plane = img.len() / 3;
    let mut out = vec![0f32; img.len()];
    for (i, p) in img.chunks(3).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (p[c] - norm.mean[c]) / norm.std[c];
        }
    }
    out
}

#[test]
fn the_fused_jitter_equals_whole_image_passes_bit_for_bit_in_every_order() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // Bright pixels too, so that brightness before contrast clamps and moves the mean.
    let rgb: Vec<u8> = (0..3 * 24 * 20)
        .map(|i| if i % 7 == 0 { 250 } else { rng.random() })
        .collect();
    let norm = Normalization::IMAGENET;
    let mut orders = std::collections::HashSet::new();
    for epoch in 0..40 {
        let j = ColorJitter::draw(5, epoch, &Hash32::of_bytes(b"fused"), &view(2));
        orders.insert(format!("{:?}", j.order));
        let mut got = vec![0f32; rgb.len()];
        jitter_and_normalize(&rgb, &j, &norm, &mut got);
        let want = whole_image_passes(&rgb, &j, &norm);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&got),
            bits(&want),
            "epoch {epoch}, order {:?}",
            j.order
        );
    }
    assert_eq!(orders.len(), 6, "every order is checked");
}
