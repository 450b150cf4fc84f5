//! Relation maps and the decoding of every encoding, against a straightforward f64 reference
//! written here: LN1 output → qkv linear → head split → softmax(q·kᵀ/√d), softmax(v·vᵀ/√d).

mod store_fixture;

use half::f16;
use ndarray::{Array1, Array2, Array3, Array4};
use store_fixture::{geometry, Rng};
use tinymim_formats::{
    decode_maps, quant::ln1_int8_row, relation_maps, split_heads_qkv, Encoding, QkvParams,
    StoreError, Targets, TeacherGeometry,
};

/// f64 reference of one view: the block's normalised input, its qkv per head and its maps.
struct Reference {
    /// LN1 output X̂ `[N][D]`.
    ln1: Vec<Vec<f64>>,
    /// `[3][H][N][d]`.
    qkv: Vec<Vec<Vec<Vec<f64>>>>,
    /// `[2][H][N][N]`.
    maps: Vec<Vec<Vec<Vec<f64>>>>,
}

fn layer_norm(x: &[f64], gamma: &[f64], beta: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let inv = 1.0 / (var + 1e-6).sqrt();
    x.iter()
        .zip(gamma.iter().zip(beta))
        .map(|(v, (g, b))| (v - mean) * inv * g + b)
        .collect()
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// softmax over keys of a·bᵀ·d^-½, `[N][d]` each.
fn relation(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let scale = 1.0 / (a[0].len() as f64).sqrt();
    a.iter()
        .map(|ai| {
            let logits: Vec<f64> = b
                .iter()
                .map(|bj| scale * ai.iter().zip(bj).map(|(x, y)| x * y).sum::<f64>())
                .collect();
            softmax(&logits)
        })
        .collect()
}

/// The reference for input `x` `[N][D]` with LN1 (gamma, beta) and qkv (weight, bias).
fn reference(
    x: &[Vec<f64>],
    gamma: &[f64],
    beta: &[f64],
    qkv: &QkvParams,
    heads: usize,
) -> Reference {
    let dim = gamma.len();
    let d = dim / heads;
    let ln1: Vec<Vec<f64>> = x.iter().map(|row| layer_norm(row, gamma, beta)).collect();
    let linear: Vec<Vec<f64>> = ln1
        .iter()
        .map(|row| {
            (0..3 * dim)
                .map(|o| {
                    f64::from(qkv.bias[o])
                        + (0..dim)
                            .map(|i| row[i] * f64::from(qkv.weight[o * dim + i]))
                            .sum::<f64>()
                })
                .collect()
        })
        .collect();
    let split: Vec<Vec<Vec<Vec<f64>>>> = (0..3)
        .map(|s| {
            (0..heads)
                .map(|h| {
                    linear
                        .iter()
                        .map(|row| row[s * dim + h * d..s * dim + (h + 1) * d].to_vec())
                        .collect()
                })
                .collect()
        })
        .collect();
    let maps = vec![
        (0..heads)
            .map(|h| relation(&split[0][h], &split[1][h]))
            .collect(),
        (0..heads)
            .map(|h| relation(&split[2][h], &split[2][h]))
            .collect(),
    ];
    Reference {
        ln1,
        qkv: split,
        maps,
    }
}

/// A random view of a teacher of `geometry`: input rows, LN1 affine and qkv parameters.
fn random_view(g: &TeacherGeometry, seed: u64) -> (Reference, QkvParams) {
    let (n, dim) = (g.tokens as usize, g.dim as usize);
    let mut rng = Rng::new(seed);
    let x: Vec<Vec<f64>> = (0..n).map(|_| rng.vec(dim, 3.0)).collect();
    let gamma: Vec<f64> = rng.vec(dim, 0.5).into_iter().map(|v| 1.0 + v).collect();
    let beta = rng.vec(dim, 0.2);
    let bound = (6.0 / (4 * dim) as f64).sqrt(); // xavier-uniform of the [3D, D] matrix
    let params = QkvParams {
        weight: rng
            .vec(3 * dim * dim, bound)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        bias: rng
            .vec(3 * dim, 0.05)
            .into_iter()
            .map(|v| v as f32)
            .collect(),
    };
    (
        reference(&x, &gamma, &beta, &params, g.heads as usize),
        params,
    )
}

fn flatten4(v: &[Vec<Vec<Vec<f64>>>]) -> Vec<f64> {
    v.iter().flatten().flatten().flatten().copied().collect()
}

fn to_f16(v: &[f64]) -> Targets {
    Targets::Half(v.iter().map(|&x| f16::from_f64(x)).collect())
}

/// The `ln1-int8` row of an f64 LN1 output `[N][D]`.
fn to_int8(ln1: &[Vec<f64>]) -> Targets {
    let (n, d) = (ln1.len(), ln1[0].len());
    let x = Array2::from_shape_fn((n, d), |(i, c)| ln1[i][c] as f32);
    ln1_int8_row(x.view())
}

fn max_abs_diff(a: &Array4<f32>, b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).abs())
        .fold(0.0, f64::max)
}

