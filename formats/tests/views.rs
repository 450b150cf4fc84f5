//! View sampling: torchvision's RandomResizedCrop recipe on a documented, replayable RNG.

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use tinymim_formats::view::{sample_view, sample_views};
use tinymim_formats::{Hash32, View, ViewRecipe};

fn image_hash(i: u32) -> Hash32 {
    Hash32::of_bytes(format!("image {i}").as_bytes())
}

#[derive(Deserialize)]
struct FixtureRecipe {
    seed: u64,
    scale: (f64, f64),
    ratio: (f64, f64),
    flip_probability: f64,
}

#[derive(Deserialize)]
struct FixtureCase {
    recipe: FixtureRecipe,
    image: String,
    width: u32,
    height: u32,
    index: u32,
    view: View,
}

/// `fixtures/render/views.json` was written by `generate.py` from the byte layout documented in
/// `view.rs` and a literal transcription of torchvision's `get_params`, with Python's blake3:
/// the documentation is enough to replay every view, degenerate sizes included.
#[test]
fn python_replay_of_the_documented_layout_gives_the_same_views() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/render/views.json");
    let cases: Vec<FixtureCase> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(cases.len() > 100);
    for case in &cases {
        let recipe = ViewRecipe {
            seed: case.recipe.seed,
            scale: case.recipe.scale,
            ratio: case.recipe.ratio,
            flip_probability: case.recipe.flip_probability,
            ..ViewRecipe::default()
        };
        let image = Hash32::from_hex(&case.image).unwrap();
        let view = sample_view(&recipe, &image, case.width, case.height, case.index);
        assert_eq!(
            view, case.view,
            "{}×{} image {} seed {} index {}",
            case.width, case.height, case.image, recipe.seed, case.index
        );
    }
}

/// torchvision's centred fallback, written out from its source for the default ratio range.
fn fallback(width: u32, height: u32) -> View {
    let (lo, hi) = (3.0 / 4.0, 4.0 / 3.0);
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < lo {
        (width, (width as f64 / lo).round_ties_even() as u32)
    } else if in_ratio > hi {
        ((height as f64 * hi).round_ties_even() as u32, height)
    } else {
        (width, height)
    };
    View {
        x: (width - w) / 2,
        y: (height - h) / 2,
        w,
        h,
        flip: false,
    }
}

/// 10,000 views over four image shapes. Each box lies inside its image, and is either the
/// centred fallback or a random box whose area fraction lies in [0.2, 1.0] and aspect ratio in
/// [3/4, 4/3] *up to the rounding of w and h*: the real-valued (w', h') the sampler drew are
/// within half a pixel of (w, h), so the test asserts that some (w', h') with |w − w'| ≤ ½,
/// |h − h'| ≤ ½ satisfies both ranges, i.e. (w − ½)(h − ½) ≤ area, (w + ½)(h + ½) ≥ 0.2·area,
/// (w − ½)/(h + ½) ≤ 4/3 and (w + ½)/(h − ½) ≥ 3/4.
#[test]
fn ten_thousand_views_lie_inside_and_follow_the_recipe() {
    let recipe = ViewRecipe::default();
    let shapes = [(640u32, 427u32), (500, 375), (224, 224), (300, 1000)];
    let (mut flips, mut random, mut min_frac, mut max_frac) = (0u32, 0u32, f64::MAX, 0f64);
    let (mut min_aspect, mut max_aspect) = (f64::MAX, 0f64);
    for (s, &(width, height)) in shapes.iter().enumerate() {
        let views = sample_views(&recipe, &image_hash(s as u32), width, height, 2500);
        assert_eq!(views.len(), 2500);
        let area = width as f64 * height as f64;
        for v in &views {
            assert!(v.w >= 1 && v.h >= 1, "{v:?}");
            assert!(
                v.x + v.w <= width && v.y + v.h <= height,
                "{v:?} outside {width}×{height}"
            );
            flips += v.flip as u32;
            if (View { flip: false, ..*v }) == fallback(width, height) {
                continue;
            }
            random += 1;
            let (w, h) = (v.w as f64, v.h as f64);
            assert!(
                (w - 0.5) * (h - 0.5) <= area && (w + 0.5) * (h + 0.5) >= 0.2 * area,
                "{v:?}"
            );
            assert!(
                (w - 0.5) / (h + 0.5) <= 4.0 / 3.0 && (w + 0.5) / (h - 0.5) >= 0.75,
                "{v:?}"
            );
            min_frac = min_frac.min(w * h / area);
            max_frac = max_frac.max(w * h / area);
            min_aspect = min_aspect.min(w / h);
            max_aspect = max_aspect.max(w / h);
        }
    }
    // The fallback is rare except for the tall 300×1000 image, where a box of area fraction
    // above ~0.4 cannot fit its width and about a quarter of its views fall back.
    assert!(random > 9000, "only {random} random boxes");
    // The ranges are used, not just respected.
    assert!(
        min_frac < 0.21 && max_frac > 0.97,
        "area fractions {min_frac}..{max_frac}"
    );
    assert!(
        min_aspect < 0.77 && max_aspect > 1.3,
        "aspects {min_aspect}..{max_aspect}"
    );
    // Flip frequency: 10,000 Bernoulli(½) draws have σ = 0.005; allow 4σ.
    let rate = flips as f64 / 10_000.0;
    assert!((rate - 0.5).abs() < 0.02, "flip rate {rate}");
}

