//! Shared by the loop tests and the training benchmark: synthetic source images, a tiny
//! random-weight ViT teacher saved as timm-named safetensors, and a relation store of its
//! targets written with formats' `SegmentWriter` (what `extract` would write for that teacher).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use half::f16;
use tinymim_formats::view::sample_views;
use tinymim_formats::{
    content_key, Encoding, Hash32, ImageEntry, RelationStore, RowMeta, SourceImage, SourceRoot,
    StoreHeader, Targets, ViewRecipe,
};
use tinymim_train::config::VitConfig;
use tinymim_train::data::scan_images;
use tinymim_train::export::export_student;
use tinymim_train::online::{OnlineTeacher, TeacherOptions};
use tinymim_train::run::{RunConfig, SourceConfig};
use tinymim_train::Student;

/// The tiny teacher: D 32, 2 blocks, 2 heads, patch 8 at 32 px (N = 17).
pub fn teacher_config() -> VitConfig {
    VitConfig {
        dim: 32,
        depth: 2,
        heads: 2,
        mlp_dim: 64,
        patch: 8,
        image_size: 32,
        drop_path: 0.0,
    }
}

/// The tiny student: D 24, 2 blocks, 3 heads (the last block gets the teacher's 2), same N.
pub fn student_config() -> VitConfig {
    VitConfig {
        dim: 24,
        depth: 2,
        heads: 3,
        mlp_dim: 96,
        patch: 8,
        image_size: 32,
        drop_path: 0.1,
    }
}

/// Teacher heads.
pub const TEACHER_HEADS: usize = 2;

