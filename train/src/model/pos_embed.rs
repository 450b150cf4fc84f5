//! The fixed 2-D sin-cos position embedding (TINYMIM.md, "Position embedding"; MAE's
//! `get_2d_sincos_pos_embed` with a class-token row).

use candle_core::{Device, Tensor};

use crate::error::Result;

/// The position embedding `[1, 1 + grid², dim]` for a `grid`×`grid` patch grid: row 0 (the
/// class token) is zero; token `1 + grid·r + c` holds the column embedding of `c` in its first
/// `dim/2` channels and the row embedding of `r` in the last `dim/2`. Computed in f64 and
/// cast to f32. `dim` must be a multiple of 4 (checked by [`crate::VitConfig::validate`]).
pub fn sincos_pos_embed(dim: usize, grid: usize, device: &Device) -> Result<Tensor> {
    let tokens = 1 + grid * grid;
    let mut table = vec![0f32; tokens * dim];
    let half = dim / 2;
    for r in 0..grid {
        for c in 0..grid {
            let row = &mut table[(1 + grid * r + c) * dim..][..dim];
            encode_1d(&mut row[..half], c as f64);
            encode_1d(&mut row[half..], r as f64);
        }
    }
    Ok(Tensor::from_vec(table, (1, tokens, dim), device)?)
}

/// Writes the 1-D embedding of position `p` into `out` (E channels): the first E/2 are
/// sin(p·ω_k), the next E/2 cos(p·ω_k), with ω_k = 10000^(−k/(E/2)).
fn encode_1d(out: &mut [f32], p: f64) {
    let quarter = out.len() / 2;
    for k in 0..quarter {
        let omega = 10000f64.powf(-(k as f64) / quarter as f64);
        out[k] = (p * omega).sin() as f32;
        out[quarter + k] = (p * omega).cos() as f32;
    }
}
