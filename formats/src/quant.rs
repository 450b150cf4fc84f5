//! 8-bit quantisation of `ln1` rows (the target block's normalised input X̂, `[N, D]`), the
//! candidate layouts of an int8 encoding: int8 values with their scales stored beside them,
//! float16 scales, symmetric (zero maps to zero), round to nearest.
//!
//! - [`Int8Layout::PerToken`]: one scale per token, `s_n = max_c |x_nc| / 127`;
//! - [`Int8Layout::PerChannel`]: one scale per channel of the row, `t_c = max_n |x_nc| / 127`
//!   (LayerNorm's affine weights give ViT activations a few channels far larger than the rest);
//! - [`Int8Layout::Factored`]: both — channels divided by `√t_c` first (SmoothQuant's α = ½
//!   split of the outliers between the two factors), then one scale per token.
//!
//! `x ≈ q · s_n · t_c` in every layout (a missing factor is 1). BENCHMARKS.md ("An 8-bit ln1")
//! measures what each costs in relation-map KL on the real teacher's targets.

use half::f16;
use ndarray::{Array2, ArrayView2, Axis};

use crate::encoding::Targets;

/// Where the scales of an int8 `ln1` row live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Layout {
    /// One scale per token.
    PerToken,
    /// One scale per channel of the row.
    PerChannel,
    /// A channel factor and a token scale.
    Factored,
}

impl Int8Layout {
    /// Every layout.
    pub const ALL: [Int8Layout; 3] = [
        Int8Layout::PerToken,
        Int8Layout::PerChannel,
        Int8Layout::Factored,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Int8Layout::PerToken => "per-token",
            Int8Layout::PerChannel => "per-channel",
            Int8Layout::Factored => "token×channel",
        }
    }

    /// Bytes of one row of N tokens × D channels: the int8 values and the float16 scales.
    pub fn row_bytes(self, tokens: usize, dim: usize) -> usize {
        let scales = match self {
            Int8Layout::PerToken => tokens,
            Int8Layout::PerChannel => dim,
            Int8Layout::Factored => tokens + dim,
        };
        tokens * dim + 2 * scales
    }
}

/// One quantised row.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Row {
    /// `[N, D]` row-major values.
    pub values: Vec<i8>,
    /// `[N]` token scales (all 1 in [`Int8Layout::PerChannel`]).
    pub token_scales: Vec<f16>,
    /// `[D]` channel scales (all 1 in [`Int8Layout::PerToken`]).
    pub channel_scales: Vec<f16>,
}

/// The scale mapping `max_abs` to 127, rounded to float16 (never 0, so that an all-zero
/// token or channel divides cleanly).
fn scale_of(max_abs: f32) -> f16 {
    let s = f16::from_f32(max_abs / 127.0);
    if s.to_f32() > 0.0 {
        s
    } else {
        f16::ONE
    }
}

/// Quantises `x` `[N, D]` in `layout`.
pub fn quantize(x: ArrayView2<f32>, layout: Int8Layout) -> Int8Row {
    let (tokens, dim) = x.dim();
    let max_abs = |lane: ndarray::ArrayView1<f32>| lane.fold(0.0f32, |m, v| m.max(v.abs()));
    let channel_scales: Vec<f16> = match layout {
        Int8Layout::PerToken => vec![f16::ONE; dim],
        Int8Layout::PerChannel => x.axis_iter(Axis(1)).map(|c| scale_of(max_abs(c))).collect(),
        Int8Layout::Factored => x
            .axis_iter(Axis(1))
            .map(|c| {
                let s = f16::from_f32(max_abs(c).sqrt());
                if s.to_f32() > 0.0 {
                    s
                } else {
                    f16::ONE
                }
            })
            .collect(),
    };
    let channel: Vec<f32> = channel_scales.iter().map(|s| s.to_f32()).collect();
    let token_scales: Vec<f16> = match layout {
        Int8Layout::PerChannel => vec![f16::ONE; tokens],
        _ => x
            .axis_iter(Axis(0))
            .map(|t| {
                let m = t
                    .iter()
                    .zip(&channel)
                    .fold(0.0f32, |m, (v, c)| m.max((v / c).abs()));
                scale_of(m)
            })
            .collect(),
    };
    let mut values = Vec::with_capacity(tokens * dim);
    for (t, s) in x.axis_iter(Axis(0)).zip(&token_scales) {
        let s = s.to_f32();
        for (v, c) in t.iter().zip(&channel) {
            values.push((v / (s * c)).round().clamp(-127.0, 127.0) as i8);
        }
    }
    Int8Row {
        values,
        token_scales,
        channel_scales,
    }
}

