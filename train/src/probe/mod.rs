//! `train probe`: how well frozen features separate the classes of a labelled image folder
//! (class = sub-folder), for a student, its random-initialised twin, the teacher and raw
//! pixels, measured by the same code on the same images and split.
//!
//! - **Split**: per class, images sorted by blake3 hash; the first ⌈n/5⌉ are the test set, the
//!   rest the training set (a class with a single image only trains). Deterministic, and
//!   independent of file names and of the order the file system lists them in. With a separate
//!   test folder (`--test-images`), all of `--images` trains and all of it tests; the class
//!   names must agree.
//! - **Pixels**: the centred square crop of the shorter side, rendered at each model's input
//!   size with `SourceImage::render` (the student's and twin's with ImageNet normalisation, the
//!   teacher's with its own), no augmentation.
//! - **Models and features**: the student and its twin (same architecture and initialisation
//!   seed, zero steps) at the input of the adaptive block (the representation the relation
//!   loss shapes) and after the final norm, each as the class token and as the mean of the
//!   patch tokens; the teacher at each tensor its config lists under `[[features]]` (else its
//!   target block's ln1), pooled the same way; raw pixels at [`PIXELS_SIZE`]² as the floor.
//! - **Classifiers**: [`knn`] (weighted k-NN on L2-normalised features) and [`linear`]
//!   (softmax regression on standardised features, weight decay chosen on a validation split).

pub mod knn;
pub mod linear;
pub mod teacher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tinymim_formats::{Normalization, SourceImage, View};

use crate::data::{scan_images, DataError, FoundImage};
use crate::export::load_with_twin;
use crate::model::{class_and_mean, Student};
use crate::run::{Result, RunError};
use knn::{knn_top1, l2_normalized};
use linear::linear_probe;
use teacher::TeacherFeatures;

/// Images per forward pass.
const BATCH: usize = 32;

/// Side of the raw-pixel baseline's rendering (3·16² = 768 features, about a 28×28 image's).
pub const PIXELS_SIZE: u32 = 16;

/// Report name of the probed student.
pub const STUDENT: &str = "student";
/// Report name of the student's random-initialised twin.
pub const TWIN: &str = "random-init twin";
/// Report name of the teacher.
pub const TEACHER: &str = "teacher";
/// Report name of the raw-pixel baseline.
pub const PIXELS: &str = "raw pixels";
/// Report name of the student's features entering the adaptive block.
pub const ADAPTIVE_INPUT: &str = "adaptive-block input";
/// Report name of the student's features after the final norm.
pub const FINAL_NORM: &str = "final norm";

/// The teacher to probe beside the student.
#[derive(Clone, Debug)]
pub struct TeacherSpec {
    /// Its ONNX model.
    pub model: PathBuf,
    /// Its config (third-party models), as for `extract --config`.
    pub config: Option<PathBuf>,
    /// Where ONNX Runtime runs it.
    pub device: tinymim_formats::DeviceSpec,
}

/// What to probe.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// An exported `model.safetensors` (its `config.json` beside it).
    pub model: PathBuf,
    /// Labelled folder: one sub-folder per class.
    pub images: PathBuf,
    /// A separate labelled test folder; without it, `images` is split.
    pub test_images: Option<PathBuf>,
    /// Neighbours that vote.
    pub k: usize,
    /// Device of the student and twin.
    pub device: Device,
    /// Seed of the random-initialised twin; default: the one the export records.
    pub twin_seed: Option<u64>,
    /// The teacher, when its own scores are wanted.
    pub teacher: Option<TeacherSpec>,
}

/// One model's features, pooled two ways, one row per image.
#[derive(Clone, Debug, Default)]
pub struct Pooled {
    /// The class token.
    pub cls: Vec<Vec<f32>>,
    /// The mean of the patch tokens.
    pub mean: Vec<Vec<f32>>,
}

impl Pooled {
    /// Appends one image's tokens `[N, D]` (class token first).
    pub fn push_tokens(&mut self, tokens: &[Vec<f32>]) {
        let dim = tokens[0].len();
        let mut mean = vec![0f32; dim];
        for t in &tokens[1..] {
            mean.iter_mut().zip(t).for_each(|(m, x)| *m += x);
        }
        let n = (tokens.len() - 1) as f32;
        mean.iter_mut().for_each(|m| *m /= n);
        self.cls.push(tokens[0].clone());
        self.mean.push(mean);
    }

