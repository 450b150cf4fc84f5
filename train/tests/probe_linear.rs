//! The linear probe against scikit-learn on a small fixed problem (fixture made by
//! `tests/fixtures/make_linear_fixture.py`), and its standardisation.

use ndarray_linfa::Array2;
use serde::Deserialize;
use tinymim_train::probe::linear::{fit, linear_probe, standardised, Labelled};

#[derive(Deserialize)]
struct Fixture {
    alpha: f64,
    x: Vec<Vec<f64>>,
    y: Vec<usize>,
    x_test: Vec<Vec<f64>>,
    coef: Vec<Vec<f64>>,
    intercept: Vec<f64>,
    predicted: Vec<usize>,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/linear_probe.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn array(rows: &[Vec<f64>]) -> Array2<f64> {
    Array2::from_shape_fn((rows.len(), rows[0].len()), |(i, j)| rows[i][j])
}

#[test]
fn softmax_regression_matches_scikit_learn() {
    let f = fixture();
    let x = array(&f.x);
    // fit() takes the weight decay per image: α = λ·n.
    let fitted = fit(&x, &f.y, f.alpha / x.nrows() as f64).unwrap();
    let w = fitted.params(); // [dim, classes]
    let mut worst = 0f64;
    for (c, row) in f.coef.iter().enumerate() {
        for (j, expected) in row.iter().enumerate() {
            worst = worst.max((w[[j, c]] - expected).abs());
        }
    }
    assert!(
        worst < 1e-4,
        "weights differ from scikit-learn's by {worst:e}"
    );
    // The intercepts are not penalised, so only their differences are determined: compare
    // them centred.
    let centred = |v: Vec<f64>| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.into_iter().map(|x| x - m).collect::<Vec<_>>()
    };
    let ours = centred(fitted.intercept().to_vec());
    for (a, b) in ours.iter().zip(centred(f.intercept.clone())) {
        assert!(
            (a - b).abs() < 1e-4,
            "intercepts {ours:?} vs {:?}",
            f.intercept
        );
    }
    use linfa::traits::Predict;
    let predicted = fitted.predict(&array(&f.x_test));
    assert_eq!(predicted.to_vec(), f.predicted);
}

#[test]
fn standardisation_uses_the_training_statistics() {
    let train = vec![vec![1.0f32, 5.0], vec![3.0, 5.0]];
    let test = vec![vec![5.0f32, 7.0]];
    let (a, b) = standardised(&train, &test);
    // Column 0: mean 2, deviation 1; column 1 is constant: centred only.
    assert_eq!(a.row(0).to_vec(), vec![-1.0, 0.0]);
    assert_eq!(a.row(1).to_vec(), vec![1.0, 0.0]);
    assert_eq!(b.row(0).to_vec(), vec![3.0, 2.0]);
}

#[test]
fn the_probe_finds_the_one_direction_that_separates_two_classes() {
    // Two classes apart along dimension 0 only, among noise dimensions of 20× the scale.
    let noise =
        |i: usize, j: usize| (((i * 7919 + j * 104_729) % 1000) as f32 / 1000.0 - 0.5) * 40.0;
    let make = |n: usize, offset: usize| {
        (0..n)
            .map(|i| {
                let class = i % 2;
                let mut row: Vec<f32> = (0..8).map(|j| noise(i + offset, j)).collect();
                row[0] = class as f32 * 2.0 - 1.0 + 0.1 * noise(i + offset, 99) / 20.0;
                (row, class)
            })
            .unzip::<_, _, Vec<_>, Vec<_>>()
    };
    let (x_train, y_train) = make(60, 0);
    let (x_test, y_test) = make(40, 1000);
    let score = linear_probe(
        &Labelled {
            features: &x_train,
            labels: &y_train,
        },
        &Labelled {
            features: &x_test,
            labels: &y_test,
        },
    )
    .unwrap();
    assert_eq!(score.top1, 1.0);
}