/// One row of the `ln1-int8` encoding: `x` `[N, D]` quantised with one scale per channel (the
/// layout BENCHMARKS.md measured most faithful: 2.2e-5 nats per row on real targets).
pub fn ln1_int8_row(x: ArrayView2<f32>) -> Targets {
    let row = quantize(x, Int8Layout::PerChannel);
    Targets::Int8 {
        values: row.values,
        scales: row.channel_scales,
    }
}

/// The row `[N, D]` that `row` stands for: `q · s_n · t_c`.
pub fn dequantize(row: &Int8Row) -> Array2<f32> {
    let (tokens, dim) = (row.token_scales.len(), row.channel_scales.len());
    Array2::from_shape_fn((tokens, dim), |(n, c)| {
        f32::from(row.values[n * dim + c])
            * row.token_scales[n].to_f32()
            * row.channel_scales[c].to_f32()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row with an outlier channel and an outlier token, as LN1 outputs have.
    fn row() -> Array2<f32> {
        Array2::from_shape_fn((5, 8), |(n, c)| {
            let base = ((n * 8 + c) as f32 * 0.37).sin();
            let channel = if c == 3 { 40.0 } else { 1.0 };
            let token = if n == 0 { 6.0 } else { 1.0 };
            base * channel * token
        })
    }

    #[test]
    fn every_layout_is_within_half_a_step_of_the_row() {
        let x = row();
        for layout in Int8Layout::ALL {
            let q = quantize(x.view(), layout);
            assert_eq!(q.values.len(), 40);
            let back = dequantize(&q);
            for ((n, c), &v) in x.indexed_iter() {
                let step = q.token_scales[n].to_f32() * q.channel_scales[c].to_f32();
                // Half a step, plus the float16 rounding of the scales (the max maps to 127).
                let err = (back[(n, c)] - v).abs();
                assert!(
                    err <= 0.5 * step + 1e-3 * v.abs(),
                    "{layout:?} ({n}, {c}): {err}"
                );
            }
        }
    }

    #[test]
    fn the_largest_value_of_each_scale_group_uses_the_full_range() {
        let x = row();
        let q = quantize(x.view(), Int8Layout::PerToken);
        for t in q.values.chunks(8) {
            assert_eq!(t.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        }
        let q = quantize(x.view(), Int8Layout::PerChannel);
        for c in 0..8 {
            let m = (0..5).map(|n| q.values[n * 8 + c].unsigned_abs()).max();
            assert_eq!(m, Some(127), "channel {c}");
        }
        // An all-zero row quantises to zeros with unit scales.
        let zero = quantize(Array2::zeros((2, 3)).view(), Int8Layout::Factored);
        assert!(zero.values.iter().all(|&v| v == 0));
        assert_eq!(dequantize(&zero), Array2::<f32>::zeros((2, 3)));
    }

    #[test]
    fn row_bytes_count_values_and_float16_scales() {
        // ViT-L/16 block 18: N 197, D 1024.
        assert_eq!(
            Int8Layout::PerToken.row_bytes(197, 1024),
            197 * 1024 + 2 * 197
        );
        assert_eq!(
            Int8Layout::Factored.row_bytes(197, 1024),
            197 * 1024 + 2 * (197 + 1024)
        );
    }
}