fn geometry_with(tokens: u32, heads: u32, dim: u32) -> TeacherGeometry {
    TeacherGeometry {
        tokens,
        heads,
        dim,
        ..geometry()
    }
}

#[test]
fn relation_maps_match_the_f64_reference() {
    let g = geometry_with(7, 3, 24);
    let (r, _) = random_view(&g, 1);
    let (h, n, d) = (3, 7, 8);
    let qkv = flatten4(&r.qkv);
    let qkv32 =
        Array4::from_shape_vec((3, h, n, d), qkv.iter().map(|&x| x as f32).collect()).unwrap();
    // The reference recomputed from the f32-rounded inputs the function sees.
    let rounded: Vec<Vec<Vec<Vec<f64>>>> = (0..3)
        .map(|s| {
            (0..h)
                .map(|hh| {
                    (0..n)
                        .map(|t| (0..d).map(|c| f64::from(qkv32[[s, hh, t, c]])).collect())
                        .collect()
                })
                .collect()
        })
        .collect();
    let expected: Vec<Vec<Vec<Vec<f64>>>> = vec![
        (0..h)
            .map(|hh| relation(&rounded[0][hh], &rounded[1][hh]))
            .collect(),
        (0..h)
            .map(|hh| relation(&rounded[2][hh], &rounded[2][hh]))
            .collect(),
    ];
    let maps = relation_maps(
        qkv32.index_axis(ndarray::Axis(0), 0),
        qkv32.index_axis(ndarray::Axis(0), 1),
        qkv32.index_axis(ndarray::Axis(0), 2),
    );
    assert_eq!(maps.shape(), &[2, h, n, n]);
    let err = max_abs_diff(&maps, &flatten4(&expected));
    assert!(err < 1e-6, "max abs error {err:e}");
}

