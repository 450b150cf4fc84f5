//! `train probe` on a synthetic labelled folder: two classes of clearly different colours
//! are told apart by a k-NN on frozen features, and the train/test split is deterministic.

use std::path::Path;

use candle_core::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinymim_train::config::VitConfig;
use tinymim_train::data::scan_images;
use tinymim_train::export::export_student;
use tinymim_train::probe::{knn_top1, probe, split, ProbeConfig};
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
    let config = VitConfig {
        dim: 32,
        depth: 2,
        heads: 2,
        mlp_dim: 64,
        patch: 8,
        image_size: 32,
        drop_path: 0.0,
    };
    let student = Student::new(&config, 2, 3, &Device::Cpu).unwrap();
    export_student(dir, &student).unwrap();
    dir.join("model.safetensors")
}

#[test]
fn two_colour_classes_are_separated() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("labelled");
    labelled_folder(&images, 10);
    let model = tiny_student_export(&dir.path().join("run"));
    let report = probe(&ProbeConfig {
        model,
        images,
        k: 20,
        device: Device::Cpu,
    })
    .unwrap();
    assert_eq!(
        (report.classes, report.train, report.test, report.k),
        (2, 16, 4, 16)
    );
    assert!(report.top1_cls >= 0.99, "{report}");
    assert!(report.top1_mean >= 0.99, "{report}");
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
    let err = probe(&ProbeConfig {
        model,
        images: dir.path().to_path_buf(),
        k: 20,
        device: Device::Cpu,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("sub-folder per class"), "{err}");
}
