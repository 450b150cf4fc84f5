//! Stored targets decode to the same relation maps in candle as in formats' CPU reference
//! (`decode_maps`) and as in an f64 implementation of TINYMIM.md written here, for all three
//! encodings.

use candle_core::Device;
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tinymim_formats::{
    decode_maps, Encoding, Hash32, Normalization, QkvParams, StoreHeader, TeacherGeometry,
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

fn random_f16(n: usize, scale: f32, rng: &mut ChaCha8Rng) -> Vec<f16> {
    (0..n)
        .map(|_| f16::from_f32(rng.random_range(-scale..scale)))
        .collect()
}

/// Candle's maps of a batch of rows, flattened per row as `[2, H, N, N]`.
fn candle_rows(decoder: &TargetDecoder, raw: &[f16], rows: usize) -> Vec<Vec<f32>> {
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
    let decoder = TargetDecoder::new(&h, None, &Device::Cpu).unwrap();
    for (r, got) in candle_rows(&decoder, &raw, 2).iter().enumerate() {
        let row = &raw[r * len..(r + 1) * len];
        let cpu = decode_maps(Encoding::Qkv, row, &h.geometry, None).unwrap();
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
    let params = QkvParams {
        weight: (0..3 * D * D)
            .map(|_| rng.random_range(-0.5..0.5))
            .collect(),
        bias: (0..3 * D).map(|_| rng.random_range(-0.2..0.2)).collect(),
    };
    let len = Encoding::Ln1.row_len(&h.geometry);
    let raw = random_f16(2 * len, 2.0, &mut rng);
    let decoder = TargetDecoder::new(&h, Some(&params), &Device::Cpu).unwrap();
    let d = D / H;
    for (r, got) in candle_rows(&decoder, &raw, 2).iter().enumerate() {
        let row = &raw[r * len..(r + 1) * len];
        let cpu = decode_maps(Encoding::Ln1, row, &h.geometry, Some(&params)).unwrap();
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
    let decoder = TargetDecoder::new(&h, None, &Device::Cpu).unwrap();
    for (r, got) in candle_rows(&decoder, &raw, 3).iter().enumerate() {
        let want = raw[r * len..(r + 1) * len]
            .iter()
            .map(|x| f64::from(x.to_f32()));
        assert_eq!(max_diff(got, want), 0.0);
    }
    let err = decoder.decode(&raw[..len + 5]).unwrap_err().to_string();
    assert!(err.contains("maps"), "{err}");
    assert!(TargetDecoder::new(&header(Encoding::Ln1), None, &Device::Cpu).is_err());
}
