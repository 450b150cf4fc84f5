//! The lane arithmetic of the fused kernels: `exp`, `ln` and `erf` in f32 as branch-free
//! polynomials (so that a loop of them vectorises, where libm's are a call per value), and
//! sums, maxima and dot products of a row folded in 8 lanes (a serial f32 fold waits on each
//! step's latency). Every function is `#[inline(always)]`: it is compiled into the kernel that
//! calls it, at that kernel's target features (`crate::pool`).

/// `e^x` in f32, branch-free so that a loop of it vectorises (glibc's `expf` is a call per
/// value): `x = n·ln 2 + r` with `|r| ≤ ½ ln 2`, `e^r` by Cephes' `expf` polynomial, `2^n`
/// put into the exponent bits. Within 2 ulps of `e^x` (`exp_is_within_float_rounding`); 0
/// below −87.3 (where `e^x` is below f32's smallest normal), clamped at 88.3 above.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, which then sits in the low mantissa bits (no
    // call to floorf where the loop is built without SSE4.1).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.33, 88.3);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ]
    .iter()
    .fold(0.0, |acc, &c| acc * r + c);
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits());
    let two_n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = (p * r * r + r + 1.0) * two_n;
    if x < -87.33 {
        0.0
    } else {
        y
    }
}

/// A fold of a row in 8 lanes, so that it vectorises (a serial f32 fold waits on each
/// step's latency): each lane folds every 8th value by `step`, the lanes are then combined by
/// `combine`, and the values past the last whole 8 are folded onto that by `step`.
#[inline(always)]
pub(super) fn fold_lanes(
    x: &[f32],
    init: f32,
    step: impl Fn(f32, f32) -> f32,
    combine: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut lanes = [init; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = step(*lane, v);
        }
    }
    let lanes = lanes.into_iter().fold(init, combine);
    tail.iter().fold(lanes, |acc, &v| step(acc, v))
}

/// `Σ x` of a row, in lanes ([`fold_lanes`]).
#[inline(always)]
pub(super) fn sum(x: &[f32]) -> f32 {
    fold_lanes(x, 0.0, |a, b| a + b, |a, b| a + b)
}

/// `max x` of a row, in lanes ([`fold_lanes`]).
#[inline(always)]
pub(super) fn max(x: &[f32]) -> f32 {
    fold_lanes(x, f32::NEG_INFINITY, f32::max, f32::max)
}

/// `(max, ln Σ exp(x − max))` of a row: its log-sum-exp is their sum, computed stably.
#[inline(always)]
pub(super) fn max_and_log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = max(x);
    let sum = fold_lanes(x, 0.0, |a, v| a + exp(v - max), |a, b| a + b);
    (max, sum.ln())
}

/// Replaces a row of logits by its softmax: `exp(y − max y) / Σ exp(y − max y)`.
#[inline(always)]
pub(super) fn softmax_in_place(y: &mut [f32]) {
    let max = max(y);
    for y in y.iter_mut() {
        *y = exp(*y - max);
    }
    let sum = sum(y);
    for y in y.iter_mut() {
        *y /= sum;
    }
}

/// `Σ step(a, b)` over two rows taken pairwise, in 8 lanes (as [`fold_lanes`] does for one).
#[inline(always)]
pub(super) fn sum_pairs(a: &[f32], b: &[f32], step: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| step(x, y))
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(ca).zip(cb) {
            *lane += step(x, y);
        }
    }
    sum(&lanes) + tail
}

/// `Σ a·b` of two rows, in lanes.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_pairs(a, b, |x, y| x * y)
}

/// `ln x` in f32 for a positive normal `x`, branch-free so that a loop of it vectorises
/// (glibc's `logf` is a call per value): `x = m·2^e` with `m` in `[√½, √2)`, `ln m` by Cephes'
/// `logf` polynomial in `m − 1`, plus `e·ln 2`. Within 1.5e-7 of `ln x` in absolute terms
/// near 1, and relative elsewhere (`ln_is_within_float_rounding`); subnormal, zero, negative
/// and non-finite inputs give meaningless values, so callers select them away.
#[inline(always)]
pub(super) fn ln(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let bits = x.to_bits();
    // The mantissa as a value in [1, 2), and the exponent.
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    // Into [√½, √2): halve a mantissa above √2 and count it in the exponent.
    let high = m > std::f32::consts::SQRT_2;
    let f = if high { 0.5 * m } else { m } - 1.0;
    let e = (e + high as i32) as f32;
    let z = f * f;
    let p = [
        7.037_683_6e-2,
        -1.151_461_1e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ]
    .iter()
    .fold(0.0, |acc, &c| acc * f + c);
    let y = p * f * z + e * LN2_LO - 0.5 * z;
    f + y + e * LN2_HI
}

/// erf in f32 as a rational function, `x·P(x²)/Q(x²)` on x clamped to ±4 (beyond which erf
/// is ±1 in f32): the approximation of Eigen's and XLA's f32 erf, within 5e-7 of erf
/// everywhere, 4 ulps near ±1 (`erf_is_within_float_rounding`). Branch-free, so a loop of it
/// vectorises, which libm's `erff` (a call per value, with branches) does not.
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = [
        -2.726_142_3e-10,
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ]
    .iter()
    .fold(0.0, |acc, &c| acc * x2 + c);
    let q = [
        -1.456_607_2e-5,
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_474e-2,
    ]
    .iter()
    .fold(0.0, |acc, &c| acc * x2 + c);
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::{erf, exp, ln};

    #[test]
    fn ln_is_within_float_rounding() {
        // Against f64's ln over normal f32s from 1.2e-38 to 3e38: absolute near 1 (where ln
        // crosses zero), relative elsewhere.
        let error = |x: f32| {
            let reference = (x as f64).ln();
            (ln(x) as f64 - reference).abs() / reference.abs().max(1.0)
        };
        let mut worst = 0f64;
        let mut x = f32::MIN_POSITIVE;
        while x < 3e38 {
            worst = worst.max(error(x));
            x *= 1.000_37;
        }
        for i in 1..=200_000 {
            worst = worst.max(error(i as f32 * 1e-5));
        }
        assert!(worst < 1.5e-7, "ln off by {worst:e}");
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn exp_is_within_float_rounding() {
        // Against f64's exp, relative, on a grid over the range where e^x is a normal f32.
        let mut worst = 0f64;
        for i in -873_000..=883_000 {
            let x = i as f32 * 1e-4;
            let reference = (x as f64).exp();
            worst = worst.max((exp(x) as f64 - reference).abs() / reference);
        }
        assert!(worst < 2.5e-7, "exp off by {worst:e} (relative)");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_float_rounding() {
        // Against libm's f64 erf (an independent implementation) on a fine grid over ±6.
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f64 * 1e-4;
            worst = worst.max((erf(x as f32) as f64 - libm::erf(x)).abs());
        }
        assert!(worst < 5e-7, "erf off by {worst:e}");
    }
}
