//! `train probe`: a k-NN probe of frozen student features over a labelled image folder
//! (class = sub-folder), scoring both the class token and the mean-pooled patch tokens.
//!
//! - **Split**: per class, images sorted by blake3 hash; the first ⌈n/5⌉ are the test set, the
//!   rest the training set (a class with a single image only trains). Deterministic, and
//!   independent of file names and of the order the file system lists them in.
//! - **Pixels**: the centred square crop of the shorter side, rendered at the student's size
//!   with `SourceImage::render` (ImageNet normalisation), no augmentation.
//! - **Features**: [`Student::features`] (all blocks, final norm), L2-normalised.
//! - **Classifier**: cosine similarity to every training feature, the k nearest vote with
//!   weight exp(similarity / 0.07) (DINO's weighted k-NN); ties go to the first class in
//!   sorted order. Reports top-1 accuracy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;
use tinymim_formats::{Normalization, SourceImage, View};

use crate::config::VitConfig;
use crate::data::{scan_images, DataError, FoundImage};
use crate::error::TrainError;
use crate::export::CONFIG_FILE;
use crate::model::Student;
use crate::run::{Result, RunError};

/// Temperature of the k-NN vote weights exp(s / T).
pub const VOTE_TEMPERATURE: f64 = 0.07;

/// Images per forward pass.
const BATCH: usize = 32;

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// An exported `model.safetensors` (its `config.json` beside it).
    pub model: PathBuf,
    /// Labelled folder: one sub-folder per class.
    pub images: PathBuf,
    /// Neighbours that vote.
    pub k: usize,
    /// Device.
    pub device: Device,
}

/// The probe's result.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// Classes found.
    pub classes: usize,
    /// Training images.
    pub train: usize,
    /// Test images.
    pub test: usize,
    /// Neighbours that voted (k, at most the training set).
    pub k: usize,
    /// Top-1 accuracy with class-token features.
    pub top1_cls: f64,
    /// Top-1 accuracy with mean-pooled patch features.
    pub top1_mean: f64,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "k-NN (k = {}, weighted, cosine) over {} classes, {} train / {} test images: \
             top-1 {:.1}% with the class token, {:.1}% with mean-pooled patches",
            self.k,
            self.classes,
            self.train,
            self.test,
            100.0 * self.top1_cls,
            100.0 * self.top1_mean
        )
    }
}

/// Images with their class index.
pub type Labelled<'a> = Vec<(&'a FoundImage, usize)>;

/// One L2-normalised feature vector per image.
type Features = Vec<Vec<f32>>;

/// The deterministic split: `(train, test)`, each a list of (image, class index).
pub fn split(images: &[FoundImage]) -> Result<(Labelled<'_>, Labelled<'_>)> {
    let mut classes: BTreeMap<&str, Vec<&FoundImage>> = BTreeMap::new();
    for image in images {
        let label = image.label.as_deref().ok_or_else(|| {
            RunError::Setup(format!(
                "{}: the probe needs one sub-folder per class, and this image has none",
                image.path.display()
            ))
        })?;
        classes.entry(label).or_default().push(image);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (class, (_, mut members)) in classes.into_iter().enumerate() {
        members.sort_by_key(|m| m.hash);
        let n_test = if members.len() < 2 {
            0
        } else {
            members.len().div_ceil(5)
        };
        for (i, m) in members.into_iter().enumerate() {
            if i < n_test { &mut test } else { &mut train }.push((m, class));
        }
    }
    Ok((train, test))
}

/// Weighted k-NN top-1 accuracy: `train` and `test` are L2-normalised features `[n, D]`.
pub fn knn_top1(
    train: &[Vec<f32>],
    train_labels: &[usize],
    test: &[Vec<f32>],
    test_labels: &[usize],
    k: usize,
) -> f64 {
    if test.is_empty() {
        return 0.0;
    }
    let classes = train_labels.iter().max().map_or(0, |m| m + 1);
    let correct = test
        .iter()
        .zip(test_labels)
        .filter(|(query, &label)| {
            let mut sims: Vec<(f32, usize)> = train
                .iter()
                .zip(train_labels)
                .map(|(t, &l)| (t.iter().zip(query.iter()).map(|(a, b)| a * b).sum(), l))
                .collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut votes = vec![0f64; classes];
            for &(s, l) in sims.iter().take(k) {
                votes[l] += (f64::from(s) / VOTE_TEMPERATURE).exp();
            }
            let best = votes
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |acc, (c, &v)| if v > acc.1 { (c, v) } else { acc },
                );
            best.0 == label
        })
        .count();
    correct as f64 / test.len() as f64
}

