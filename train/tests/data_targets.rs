//! Stored targets decode to the same relation maps in candle as in formats' CPU reference
//! (`decode_maps`) and as in an f64 implementation of TINYMIM.md written here, for every
//! encoding, and with relation heads other than the teacher's (`--relation-heads`).

use candle_core::Device;
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinymim_formats::{
    decode_maps, Encoding, Hash32, Normalization, QkvParams, StoreHeader, Targets, TeacherGeometry,
    ViewRecipe,
};
use tinymim_train::data::TargetDecoder;

const H: usize = 3;
const N: usize = 7;
const D: usize = 12;

fn header(encoding: Encoding) -> StoreHeader {
    StoreHeader {
        teacher: Hash32::of_bytes(b"t"),
        geometry: TeacherGeometry {
            arch: "test".into(),
            tokens: N as u32,
            heads: H as u32,
            dim: D as u32,
            target_block: 1,
            patch: 2,
            image_size: 4,
            normalization: Normalization::IMAGENET,
        },
        encoding,
        recipe: ViewRecipe::default(),
    }
}

/// f64 reference: softmax over keys of a·bᵀ·d^-½ for one head, a and b `[N, d]`.
fn softmax_rows(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<f64> {
    let scale = (a[0].len() as f64).powf(-0.5);
    let mut out = Vec::new();
    for ai in a {
        let logits: Vec<f64> = b
            .iter()
            .map(|bj| ai.iter().zip(bj).map(|(x, y)| x * y).sum::<f64>() * scale)
            .collect();
        let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
        out.extend(logits.iter().map(|l| (l - max).exp() / sum));
    }
    out
}

/// f64 reference maps `[2, H, N, N]` of q, k, v given as `[H][N][d]`.
fn reference_maps(q: &[Vec<Vec<f64>>], k: &[Vec<Vec<f64>>], v: &[Vec<Vec<f64>>]) -> Vec<f64> {
    let mut out = Vec::new();
    for (q, k) in q.iter().zip(k).take(H) {
        out.extend(softmax_rows(q, k));
    }
    for v in v.iter().take(H) {
        out.extend(softmax_rows(v, v));
    }
    out
}

/// A random qkv weight `[3D, D]` in ±0.5 and bias `[3D]` in ±0.2.
fn random_qkv_params(rng: &mut ChaCha8Rng) -> QkvParams {
    QkvParams {
        weight: (0..3 * D * D)
            .map(|_| rng.random_range(-0.5..0.5))
            .collect(),
        bias: (0..3 * D).map(|_| rng.random_range(-0.2..0.2)).collect(),
    }
}

fn random_f16(n: usize, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32(rng.random_range(-scale..scale)))
        .collect()
}

/// Candle's maps of a batch of rows, flattened per row as `[2, H, N, N]`.
fn candle_rows(decoder: &TargetDecoder, raw: &Targets, rows: usize) -> Vec<Vec<f32>> {
    let (qk, vv) = decoder.decode(raw).unwrap();
    assert_eq!(qk.dims(), &[rows, H, N, N]);
    let qk: Vec<f32> = qk.flatten_all().unwrap().to_vec1().unwrap();
    let vv: Vec<f32> = vv.flatten_all().unwrap().to_vec1().unwrap();
    let per = H * N * N;
    (0..rows)
        .map(|r| [&qk[r * per..(r + 1) * per], &vv[r * per..(r + 1) * per]].concat())
        .collect()
}

fn max_diff(a: &[f32], b: impl IntoIterator<Item = f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}

