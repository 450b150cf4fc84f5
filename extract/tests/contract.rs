//! A teacher exported by `extract teacher` (the tiny MAE fixture) loads without a config from
//! its contract metadata, and its q/k/v give the relation maps its own graph computes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{s, Axis, Ix4};
use tinymim_extract::teacher::{Teacher, TeacherOptions};
use tinymim_formats::teacher::contract;
use tinymim_formats::view::sample_view;
use tinymim_formats::{relation_maps, RelationStore, SourceImage, ViewRecipe};

/// Exports the tiny MAE fixture (D 64, depth 4, 4 heads, patch 16, 64 px, target block 3).
fn tiny_teacher(dir: &Path) -> PathBuf {
    let out = dir.join("tiny.onnx");
    let checkpoint =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mae_tiny/mae_tiny.pth");
    let status = Command::new(env!("CARGO_BIN_EXE_extract"))
        .arg("teacher")
        .args([
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args([
            "--dim", "64", "--depth", "4", "--heads", "4", "--patch", "16",
        ])
        .args(["--image-size", "64", "--block", "3", "--arch", "mae-tiny"])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    out
}

#[test]
fn an_exported_teacher_needs_no_config_and_its_maps_match_its_own_graph() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = tiny_teacher(dir.path());
    // The maps as the `maps` encoding fetches them (`relation_maps`), and once more by name.
    let options = TeacherOptions {
        extra_outputs: vec![contract::R_QK.into(), contract::R_VV.into()],
        relation_maps: true,
        ..Default::default()
    };
    let mut teacher = Teacher::load(&onnx, None, &options).unwrap();
    let g = teacher.geometry();
    assert_eq!(
        (g.tokens, g.heads, g.dim, g.target_block, g.image_size),
        (17, 4, 64, 3, 64)
    );
    for encoding in tinymim_formats::Encoding::ALL {
        teacher.check_encoding(encoding).unwrap();
    }
    let (image, hash) = SourceImage::open(&common::photo("coffee.png")).unwrap();
    let view = sample_view(
        &ViewRecipe::default(),
        &hash,
        image.width(),
        image.height(),
        0,
    );
    let mut pixels = vec![0.0; teacher.pixels_per_view()];
    image
        .render(&view, g.image_size, &g.normalization, &mut pixels)
        .unwrap();
    let batch = teacher.run(&pixels, 1).unwrap();
    let ours = relation_maps(
        batch.q.slice(s![0, .., .., ..]),
        batch.k.slice(s![0, .., .., ..]),
        batch.v.slice(s![0, .., .., ..]),
    );
    let (fetched_qk, fetched_vv) = batch.maps.clone().expect("relation_maps fetches the maps");
    let by_name = batch
        .extra
        .iter()
        .map(|g| g.clone().into_dimensionality::<Ix4>().unwrap());
    for (m, graph) in [fetched_qk, fetched_vv]
        .into_iter()
        .chain(by_name)
        .enumerate()
    {
        let m = m % 2;
        let diff = (&ours.index_axis(Axis(0), m) - &graph.index_axis(Axis(0), 0))
            .iter()
            .fold(0.0f32, |a, d| a.max(d.abs()));
        assert!(diff < 1e-5, "map {m}: {diff}");
    }
}

#[test]
fn the_binary_extracts_ln1_from_an_exported_teacher_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let onnx = tiny_teacher(dir.path());
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for f in ["coffee.png", "rocket.jpg"] {
        std::fs::copy(common::photo(f), images.join(f)).unwrap();
    }
    let store = dir.path().join("r.zarr");
    let out = Command::new(env!("CARGO_BIN_EXE_extract"))
        .args([
            "--teacher",
            onnx.to_str().unwrap(),
            "--images",
            images.to_str().unwrap(),
        ])
        .args([
            "--out",
            store.to_str().unwrap(),
            "--views",
            "3",
            "--encoding",
            "ln1",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = RelationStore::open(&store).unwrap();
    assert_eq!(store.header().geometry.arch, "mae-tiny");
    let reader = store.reader().unwrap();
    assert_eq!(reader.len(), 6);
    let maps = reader.maps(5).unwrap();
    assert_eq!(maps.shape(), &[2, 4, 17, 17]);
    assert!(maps
        .sum_axis(Axis(3))
        .iter()
        .all(|s| (s - 1.0).abs() < 1e-3));
}