/// The fields of an export's `config.json` the probe needs.
#[derive(Deserialize)]
struct ExportedConfig {
    dim: usize,
    depth: usize,
    heads: usize,
    mlp_dim: usize,
    patch: usize,
    image_size: usize,
    relation_heads: usize,
}

/// Loads an exported student (weights + the `config.json` beside them).
pub fn load_exported(model: &Path, device: &Device) -> Result<Student> {
    let config_path = model.with_file_name(CONFIG_FILE);
    let bad = |path: &Path, message: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        bad(
            &config_path,
            format!("cannot read the export's config: {e}"),
        )
    })?;
    let c: ExportedConfig = serde_json::from_str(&text)
        .map_err(|e| bad(&config_path, format!("not a tinymim export config: {e}")))?;
    let config = VitConfig {
        dim: c.dim,
        depth: c.depth,
        heads: c.heads,
        mlp_dim: c.mlp_dim,
        patch: c.patch,
        image_size: c.image_size,
        drop_path: 0.0,
    };
    let student = Student::frozen(&config, c.relation_heads, device)?;
    let tensors = candle_core::safetensors::load(model, device)
        .map_err(|e| bad(model, format!("not a safetensors file: {e}")))?;
    student.load_weights(&tensors, &model.display().to_string())?;
    Ok(student)
}

/// Class-token and mean-pooled features (L2-normalised) of `images`.
fn features(student: &Student, images: &[&FoundImage]) -> Result<(Features, Features)> {
    let size = student.config().image_size;
    let len = 3 * size * size;
    let (mut cls, mut mean) = (Vec::new(), Vec::new());
    for chunk in images.chunks(BATCH) {
        let mut pixels = vec![0f32; chunk.len() * len];
        for (image, dst) in chunk.iter().zip(pixels.chunks_mut(len)) {
            let (decoded, _) = SourceImage::open(&image.path).map_err(DataError::from)?;
            let view = centre_square(decoded.width(), decoded.height());
            decoded
                .render(&view, size as u32, &Normalization::IMAGENET, dst)
                .map_err(DataError::from)?;
        }
        let pixels = Tensor::from_vec(pixels, (chunk.len(), 3, size, size), student.device())?;
        let (c, m) = student.features(&pixels)?;
        cls.extend(normalized_rows(&c)?);
        mean.extend(normalized_rows(&m)?);
    }
    Ok((cls, mean))
}

/// The centred square crop of the shorter side.
fn centre_square(width: u32, height: u32) -> View {
    let side = width.min(height);
    View {
        x: (width - side) / 2,
        y: (height - side) / 2,
        w: side,
        h: side,
        flip: false,
    }
}

/// Rows of `[n, D]`, each scaled to unit L2 norm.
fn normalized_rows(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_vec2::<f32>()?
        .into_iter()
        .map(|mut row| {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= norm);
            row
        })
        .collect())
}

/// Runs the probe.
pub fn probe(config: &ProbeConfig) -> Result<ProbeReport> {
    if config.k == 0 {
        return Err(RunError::Setup("--k must be at least 1".to_string()));
    }
    let student = load_exported(&config.model, &config.device)?;
    let found = scan_images(&config.images)?;
    let (train, test) = split(&found)?;
    if train.is_empty() || test.is_empty() {
        return Err(RunError::Setup(format!(
            "{}: too few images for a probe ({} train, {} test); each class needs at least 2",
            config.images.display(),
            train.len(),
            test.len()
        )));
    }
    let classes = train
        .iter()
        .chain(&test)
        .map(|(_, c)| c + 1)
        .max()
        .unwrap_or(0);
    let (train_images, train_labels): (Vec<&FoundImage>, Vec<usize>) =
        train.iter().copied().unzip();
    let (test_images, test_labels): (Vec<&FoundImage>, Vec<usize>) = test.iter().copied().unzip();
    let (train_cls, train_mean) = features(&student, &train_images)?;
    let (test_cls, test_mean) = features(&student, &test_images)?;
    let k = config.k.min(train.len());
    Ok(ProbeReport {
        classes,
        train: train.len(),
        test: test.len(),
        k,
        top1_cls: knn_top1(&train_cls, &train_labels, &test_cls, &test_labels, k),
        top1_mean: knn_top1(&train_mean, &train_labels, &test_mean, &test_labels, k),
    })
}