/// Splits `[3, H, N, d]` values (f64) into q, k, v as `[H][N][d]`.
fn split3(values: &[f64]) -> Vec<Vec<Vec<Vec<f64>>>> {
    let d = D / H;
    (0..3)
        .map(|t| {
            (0..H)
                .map(|h| {
                    (0..N)
                        .map(|n| {
                            let base = ((t * H + h) * N + n) * d;
                            values[base..base + d].to_vec()
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// Probabilities are at most 1 and computed in f32: 1e-6 is a few f32 roundings.
const TOLERANCE: f64 = 2e-6;

#[test]
fn qkv_rows_decode_like_the_references() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let h = header(Encoding::Qkv);
    let len = Encoding::Qkv.row_len(&h.geometry);
    let raw = random_f16(2 * len, 3.0, &mut rng);
    let decoder = TargetDecoder::new(&h, None, None, &Device::Cpu).unwrap();
    for (r, got) in candle_rows(&decoder, &Targets::Half(raw.clone()), 2)
        .iter()
        .enumerate()
    {
        let row = &raw[r * len..(r + 1) * len];
        let cpu = decode_maps(
            Encoding::Qkv,
            &Targets::Half(row.to_vec()),
            &h.geometry,
            None,
        )
        .unwrap();
        assert!(max_diff(got, cpu.iter().map(|&x| f64::from(x))) < TOLERANCE);
        let values: Vec<f64> = row.iter().map(|x| f64::from(x.to_f32())).collect();
        let qkv = split3(&values);
        assert!(max_diff(got, reference_maps(&qkv[0], &qkv[1], &qkv[2])) < TOLERANCE);
    }
}

#[test]
fn ln1_rows_decode_like_the_references() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let h = header(Encoding::Ln1);
    let params = random_qkv_params(&mut rng);
    let len = Encoding::Ln1.row_len(&h.geometry);
    let raw = random_f16(2 * len, 2.0, &mut rng);
    let decoder = TargetDecoder::new(&h, Some(&params), None, &Device::Cpu).unwrap();
    let d = D / H;
    for (r, got) in candle_rows(&decoder, &Targets::Half(raw.clone()), 2)
        .iter()
        .enumerate()
    {
        let row = &raw[r * len..(r + 1) * len];
        let row_targets = Targets::Half(row.to_vec());
        let cpu = decode_maps(Encoding::Ln1, &row_targets, &h.geometry, Some(&params)).unwrap();
        assert!(max_diff(got, cpu.iter().map(|&x| f64::from(x))) < TOLERANCE);
        // f64: qkv = X̂Wᵀ + b, head h = channels [h·d, (h+1)·d) of each of q, k, v.
        let x: Vec<f64> = row.iter().map(|v| f64::from(v.to_f32())).collect();
        let mut split = vec![0.0; 3 * H * N * d];
        for n in 0..N {
            for o in 0..3 * D {
                let dot: f64 = (0..D)
                    .map(|i| x[n * D + i] * f64::from(params.weight[o * D + i]))
                    .sum();
                let (t, c) = (o / D, o % D);
                split[((t * H + c / d) * N + n) * d + c % d] = dot + f64::from(params.bias[o]);
            }
        }
        let qkv = split3(&split);
        assert!(max_diff(got, reference_maps(&qkv[0], &qkv[1], &qkv[2])) < 1e-5);
    }
}

#[test]
fn maps_rows_pass_through_and_a_short_batch_is_an_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let h = header(Encoding::Maps);
    let len = Encoding::Maps.row_len(&h.geometry);
    let raw = random_f16(3 * len, 1.0, &mut rng);
    let decoder = TargetDecoder::new(&h, None, None, &Device::Cpu).unwrap();
    for (r, got) in candle_rows(&decoder, &Targets::Half(raw.clone()), 3)
        .iter()
        .enumerate()
    {
        let want = raw[r * len..(r + 1) * len]
            .iter()
            .map(|x| f64::from(x.to_f32()));
        assert_eq!(max_diff(got, want), 0.0);
    }
    let short = Targets::Half(raw[..len + 5].to_vec());
    let err = decoder.decode(&short).unwrap_err().to_string();
    assert!(err.contains("maps"), "{err}");
    let int8 = Targets::Int8 {
        values: vec![0; len],
        scales: vec![],
    };
    let err = decoder.decode(&int8).unwrap_err().to_string();
    assert!(err.contains("int8") && err.contains("float16"), "{err}");
    assert!(TargetDecoder::new(&header(Encoding::Ln1), None, None, &Device::Cpu).is_err());
}

/// f64 reference maps `[2, heads, N, N]` of q, k, v given per token as `[3][N][D]`, split into
/// `heads` heads of width D / heads (head g = channels [g·d', (g+1)·d')).
fn maps_with_heads(x: &[Vec<Vec<f64>>], heads: usize) -> Vec<f64> {
    let w = D / heads;
    let head = |t: usize, g: usize| -> Vec<Vec<f64>> {
        x[t].iter()
            .map(|token| token[g * w..(g + 1) * w].to_vec())
            .collect()
    };
    let mut out = Vec::new();
    for g in 0..heads {
        out.extend(softmax_rows(&head(0, g), &head(1, g)));
    }
    for g in 0..heads {
        out.extend(softmax_rows(&head(2, g), &head(2, g)));
    }
    out
}

/// One row's maps from candle, decoded with `heads` relation heads, as `[2, heads, N, N]`.
fn candle_row(decoder: &TargetDecoder, raw: &Targets, heads: usize) -> Vec<f32> {
    let (qk, vv) = decoder.decode(raw).unwrap();
    assert_eq!(qk.dims(), &[1, heads, N, N]);
    let qk: Vec<f32> = qk.flatten_all().unwrap().to_vec1().unwrap();
    let vv: Vec<f32> = vv.flatten_all().unwrap().to_vec1().unwrap();
    [qk, vv].concat()
}

/// f64 q, k, v `[3][N][D]` = X̂Wᵀ + b of one row X̂ `[N, D]` (row-major).
fn project(x: &[f64], params: &QkvParams) -> Vec<Vec<Vec<f64>>> {
    (0..3)
        .map(|t| {
            (0..N)
                .map(|n| {
                    (0..D)
                        .map(|c| {
                            let o = t * D + c;
                            let dot: f64 = (0..D)
                                .map(|i| x[n * D + i] * f64::from(params.weight[o * D + i]))
                                .sum();
                            dot + f64::from(params.bias[o])
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

#[test]
fn ln1_int8_rows_decode_like_the_references_with_every_byte_value() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let h = header(Encoding::Ln1Int8);
    let params = random_qkv_params(&mut rng);
    // Two rows: random bytes, and the extremes −128, −127, −1, 0, 1, 127 in every channel.
    let len = N * D;
    let mut values: Vec<i8> = (0..len).map(|_| rng.random::<i8>()).collect();
    let extremes = [-128i8, -127, -1, 0, 1, 127];
    values.extend((0..len).map(|i| extremes[(i / D + i) % extremes.len()]));
    let scales: Vec<f16> = (0..2 * D)
        .map(|_| f16::from_f32(rng.random_range(0.002..0.03)))
        .collect();
    let targets = Targets::Int8 {
        values: values.clone(),
        scales: scales.clone(),
    };
    for heads in [H, 2, 6] {
        let decoder = TargetDecoder::new(&h, Some(&params), Some(heads), &Device::Cpu).unwrap();
        let (qk, _) = decoder.decode(&targets).unwrap();
        assert_eq!(qk.dims(), &[2, heads, N, N]);
        for r in 0..2 {
            // f64: X̂ = value · scale of its channel, then as ln1.
            let x: Vec<f64> = (0..len)
                .map(|i| f64::from(values[r * len + i]) * f64::from(scales[r * D + i % D].to_f32()))
                .collect();
            let want = maps_with_heads(&project(&x, &params), heads);
            let row = Targets::Int8 {
                values: values[r * len..(r + 1) * len].to_vec(),
                scales: scales[r * D..(r + 1) * D].to_vec(),
            };
            let got = candle_row(&decoder, &row, heads);
            let err = max_diff(&got, want.iter().copied());
            assert!(err < 1e-5, "ln1-int8 row {r}, {heads} heads: {err}");
            if heads == H {
                let batched = &candle_rows(&decoder, &targets, 2)[r];
                assert!(
                    max_diff(batched, want.iter().copied()) < 1e-5,
                    "row {r} in a batch"
                );
                let cpu = decode_maps(Encoding::Ln1Int8, &row, &h.geometry, Some(&params)).unwrap();
                assert!(max_diff(&got, cpu.iter().map(|&x| f64::from(x))) < TOLERANCE);
            }
        }
    }
}

#[test]
fn qkv_and_ln1_rows_form_maps_with_any_relation_head_split() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    // qkv: the stored [3, H, N, d] joined back to [3][N][D] in f64.
    let h = header(Encoding::Qkv);
    let raw = random_f16(Encoding::Qkv.row_len(&h.geometry), 3.0, &mut rng);
    let values: Vec<f64> = raw.iter().map(|x| f64::from(x.to_f32())).collect();
    let d = D / H;
    let joined: Vec<Vec<Vec<f64>>> = (0..3)
        .map(|t| {
            (0..N)
                .map(|n| {
                    (0..D)
                        .map(|c| values[((t * H + c / d) * N + n) * d + c % d])
                        .collect()
                })
                .collect()
        })
        .collect();
    // 3 is the teacher's; 2 and 4 cut across its heads; 1 and 12 are the extremes.
    for heads in [3, 1, 2, 4, 12] {
        let decoder = TargetDecoder::new(&h, None, Some(heads), &Device::Cpu).unwrap();
        assert_eq!(decoder.heads(), heads);
        let got = candle_row(&decoder, &Targets::Half(raw.clone()), heads);
        let err = max_diff(&got, maps_with_heads(&joined, heads));
        assert!(err < TOLERANCE, "qkv, {heads} heads: {err}");
    }

    // ln1: q, k, v = X̂Wᵀ + b in f64, then split.
    let h = header(Encoding::Ln1);
    let params = random_qkv_params(&mut rng);
    let raw = random_f16(Encoding::Ln1.row_len(&h.geometry), 2.0, &mut rng);
    let x: Vec<f64> = raw.iter().map(|v| f64::from(v.to_f32())).collect();
    let projected = project(&x, &params);
    for heads in [3, 2, 6] {
        let decoder = TargetDecoder::new(&h, Some(&params), Some(heads), &Device::Cpu).unwrap();
        let got = candle_row(&decoder, &Targets::Half(raw.clone()), heads);
        let err = max_diff(&got, maps_with_heads(&projected, heads));
        assert!(err < 1e-5, "ln1, {heads} heads: {err}");
    }
}

#[test]
fn relation_heads_are_refused_for_maps_and_where_they_do_not_divide_the_width() {
    let maps = header(Encoding::Maps);
    assert!(TargetDecoder::new(&maps, None, Some(H), &Device::Cpu).is_ok());
    let err = TargetDecoder::new(&maps, None, Some(6), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--relation-heads") && err.contains("`maps`") && err.contains("qkv"),
        "{err}"
    );
    let err = TargetDecoder::new(&header(Encoding::Qkv), None, Some(5), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("5 relation heads") && err.contains("12"),
        "{err}"
    );
}