/// Box corners spread over the whole admissible range: for a fixed box size the offset is a
/// uniform integer, so over many views of a 640×427 image x and y reach near 0 and near W − w.
#[test]
fn offsets_cover_the_admissible_range() {
    let recipe = ViewRecipe::default();
    let views = sample_views(&recipe, &image_hash(7), 640, 427, 2000);
    let rel_x: Vec<f64> = views
        .iter()
        .map(|v| v.x as f64 / (640 - v.w).max(1) as f64)
        .collect();
    let rel_y: Vec<f64> = views
        .iter()
        .map(|v| v.y as f64 / (427 - v.h).max(1) as f64)
        .collect();
    for rel in [rel_x, rel_y] {
        let mean = rel.iter().sum::<f64>() / rel.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "mean relative offset {mean}");
        assert!(rel.iter().any(|&r| r < 0.02) && rel.iter().any(|&r| r > 0.98));
    }
}

#[test]
fn the_same_inputs_give_the_same_view_and_others_differ() {
    let recipe = ViewRecipe::default();
    let image = image_hash(1);
    for index in 0..50 {
        assert_eq!(
            sample_view(&recipe, &image, 640, 427, index),
            sample_view(&recipe, &image, 640, 427, index)
        );
    }
    let views = sample_views(&recipe, &image, 640, 427, 200);
    for (index, view) in views.iter().enumerate() {
        assert_eq!(*view, sample_view(&recipe, &image, 640, 427, index as u32));
    }
    let distinct: HashSet<View> = views.iter().copied().collect();
    assert!(
        distinct.len() >= 199,
        "{} distinct views of 200 indices",
        distinct.len()
    );

    let other_seed = ViewRecipe {
        seed: 1,
        ..recipe.clone()
    };
    let other_image = image_hash(2);
    let differ = |f: &dyn Fn(u32) -> View| (0..200).filter(|&i| f(i) != views[i as usize]).count();
    assert!(differ(&|i| sample_view(&other_seed, &image, 640, 427, i)) >= 199);
    assert!(differ(&|i| sample_view(&recipe, &other_image, 640, 427, i)) >= 199);
}

#[test]
fn thin_and_tiny_images_get_the_fallback_and_stay_inside() {
    let recipe = ViewRecipe::default();
    // No random box fits a 1-pixel side (w = round(√(area·aspect)) ≥ 12 > 1): the fallback.
    for (width, height) in [(1u32, 1000u32), (1000, 1), (1, 1), (2, 600), (600, 3)] {
        for index in 0..20 {
            let v = sample_view(&recipe, &image_hash(3), width, height, index);
            assert_eq!(
                View { flip: false, ..v },
                fallback(width, height),
                "{width}×{height}"
            );
        }
    }
    assert_eq!(
        fallback(1, 1000),
        View {
            x: 0,
            y: 499,
            w: 1,
            h: 1,
            flip: false
        }
    );
    // Every small shape: inside, non-empty.
    for width in 1..=16 {
        for height in [1, 2, 3, 5, 8, 13, 40, 200] {
            for v in sample_views(
                &recipe,
                &image_hash(width * 1000 + height),
                width,
                height,
                25,
            ) {
                assert!(
                    v.w >= 1 && v.h >= 1 && v.x + v.w <= width && v.y + v.h <= height,
                    "{v:?} in {width}×{height}"
                );
            }
        }
    }
}

#[test]
fn degenerate_recipes_and_sizes_still_give_boxes_inside() {
    let image = image_hash(4);
    let recipes = [
        ViewRecipe {
            scale: (0.0, 0.0),
            ..ViewRecipe::default()
        },
        ViewRecipe {
            scale: (f64::NAN, 1.0),
            ratio: (f64::NAN, f64::NAN),
            ..ViewRecipe::default()
        },
        ViewRecipe {
            ratio: (-1.0, 0.0),
            ..ViewRecipe::default()
        },
        ViewRecipe {
            ratio: (0.1, 0.2),
            ..ViewRecipe::default()
        },
        ViewRecipe {
            ratio: (5.0, 9.0),
            ..ViewRecipe::default()
        },
        ViewRecipe {
            scale: (2.0, 3.0),
            ..ViewRecipe::default()
        },
    ];
    for recipe in &recipes {
        for (width, height) in [(640u32, 427u32), (1, 1), (3, 50), (50, 3)] {
            for v in sample_views(recipe, &image, width, height, 30) {
                assert!(
                    v.w >= 1 && v.h >= 1 && v.x + v.w <= width && v.y + v.h <= height,
                    "{recipe:?}: {v:?} in {width}×{height}"
                );
            }
        }
    }
    // A zero side (no decoded image has one) is treated as 1.
    assert_eq!(
        View {
            flip: false,
            ..sample_view(&ViewRecipe::default(), &image, 0, 0, 0)
        },
        View::full(1, 1)
    );
    // Flip probability 0 and 1 are honoured.
    let never = ViewRecipe {
        flip_probability: 0.0,
        ..ViewRecipe::default()
    };
    let always = ViewRecipe {
        flip_probability: 1.0,
        ..ViewRecipe::default()
    };
    assert!(sample_views(&never, &image, 64, 64, 100)
        .iter()
        .all(|v| !v.flip));
    assert!(sample_views(&always, &image, 64, 64, 100)
        .iter()
        .all(|v| v.flip));
}
