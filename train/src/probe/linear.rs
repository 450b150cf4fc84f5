//! The linear probe: multinomial logistic regression on frozen, standardised features.
//!
//! Recipe (fixed, so that scores are comparable across models and runs):
//! - **Standardisation**: each feature dimension centred and scaled by the training set's mean
//!   and standard deviation (a constant dimension is only centred); the test set uses the
//!   training statistics.
//! - **Model**: softmax regression with an intercept, fitted by L-BFGS (linfa-logistic over
//!   argmin: memory 10, More–Thuente line search) to the objective
//!   Σᵢ −log p(yᵢ | xᵢ) + α/2 ‖W‖² (intercept not penalised; scikit-learn's
//!   `LogisticRegression(C = 1/α)`), at most [`MAX_ITERATIONS`] iterations.
//! - **Weight decay**: α = λ·n for λ in [`WEIGHT_DECAYS`] (per image, so the choice does not
//!   depend on the training set's size), chosen by top-1 on a validation split of the training
//!   images (every [`VALIDATION_EVERY`]-th image of each class, in the probe's hash order), then
//!   refitted on all training images with the chosen λ. Ties go to the larger λ.

use linfa::traits::{Fit, Predict};
use linfa::Dataset;
use linfa_logistic::MultiLogisticRegression;
use ndarray_linfa::{Array1, Array2};

use crate::run::{Result, RunError};

/// Weight decays per training image that the validation split chooses from.
pub const WEIGHT_DECAYS: [f64; 5] = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1];

/// L-BFGS iterations per fit, at most (scikit-learn's default).
pub const MAX_ITERATIONS: u64 = 100;

/// Gradient-norm tolerance at which L-BFGS stops.
pub const GRADIENT_TOLERANCE: f64 = 1e-6;

/// Every this many training images of a class (in the probe's order), one is held out for
/// choosing the weight decay.
pub const VALIDATION_EVERY: usize = 5;

/// A fitted linear probe's result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearScore {
    /// Top-1 accuracy on the test set.
    pub top1: f64,
    /// The weight decay per image the validation split chose.
    pub weight_decay: f64,
}

/// Features `[n, D]` as rows, with class indices.
pub struct Labelled<'a> {
    /// One feature vector per image.
    pub features: &'a [Vec<f32>],
    /// Class index per image.
    pub labels: &'a [usize],
}

/// Standardises `train` and `test` by the training statistics, chooses the weight decay on a
/// validation split of `train` and returns the test top-1 of the model refitted on all of it.
pub fn linear_probe(train: &Labelled, test: &Labelled) -> Result<LinearScore> {
    let (x_train, x_test) = standardised(train.features, test.features);
    let (fit_rows, val_rows) = validation_split(train.labels);
    let take = |x: &Array2<f64>, rows: &[usize]| x.select(ndarray_linfa::Axis(0), rows);
    let labels_of = |rows: &[usize]| rows.iter().map(|&i| train.labels[i]).collect::<Vec<_>>();
    let mut best = (f64::NEG_INFINITY, WEIGHT_DECAYS[0]);
    if !val_rows.is_empty() && has_two_classes(&labels_of(&fit_rows)) {
        let (x_fit, x_val) = (take(&x_train, &fit_rows), take(&x_train, &val_rows));
        for &lambda in &WEIGHT_DECAYS {
            let weights = fit(&x_fit, &labels_of(&fit_rows), lambda)?;
            let score = accuracy(&weights.predict(&x_val), &labels_of(&val_rows));
            if score >= best.0 {
                best = (score, lambda);
            }
        }
    }
    let weights = fit(&x_train, train.labels, best.1)?;
    Ok(LinearScore {
        top1: accuracy(&weights.predict(&x_test), test.labels),
        weight_decay: best.1,
    })
}

/// A fitted softmax regression.
pub type Fitted = linfa_logistic::MultiFittedLogisticRegression<f64, usize>;

/// Fits softmax regression with weight decay `lambda` per image (α = λ·n) to `x`, `labels`.
pub fn fit(x: &Array2<f64>, labels: &[usize], lambda: f64) -> Result<Fitted> {
    let dataset = Dataset::new(x.clone(), Array1::from(labels.to_vec()));
    MultiLogisticRegression::default()
        .alpha(lambda * x.nrows() as f64)
        .max_iterations(MAX_ITERATIONS)
        .gradient_tolerance(GRADIENT_TOLERANCE)
        .fit(&dataset)
        .map_err(|e| RunError::Setup(format!("the linear probe's fit failed: {e}")))
}

/// `train` and `test` standardised by the training set's per-dimension mean and deviation.
pub fn standardised(train: &[Vec<f32>], test: &[Vec<f32>]) -> (Array2<f64>, Array2<f64>) {
    let dim = train.first().map_or(0, Vec::len);
    let to_array = |rows: &[Vec<f32>]| {
        Array2::from_shape_fn((rows.len(), dim), |(i, j)| f64::from(rows[i][j]))
    };
    let (mut a, mut b) = (to_array(train), to_array(test));
    let mean = a
        .mean_axis(ndarray_linfa::Axis(0))
        .unwrap_or_else(|| Array1::zeros(dim));
    let std = a.std_axis(ndarray_linfa::Axis(0), 0.0);
    for x in [&mut a, &mut b] {
        for mut row in x.rows_mut() {
            for ((v, m), s) in row.iter_mut().zip(&mean).zip(&std) {
                *v = (*v - m) / if *s > 1e-12 { *s } else { 1.0 };
            }
        }
    }
    (a, b)
}

/// Row indices `(fit, validation)`: every [`VALIDATION_EVERY`]-th image of each class (in the
/// given order) is held out, starting with its first.
fn validation_split(labels: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut seen = vec![0usize; classes];
    let (mut fit, mut val) = (Vec::new(), Vec::new());
    for (i, &c) in labels.iter().enumerate() {
        if seen[c].is_multiple_of(VALIDATION_EVERY) {
            &mut val
        } else {
            &mut fit
        }
        .push(i);
        seen[c] += 1;
    }
    (fit, val)
}

fn has_two_classes(labels: &[usize]) -> bool {
    labels.iter().any(|&l| l != labels[0])
}

fn accuracy(predicted: &Array1<usize>, labels: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    correct as f64 / labels.len() as f64
}