#[test]
fn relation_maps_stay_finite_for_huge_logits() {
    let mut rng = Rng::new(9);
    let q = Array3::from_shape_fn((2, 6, 4), |_| (300.0 * rng.uniform()) as f32);
    let maps = relation_maps(q.view(), q.view(), q.view());
    assert!(maps
        .iter()
        .all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
    for s in maps.sum_axis(ndarray::Axis(3)) {
        assert!((s - 1.0).abs() < 1e-5, "row sums to {s}");
    }
    // Each query's largest logit is against itself here (q = k), so its row is one-hot there.
    assert!(maps[[1, 0, 2, 2]] > 0.99);
}

#[test]
fn split_heads_qkv_matches_the_f64_reference() {
    let g = geometry_with(5, 2, 8);
    let (r, params) = random_view(&g, 2);
    let ln1: Vec<f32> = r.ln1.iter().flatten().map(|&x| x as f32).collect();
    let ln1 = Array2::from_shape_vec((5, 8), ln1).unwrap();
    let weight = Array2::from_shape_vec((24, 8), params.weight.clone()).unwrap();
    let bias = Array1::from(params.bias.clone());
    let split = split_heads_qkv(ln1.view(), weight.view(), bias.view(), 2);
    assert_eq!(split.shape(), &[3, 2, 5, 4]);
    let err = max_abs_diff(&split, &flatten4(&r.qkv));
    assert!(err < 1e-5, "max abs error {err:e}");
}

/// Decoding each encoding of the same view gives the f64 reference maps within the rounding of
/// the stored values. Tolerances (max abs error of a probability):
/// `maps` 2.5e-4 (half an f16 ulp just below 1); `qkv` and `ln1` 1e-3 (f16 rounding of
/// q, k, v or X̂ moves logits of size ~3 by ~1e-3 relative; measured up to 2.9e-4 here);
/// `ln1-int8` 2e-2 (half a step of 1/254 of a channel's range).
#[test]
fn every_encoding_decodes_to_the_reference_maps_within_float16_rounding() {
    for (g, seed) in [(geometry_with(5, 2, 8), 3), (geometry_with(50, 4, 64), 4)] {
        let (r, params) = random_view(&g, seed);
        let expected = flatten4(&r.maps);
        for (encoding, stored, tolerance) in [
            (Encoding::Maps, to_f16(&expected), 2.5e-4),
            (Encoding::Qkv, to_f16(&flatten4(&r.qkv)), 1e-3),
            (
                Encoding::Ln1,
                to_f16(&r.ln1.iter().flatten().copied().collect::<Vec<_>>()),
                1e-3,
            ),
            (Encoding::Ln1Int8, to_int8(&r.ln1), 2e-2),
        ] {
            let maps = decode_maps(encoding, &stored, &g, Some(&params)).unwrap();
            let (h, n) = (g.heads as usize, g.tokens as usize);
            assert_eq!(maps.shape(), &[2, h, n, n]);
            let err = max_abs_diff(&maps, &expected);
            assert!(err < tolerance, "{encoding} N={n}: max abs error {err:e}");
            assert!(
                err > 0.0,
                "{encoding}: float16 storage must round something"
            );
        }
    }
}

#[test]
fn decoding_refuses_bad_input_with_named_errors() {
    let g = geometry();
    let too_short = Targets::Half(vec![f16::ZERO; Encoding::Qkv.row_len(&g) - 1]);
    let err = decode_maps(Encoding::Qkv, &too_short, &g, None).unwrap_err();
    assert!(
        matches!(&err, StoreError::Length { what, expected: 120, got: 119 } if what.contains("qkv")),
        "{err}"
    );

    let ln1 = Targets::Half(vec![f16::ZERO; Encoding::Ln1.row_len(&g)]);
    let err = decode_maps(Encoding::Ln1, &ln1, &g, None).unwrap_err();
    assert!(matches!(err, StoreError::MissingQkvParams), "{err}");

    let bad = QkvParams {
        weight: vec![0.0; 10],
        bias: vec![0.0; 24],
    };
    let err = decode_maps(Encoding::Ln1, &ln1, &g, Some(&bad)).unwrap_err();
    assert!(err.to_string().contains("qkv weight"), "{err}");

    // float16 values where the encoding stores int8, and int8 values without their scales.
    let err = decode_maps(Encoding::Ln1Int8, &ln1, &g, Some(&qkv_params_of(&g))).unwrap_err();
    assert!(
        matches!(err, StoreError::Mismatch { .. }) && err.to_string().contains("int8"),
        "{err}"
    );
    let unscaled = Targets::Int8 {
        values: vec![0; Encoding::Ln1Int8.row_len(&g)],
        scales: Vec::new(),
    };
    let err = decode_maps(Encoding::Ln1Int8, &unscaled, &g, Some(&qkv_params_of(&g))).unwrap_err();
    assert!(
        matches!(&err, StoreError::Length { what, expected: 8, got: 0 } if what.contains("scales")),
        "{err}"
    );

    let empty = Targets::Half(Vec::new());
    let err = decode_maps(Encoding::Maps, &empty, &geometry_with(5, 3, 8), None).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::BadGeometry {
                heads: 3,
                dim: 8,
                ..
            }
        ),
        "{err}"
    );
}

/// Zero qkv parameters of the right shape for `g`.
fn qkv_params_of(g: &TeacherGeometry) -> QkvParams {
    let d = g.dim as usize;
    QkvParams {
        weight: vec![0.0; 3 * d * d],
        bias: vec![0.0; 3 * d],
    }
}