/// Writes `count` synthetic RGB PNGs of different sizes with smooth gradients and a bright
/// square (so views differ), named `img{i}.png`, into `dir`.
pub fn write_images(dir: &Path, count: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..count)
        .map(|i| {
            let (w, h) = (64 + 16 * i as u32, 48 + 8 * (i as u32 % 3));
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let inside = (x / 12 + y / 12 + i as u32).is_multiple_of(3);
                let base = [
                    (x * 255 / w) as u8,
                    (y * 255 / h) as u8,
                    ((x + y + 40 * i as u32) % 256) as u8,
                ];
                image::Rgb(if inside {
                    [250, 240, 30 * i as u8]
                } else {
                    base
                })
            });
            let path = dir.join(format!("img{i}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

/// Saves a random-weight teacher (seed `seed`) as `dir/model.safetensors` + `config.json`.
pub fn write_teacher(dir: &Path, config: &VitConfig, heads: usize, seed: u64) -> PathBuf {
    let teacher = Student::new(config, heads, seed, &Device::Cpu).unwrap();
    export_student(dir, &teacher).unwrap();
    dir.join("model.safetensors")
}

/// A teacher with `heads` heads loaded as the online target source.
pub fn load_teacher(path: &Path, heads: usize) -> OnlineTeacher {
    OnlineTeacher::load(path, &teacher_options(heads), &Device::Cpu).unwrap()
}

/// Options of a tiny teacher with `heads` heads.
pub fn teacher_options(heads: usize) -> TeacherOptions {
    TeacherOptions {
        heads: Some(heads),
        target_block: None,
        image_size: None,
    }
}

/// Writes a `maps` store of the teacher's targets for `views` views of every image in
/// `images` (drawn with `seed`), recording `images` as the source root.
pub fn write_store(
    store: &Path,
    images: &Path,
    teacher_path: &Path,
    heads: usize,
    views: u32,
    seed: u64,
) {
    let teacher = load_teacher(teacher_path, heads);
    let geometry = teacher.geometry().clone();
    let recipe = ViewRecipe {
        seed,
        ..ViewRecipe::default()
    };
    let header = StoreHeader {
        teacher: Hash32::of_file(teacher_path).unwrap(),
        geometry: geometry.clone(),
        encoding: Encoding::Maps,
        recipe: recipe.clone(),
    };
    let opened = RelationStore::create_or_open(store, &header, None).unwrap();
    let found = scan_images(images).unwrap();
    let mut writer = opened
        .begin_segment(found.len() as u64 * u64::from(views))
        .unwrap();
    let size = geometry.image_size;
    for image in &found {
        writer
            .add_image(ImageEntry {
                hash: image.hash,
                path: image.relative.clone(),
                size: image.size,
                label: image.label.clone(),
                modified: None,
            })
            .unwrap();
        let (decoded, _) = SourceImage::open(&image.path).unwrap();
        for view in sample_views(&recipe, &image.hash, image.width, image.height, views) {
            let mut pixels = vec![0f32; 3 * (size as usize).pow(2)];
            decoded
                .render(&view, size, &geometry.normalization, &mut pixels)
                .unwrap();
            let s = size as usize;
            let pixels = Tensor::from_vec(pixels, (1, 3, s, s), &Device::Cpu).unwrap();
            let (qk, vv) = teacher.maps(&pixels).unwrap();
            let maps = Tensor::stack(&[qk.squeeze(0).unwrap(), vv.squeeze(0).unwrap()], 0).unwrap();
            let targets = Targets::Half(
                maps.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .into_iter()
                    .map(f16::from_f32)
                    .collect(),
            );
            let key = content_key(
                &header.teacher,
                geometry.target_block,
                Encoding::Maps,
                &image.hash,
                &view,
            );
            writer
                .push(
                    RowMeta {
                        key,
                        image: image.hash,
                        view,
                    },
                    &targets,
                )
                .unwrap();
        }
    }
    writer
        .commit(
            serde_json::to_value(SourceRoot {
                source_root: images.to_path_buf(),
            })
            .unwrap(),
        )
        .unwrap();
}

/// A small world: 3 images, a teacher, a store of 2 views per image (seed 5).
pub struct World {
    /// Keeps the folder alive.
    pub dir: tempfile::TempDir,
    /// Source images.
    pub images: PathBuf,
    /// Teacher weights.
    pub teacher: PathBuf,
    /// The relation store.
    pub store: PathBuf,
}

/// Seed of the world's views and of the runs on it.
pub const SEED: u64 = 5;

impl World {
    /// Builds it in a fresh temporary folder.
    pub fn new(images: usize, views: u32) -> World {
        let dir = tempfile::tempdir().unwrap();
        let image_dir = dir.path().join("images");
        write_images(&image_dir, images);
        let teacher = write_teacher(
            &dir.path().join("teacher"),
            &teacher_config(),
            TEACHER_HEADS,
            11,
        );
        let store = dir.path().join("relations.zarr");
        write_store(&store, &image_dir, &teacher, TEACHER_HEADS, views, SEED);
        World {
            images: image_dir,
            teacher,
            store,
            dir,
        }
    }

    /// A run on the store: batch 2, no warm-up, seed [`SEED`], no progress bar.
    pub fn cache_run(&self, out: &str) -> RunConfig {
        RunConfig {
            source: SourceConfig::Cache {
                store: self.store.clone(),
                relation_heads: None,
            },
            images: None,
            student: student_config(),
            epochs: 2,
            batch: 2,
            fit_batch: false,
            accum: 1,
            base_lr: 0.2,
            warmup_epochs: 0.0,
            weight_decay: 0.05,
            clip: None,
            seed: SEED,
            jitter: true,
            group_views: false,
            checkpoint_every: None,
            max_steps: None,
            resume: false,
            device: Device::Cpu,
            out: self.dir.path().join(out),
            progress: false,
            prefetch: 2,
            precision: tinymim_train::Precision::F32,
        }
    }

    /// The same run with the teacher online (2 views per image).
    pub fn online_run(&self, out: &str) -> RunConfig {
        RunConfig {
            source: SourceConfig::Online {
                teacher: self.teacher.clone(),
                options: teacher_options(TEACHER_HEADS),
                views: 2,
            },
            images: Some(self.images.clone()),
            ..self.cache_run(out)
        }
    }
}

/// Every tensor of a safetensors file, flattened to f32, by name.
pub fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut tensors: Vec<(String, Vec<f32>)> = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}