    /// Appends a batch's tokens `[B, N, D]`.
    fn push_tensor(&mut self, tokens: &Tensor) -> Result<()> {
        let (cls, mean) = class_and_mean(tokens)?;
        self.cls.extend(cls.to_vec2::<f32>()?);
        self.mean.extend(mean.to_vec2::<f32>()?);
        Ok(())
    }
}

/// One score row: a model's features, one pooling, both classifiers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    /// [`STUDENT`], [`TWIN`], [`TEACHER`] or [`PIXELS`].
    pub model: String,
    /// Where the features come from ([`ADAPTIVE_INPUT`], [`FINAL_NORM`], a teacher tensor).
    pub features: String,
    /// `class token`, `mean patches` or `pixels`.
    pub pooling: String,
    /// k-NN top-1 accuracy.
    pub knn_top1: f64,
    /// Linear-probe top-1 accuracy.
    pub linear_top1: f64,
    /// The linear probe's chosen weight decay per image.
    pub weight_decay: f64,
}

/// The probe's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Classes found.
    pub classes: usize,
    /// Training images.
    pub train: usize,
    /// Test images.
    pub test: usize,
    /// Neighbours that voted (k, at most the training set).
    pub k: usize,
    /// The twin's initialisation seed.
    pub twin_seed: u64,
    /// Every score, in report order.
    pub rows: Vec<ProbeRow>,
}

impl ProbeReport {
    /// The row of `model`'s `features` with `pooling`.
    pub fn row(&self, model: &str, features: &str, pooling: &str) -> Option<&ProbeRow> {
        self.rows
            .iter()
            .find(|r| r.model == model && r.features == features && r.pooling == pooling)
    }

    /// `model`'s row with the best k-NN score.
    pub fn best(&self, model: &str) -> Option<&ProbeRow> {
        self.rows
            .iter()
            .filter(|r| r.model == model)
            .max_by(|a, b| a.knn_top1.total_cmp(&b.knn_top1))
    }

    /// The headline: the student's best k-NN row beside the twin's and the teacher's same
    /// features (the teacher's final and best rows), as one line.
    pub fn headline(&self) -> String {
        let Some(student) = self.best(STUDENT) else {
            return "no student rows".to_string();
        };
        let twin = self.row(TWIN, &student.features, &student.pooling);
        let mut line = format!(
            "student {:.1}% k-NN / {:.1}% linear ({}, {})",
            100.0 * student.knn_top1,
            100.0 * student.linear_top1,
            student.features,
            student.pooling
        );
        if let Some(t) = twin {
            line += &format!(
                "; random-init twin {:.1}% / {:.1}% ({:+.1} points k-NN)",
                100.0 * t.knn_top1,
                100.0 * t.linear_top1,
                100.0 * (student.knn_top1 - t.knn_top1)
            );
        }
        let teacher_final = self
            .rows
            .iter()
            .rfind(|r| r.model == TEACHER && r.pooling == student.pooling);
        if let (Some(f), Some(b)) = (teacher_final, self.best(TEACHER)) {
            line += &format!(
                "; teacher {:.1}% / {:.1}% ({}), best {:.1}% / {:.1}% ({}, {})",
                100.0 * f.knn_top1,
                100.0 * f.linear_top1,
                f.features,
                100.0 * b.knn_top1,
                100.0 * b.linear_top1,
                b.features,
                b.pooling
            );
        }
        if let Some(p) = self.rows.iter().find(|r| r.model == PIXELS) {
            line += &format!(
                "; raw pixels {:.1}% / {:.1}%",
                100.0 * p.knn_top1,
                100.0 * p.linear_top1
            );
        }
        line
    }
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "probe over {} classes, {} train / {} test images; k-NN: k = {}, weighted, cosine; \
             linear: softmax regression on standardised features (twin seed {})",
            self.classes, self.train, self.test, self.k, self.twin_seed
        )?;
        writeln!(
            f,
            "{:<18} {:<22} {:<13} {:>7} {:>7}  {:>8}",
            "model", "features", "pooling", "k-NN", "linear", "λ"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<18} {:<22} {:<13} {:>6.1}% {:>6.1}%  {:>8.0e}",
                r.model,
                r.features,
                r.pooling,
                100.0 * r.knn_top1,
                100.0 * r.linear_top1,
                r.weight_decay
            )?;
        }
        write!(f, "summary: {}", self.headline())
    }
}

