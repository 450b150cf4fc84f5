//! `train probe` on a synthetic labelled folder: two classes of clearly different colours
//! are told apart by both classifiers on frozen features, the random-initialised twin is
//! exactly the untrained model of the export's seed, and the train/test split is deterministic.

use std::path::Path;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinymim_train::config::VitConfig;
use tinymim_train::data::scan_images;
use tinymim_train::export::export_student;
use tinymim_train::probe::knn::knn_top1;
use tinymim_train::probe::{
    probe, split, split_folders, ProbeConfig, ProbeReport, ADAPTIVE_INPUT, FINAL_NORM, PIXELS,
    STUDENT, TWIN,
};
use tinymim_train::Student;

/// `per_class` noisy images per class: reddish ones in `red/`, bluish ones in `blue/`.
fn labelled_folder(root: &Path, per_class: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (class, base) in [("red", [200u8, 40, 40]), ("blue", [30, 60, 210])] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            let (w, h) = (40 + 4 * i as u32, 36);
            let img = image::RgbImage::from_fn(w, h, |_, _| {
                image::Rgb(base.map(|c| c.saturating_add(rng.random_range(0..40))))
            });
            img.save(root.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
}

fn tiny_student_export(dir: &Path) -> std::path::PathBuf {
    seeded_student_export(dir, 3)
}

fn seeded_student_export(dir: &Path, seed: u64) -> std::path::PathBuf {
    let config = VitConfig {
        dim: 32,
        depth: 2,
        heads: 2,
        mlp_dim: 64,
        patch: 8,
        image_size: 32,
        drop_path: 0.0,
    };
    let student = Student::new(&config, 2, seed, &Device::Cpu).unwrap();
    export_student(dir, &student).unwrap();
    dir.join("model.safetensors")
}

#[test]
fn two_colour_classes_are_separated() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("labelled");
    labelled_folder(&images, 10);
    let model = tiny_student_export(&dir.path().join("run"));
    let report = probe(&config(model, images)).unwrap();
    assert_eq!(
        (report.classes, report.train, report.test, report.k),
        (2, 16, 4, 16)
    );
    // Every student and twin point × pooling, and the raw-pixel floor, with both classifiers.
    assert_eq!(report.rows.len(), 2 * 2 * 2 + 1, "{report}");
    for model in [STUDENT, TWIN] {
        for point in [ADAPTIVE_INPUT, FINAL_NORM] {
            for pooling in ["class token", "mean patches"] {
                let row = report.row(model, point, pooling).unwrap();
                assert!(row.knn_top1 >= 0.99, "{report}");
                assert!(row.linear_top1 >= 0.99, "{report}");
            }
        }
    }
    let pixels = report.rows.iter().find(|r| r.model == PIXELS).unwrap();
    assert!(
        pixels.knn_top1 >= 0.99 && pixels.linear_top1 >= 0.99,
        "{report}"
    );
    assert!(report.to_string().contains("summary: student"), "{report}");
}

fn config(model: std::path::PathBuf, images: std::path::PathBuf) -> ProbeConfig {
    ProbeConfig {
        model,
        images,
        test_images: None,
        k: 20,
        device: Device::Cpu,
        twin_seed: None,
        teacher: None,
    }
}

/// The rows of one model, as (features, pooling, k-NN, linear).
fn scores(report: &ProbeReport, model: &str) -> Vec<(String, String, f64, f64)> {
    report
        .rows
        .iter()
        .filter(|r| r.model == model)
        .map(|r| {
            (
                r.features.clone(),
                r.pooling.clone(),
                r.knn_top1,
                r.linear_top1,
            )
        })
        .collect()
}

