//! Whole attention heads, `softmax(q·kᵀ·scale)·v`, forward and backward, each sample one task.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

use super::lanes::{dot, softmax_in_place};
use super::products::product;
use super::{fused, rows_of};
use crate::pool::par_blocks;

/// `softmax(q·kᵀ·scale)·v` of every head, from the qkv projection's output `[B, N, 3·D]`
/// (q of every head, then k, then v; head `h` the `d` columns from `h·d`, `D = heads·d`, as
/// timm lays it out) to the heads side by side, `[B, N, D]` (timm's
/// `transpose(1, 2).reshape(B, N, D)`), without a permuted copy either way.
///
/// Fused, each sample is one task on candle's worker pool, its heads one after the other, and
/// a head's N×N scores live only in the task's scratch buffer, never as a `[B, H, N, N]`
/// tensor; its products run single-threaded (the samples are the parallelism), reading q, k
/// and v in place by their row stride. Backward recomputes a head's probabilities from q and
/// k, as flash attention does, rather than keeping B·H·N² of them:
/// `P = softmax(scale·q·kᵀ)`, `dv = Pᵀ·g`, `dP = g·vᵀ`, `dS = P ⊙ (dP − Σⱼ dP ⊙ P)`,
/// `dq = scale·dS·k`, `dk = scale·dSᵀ·q`.
pub fn attention(qkv: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    if !fused(qkv) {
        let (b, n, width) = qkv.dims3()?;
        let d = width / (3 * heads.max(1));
        let qkv = qkv.reshape((b, n, 3, heads, d))?.permute((2, 0, 3, 1, 4))?;
        let part = |i| qkv.get(i)?.contiguous();
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let logits = (q.matmul(&k.t()?)? * scale)?;
        let out = candle_nn::ops::softmax(&logits, D::Minus1)?.matmul(&v)?;
        return out.transpose(1, 2)?.reshape((b, n, heads * d));
    }
    qkv.contiguous()?.apply_op1(Attention {
        heads,
        scale: scale as f32,
    })
}

struct Attention {
    heads: usize,
    scale: f32,
}

/// The sizes of attention over `[B, N, 3·D]` with `heads` heads: `(n, d, D)`, checked.
fn heads_of(l: &Layout, heads: usize, op: &'static str) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[_, n, width] if heads > 0 && width % (3 * heads) == 0 => {
            Ok((n, width / (3 * heads), width / 3))
        }
        dims => candle_core::bail!(
            "{op}: expected q, k, v of {heads} heads as [B, N, 3·D] with D a multiple of the \
             heads, got {dims:?}"
        ),
    }
}

/// A head's probabilities `softmax(scale·q·kᵀ)`, `n×n`, into `p`; q and k are `n×d` with
/// rows `rs` apart.
#[inline(always)]
fn head_probabilities(
    q: &[f32],
    k: &[f32],
    (n, d, rs): (usize, usize, usize),
    scale: f32,
    p: &mut [f32],
) {
    product((n, n, d), p, n, (q, rs, 1), (k, 1, rs), scale);
    for row in p.chunks_exact_mut(n) {
        softmax_in_place(row);
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, d, dim) = heads_of(l, self.heads, self.name())?;
        let (qkv, _) = rows_of(s, l, self.name())?;
        let samples = l.dims()[0];
        let out = par_blocks(samples * n * dim, n * dim, 1, |i, out| {
            let qkv = &qkv[i * n * 3 * dim..(i + 1) * n * 3 * dim];
            let mut p = vec![0f32; n * n];
            for h in 0..self.heads {
                let (q, k, v) = (&qkv[h * d..], &qkv[dim + h * d..], &qkv[2 * dim + h * d..]);
                head_probabilities(q, k, (n, d, 3 * dim), self.scale, &mut p);
                product(
                    (n, d, n),
                    &mut out[h * d..],
                    dim,
                    (&p, n, 1),
                    (v, 3 * dim, 1),
                    1.0,
                );
            }
        });
        Ok((CpuStorage::F32(out), (samples, n, dim).into()))
    }

    fn bwd(&self, qkv: &Tensor, _out: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(qkv.apply_op2_no_bwd(
            &g,
            &AttentionBwd {
                heads: self.heads,
                scale: self.scale,
            },
        )?))
    }
}

/// `(qkv, g) ↦ (dq, dk, dv)` laid out as qkv is, `[B, N, 3·D]`.
struct AttentionBwd {
    heads: usize,
    scale: f32,
}

impl CustomOp2 for AttentionBwd {
    fn name(&self) -> &'static str {
        "fused-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, d, dim) = heads_of(l1, self.heads, self.name())?;
        let (qkv, _) = rows_of(s1, l1, self.name())?;
        let (g, _) = rows_of(s2, l2, self.name())?;
        let rs = 3 * dim;
        let grads = par_blocks(qkv.len(), n * rs, 1, |i, grads| {
            let qkv = &qkv[i * n * rs..(i + 1) * n * rs];
            let g = &g[i * n * dim..(i + 1) * n * dim];
            let (mut p, mut ds) = (vec![0f32; n * n], vec![0f32; n * n]);
            for h in 0..self.heads {
                let (q, k, v) = (&qkv[h * d..], &qkv[dim + h * d..], &qkv[2 * dim + h * d..]);
                let g = &g[h * d..];
                head_probabilities(q, k, (n, d, rs), self.scale, &mut p);
                // dv = Pᵀ·g
                product(
                    (n, d, n),
                    &mut grads[2 * dim + h * d..],
                    rs,
                    (&p, 1, n),
                    (g, dim, 1),
                    1.0,
                );
                // dP = g·vᵀ, then dS = P ⊙ (dP − Σⱼ dP ⊙ P) in its place
                product((n, n, d), &mut ds, n, (g, dim, 1), (v, 1, rs), 1.0);
                for (ds, p) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                    let dp_p = dot(ds, p);
                    for (ds, &p) in ds.iter_mut().zip(p) {
                        *ds = p * (*ds - dp_p);
                    }
                }
                // dq = scale·dS·k, dk = scale·dSᵀ·q
                let scale = self.scale;
                product(
                    (n, d, n),
                    &mut grads[h * d..],
                    rs,
                    (&ds, n, 1),
                    (k, rs, 1),
                    scale,
                );
                product(
                    (n, d, n),
                    &mut grads[dim + h * d..],
                    rs,
                    (&ds, 1, n),
                    (q, rs, 1),
                    scale,
                );
            }
        });
        Ok((CpuStorage::F32(grads), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::reference::{check, normal};
    use crate::model::fused;
    use candle_core::Tensor;

    #[test]
    fn attention_matches_composite() {
        // The qkv projection of 2 samples, 3 heads of d = 16 (D = 48), N = 17 tokens, laid out as
        // timm's: [B, N, 3·D].
        let f = |x: &Tensor| fused::attention(x, 3, 0.25);
        check("attention", &f, &normal(&[2, 17, 144], 50, 1.0), false);
        check(
            "attention (transposed)",
            &f,
            &normal(&[2, 144, 17], 51, 1.0),
            true,
        );
        // Peaked heads: logits of tens, far from uniform probabilities.
        let f = |x: &Tensor| fused::attention(x, 2, 0.25);
        check(
            "attention (peaked)",
            &f,
            &normal(&[1, 9, 48], 52, 4.0),
            false,
        );
    }
}