/// Images with their class index.
pub type Labelled<'a> = Vec<(&'a FoundImage, usize)>;

/// The deterministic split: `(train, test)`, each a list of (image, class index).
pub fn split(images: &[FoundImage]) -> Result<(Labelled<'_>, Labelled<'_>)> {
    let mut classes: BTreeMap<&str, Vec<&FoundImage>> = BTreeMap::new();
    for image in images {
        let label = image.label.as_deref().ok_or_else(|| no_class(image))?;
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

/// The split of a test folder against a training folder: every image of each, the class
/// indices of the sorted union of names; a test class the training folder lacks is refused.
pub fn split_folders<'a>(
    train: &'a [FoundImage],
    test: &'a [FoundImage],
    test_root: &Path,
) -> Result<(Labelled<'a>, Labelled<'a>)> {
    let names: BTreeMap<&str, usize> = {
        let mut set: Vec<&str> = train.iter().filter_map(|i| i.label.as_deref()).collect();
        set.sort_unstable();
        set.dedup();
        set.into_iter().enumerate().map(|(i, n)| (n, i)).collect()
    };
    let label = |image: &'a FoundImage| -> Result<(&'a FoundImage, usize)> {
        let name = image.label.as_deref().ok_or_else(|| no_class(image))?;
        let class = names.get(name).ok_or_else(|| {
            RunError::Setup(format!(
                "{}: class {name:?} of the test folder {} has no training images",
                image.path.display(),
                test_root.display()
            ))
        })?;
        Ok((image, *class))
    };
    let mut train: Labelled = train.iter().map(label).collect::<Result<_>>()?;
    let mut test: Labelled = test.iter().map(label).collect::<Result<_>>()?;
    train.sort_by_key(|(i, c)| (*c, i.hash));
    test.sort_by_key(|(i, c)| (*c, i.hash));
    Ok((train, test))
}

fn no_class(image: &FoundImage) -> RunError {
    RunError::Setup(format!(
        "{}: the probe needs one sub-folder per class, and this image has none",
        image.path.display()
    ))
}

/// Features of `images` at both probe points for each of `models` (the student and its twin:
/// same input size), each image decoded and rendered once for all of them.
fn student_features(models: &[&Student], images: &[&FoundImage]) -> Result<Vec<[Pooled; 2]>> {
    let size = models[0].config().image_size;
    let mut out = vec![[Pooled::default(), Pooled::default()]; models.len()];
    for chunk in images.chunks(BATCH) {
        let pixels = render_batch(chunk, size as u32, &Normalization::IMAGENET)?;
        let pixels = Tensor::from_vec(pixels, (chunk.len(), 3, size, size), models[0].device())?;
        for (model, [adaptive_input, final_norm]) in models.iter().zip(&mut out) {
            let tokens = model.features(&pixels)?;
            adaptive_input.push_tensor(&tokens.adaptive_input)?;
            final_norm.push_tensor(&tokens.final_norm)?;
        }
    }
    Ok(out)
}