#[test]
fn the_twin_is_the_untrained_model_of_the_recorded_seed() {
    // Noisy classes, so that scores depend on the weights: an untrained export of seed 5
    // scores exactly as its own twin; a twin of another seed (chosen by --twin-seed) does not.
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("labelled");
    labelled_folder(&images, 10);
    for i in 0..10 {
        let img = image::RgbImage::from_fn(40, 36, |x, y| {
            image::Rgb([(x * 6 + i * 9) as u8, (y * 7) as u8, ((x + y) * 3) as u8])
        });
        std::fs::create_dir_all(images.join("ramp")).unwrap();
        img.save(images.join("ramp").join(format!("{i}.png")))
            .unwrap();
    }
    let model = seeded_student_export(&dir.path().join("run"), 5);
    let report = probe(&config(model.clone(), images.clone())).unwrap();
    assert_eq!(report.twin_seed, 5, "the seed config.json records");
    assert_eq!(scores(&report, STUDENT), scores(&report, TWIN), "{report}");

    let other = probe(&ProbeConfig {
        twin_seed: Some(6),
        ..config(model, images.clone())
    })
    .unwrap();
    assert_eq!(other.twin_seed, 6);
    assert!(other.to_string().contains("twin seed 6"), "{other}");
    assert_eq!(scores(&other, STUDENT), scores(&report, STUDENT));
    let seed6 = seeded_student_export(&dir.path().join("run6"), 6);
    let untrained6 = probe(&config(seed6, images)).unwrap();
    assert_eq!(
        scores(&other, TWIN),
        scores(&untrained6, STUDENT),
        "{other}"
    );
}

#[test]
fn a_separate_test_folder_is_the_test_set_and_its_classes_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let (train_dir, test_dir) = (dir.path().join("train"), dir.path().join("test"));
    labelled_folder(&train_dir, 6);
    labelled_folder(&test_dir, 3);
    let train = scan_images(&train_dir).unwrap();
    let test = scan_images(&test_dir).unwrap();
    let (tr, te) = split_folders(&train, &test, &test_dir).unwrap();
    assert_eq!((tr.len(), te.len()), (12, 6));
    // Classes are indexed by sorted name in both: blue = 0, red = 1.
    assert!(te
        .iter()
        .all(|(f, c)| f.label.as_deref() == Some(["blue", "red"][*c])));
    std::fs::create_dir_all(test_dir.join("green")).unwrap();
    image::RgbImage::new(8, 8)
        .save(test_dir.join("green").join("g.png"))
        .unwrap();
    let test = scan_images(&test_dir).unwrap();
    let err = split_folders(&train, &test, &test_dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"green\"") && err.contains("no training images"),
        "{err}"
    );
}

#[test]
fn the_split_is_by_hash_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    labelled_folder(dir.path(), 7);
    let found = scan_images(dir.path()).unwrap();
    let mut reversed = found.clone();
    reversed.reverse();
    let (train, test) = split(&found).unwrap();
    let (train2, test2) = split(&reversed).unwrap();
    let names = |s: &[(&tinymim_train::data::FoundImage, usize)]| {
        let mut v: Vec<_> = s.iter().map(|(f, c)| (f.relative.clone(), *c)).collect();
        v.sort();
        v
    };
    assert_eq!(names(&test), names(&test2), "independent of listing order");
    assert_eq!(names(&train), names(&train2));
    assert_eq!(test.len(), 4, "⌈7/5⌉ = 2 per class");
    // The test images of a class are its smallest hashes.
    for class in 0..2 {
        let max_test = test
            .iter()
            .filter(|(_, c)| *c == class)
            .map(|(f, _)| f.hash)
            .max()
            .unwrap();
        assert!(train
            .iter()
            .filter(|(_, c)| *c == class)
            .all(|(f, _)| f.hash > max_test));
    }
}

#[test]
fn weighted_knn_votes_by_similarity() {
    // Two near neighbours of class 1 outweigh three distant ones of class 0 with k = 5.
    let unit = |a: f32| vec![a.cos(), a.sin()];
    let train = vec![unit(0.0), unit(0.05), unit(1.2), unit(1.3), unit(1.4)];
    let labels = vec![1, 1, 0, 0, 0];
    assert_eq!(knn_top1(&train, &labels, &[unit(0.02)], &[1], 5), 1.0);
    assert_eq!(knn_top1(&train, &labels, &[unit(1.35)], &[1], 5), 0.0);
}

#[test]
fn a_folder_without_class_folders_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    image::RgbImage::new(8, 8)
        .save(dir.path().join("a.png"))
        .unwrap();
    image::RgbImage::new(9, 8)
        .save(dir.path().join("b.png"))
        .unwrap();
    let model = tiny_student_export(&dir.path().join("run"));
    let err = probe(&config(model, dir.path().to_path_buf()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sub-folder per class"), "{err}");
}