/// `images` as normalised pixels `[B, 3, size, size]` (the centred square, no augmentation).
pub fn render_batch(
    images: &[&FoundImage],
    size: u32,
    normalization: &Normalization,
) -> Result<Vec<f32>> {
    let len = 3 * (size as usize).pow(2);
    let mut pixels = vec![0f32; images.len() * len];
    images
        .par_iter()
        .zip(pixels.par_chunks_mut(len))
        .try_for_each(|(image, dst)| -> Result<()> {
            let (decoded, _) = SourceImage::open(&image.path).map_err(DataError::from)?;
            let view = centre_square(decoded.width(), decoded.height());
            decoded
                .render(&view, size, normalization, dst)
                .map_err(DataError::from)?;
            Ok(())
        })?;
    Ok(pixels)
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

/// One model's features at one point with one pooling, for the training and test images.
struct FeatureSet {
    model: String,
    features: String,
    pooling: String,
    train: Vec<Vec<f32>>,
    test: Vec<Vec<f32>>,
}

impl FeatureSet {
    fn new(
        model: &str,
        features: &str,
        pooling: &str,
        train: Vec<Vec<f32>>,
        test: Vec<Vec<f32>>,
    ) -> FeatureSet {
        FeatureSet {
            model: model.to_string(),
            features: features.to_string(),
            pooling: pooling.to_string(),
            train,
            test,
        }
    }

    /// Scores the set with both classifiers.
    fn score(
        &self,
        (train_labels, test_labels): (&[usize], &[usize]),
        k: usize,
    ) -> Result<ProbeRow> {
        let knn = knn_top1(
            &l2_normalized(&self.train),
            train_labels,
            &l2_normalized(&self.test),
            test_labels,
            k,
        );
        let linear = linear_probe(
            &linear::Labelled {
                features: &self.train,
                labels: train_labels,
            },
            &linear::Labelled {
                features: &self.test,
                labels: test_labels,
            },
        )?;
        Ok(ProbeRow {
            model: self.model.clone(),
            features: self.features.clone(),
            pooling: self.pooling.clone(),
            knn_top1: knn,
            linear_top1: linear.top1,
            weight_decay: linear.weight_decay,
        })
    }
}

/// Runs the probe.
pub fn probe(config: &ProbeConfig) -> Result<ProbeReport> {
    if config.k == 0 {
        return Err(RunError::Setup("--k must be at least 1".to_string()));
    }
    let (student, twin, twin_seed) =
        load_with_twin(&config.model, &config.device, config.twin_seed)?;
    let found = scan_images(&config.images)?;
    let found_test = match &config.test_images {
        Some(dir) => Some(scan_images(dir)?),
        None => None,
    };
    let (train, test) = match (&found_test, &config.test_images) {
        (Some(test), Some(dir)) => split_folders(&found, test, dir)?,
        _ => split(&found)?,
    };
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
    if classes < 2 {
        return Err(RunError::Setup(format!(
            "{}: a probe needs at least 2 classes (sub-folders), found {classes}",
            config.images.display()
        )));
    }
    let (train_images, train_labels): (Vec<&FoundImage>, Vec<usize>) =
        train.iter().copied().unzip();
    let (test_images, test_labels): (Vec<&FoundImage>, Vec<usize>) = test.iter().copied().unzip();
    let k = config.k.min(train.len());

    // Features first (each model once over all images), then every score in parallel.
    let mut sets: Vec<FeatureSet> = Vec::new();
    let mut add_pooled = |model: &str, names: &[String], train: Vec<Pooled>, test: Vec<Pooled>| {
        for ((name, a), b) in names.iter().zip(train).zip(test) {
            sets.push(FeatureSet::new(model, name, "class token", a.cls, b.cls));
            sets.push(FeatureSet::new(model, name, "mean patches", a.mean, b.mean));
        }
    };
    let points = [ADAPTIVE_INPUT.to_string(), FINAL_NORM.to_string()];
    let models = [&student, &twin];
    let on_train = student_features(&models, &train_images)?;
    let on_test = student_features(&models, &test_images)?;
    for ((name, a), b) in [STUDENT, TWIN].into_iter().zip(on_train).zip(on_test) {
        add_pooled(name, &points, a.into(), b.into());
    }
    if let Some(spec) = &config.teacher {
        let mut teacher = TeacherFeatures::load(&spec.model, spec.config.as_deref(), spec.device)?;
        let train = teacher.features(&train_images)?;
        let test = teacher.features(&test_images)?;
        add_pooled(TEACHER, teacher.names(), train, test);
    }
    let raw = |images: &[&FoundImage]| -> Result<Vec<Vec<f32>>> {
        let len = 3 * (PIXELS_SIZE as usize).pow(2);
        Ok(render_batch(images, PIXELS_SIZE, &Normalization::IMAGENET)?
            .chunks(len)
            .map(<[f32]>::to_vec)
            .collect())
    };
    let pixels_name = format!("{PIXELS_SIZE}×{PIXELS_SIZE} RGB");
    sets.push(FeatureSet::new(
        PIXELS,
        &pixels_name,
        "pixels",
        raw(&train_images)?,
        raw(&test_images)?,
    ));
    let rows = sets
        .par_iter()
        .map(|set| set.score((&train_labels, &test_labels), k))
        .collect::<Result<Vec<_>>>()?;
    Ok(ProbeReport {
        classes,
        train: train.len(),
        test: test.len(),
        k,
        twin_seed,
        rows,
    })
}
