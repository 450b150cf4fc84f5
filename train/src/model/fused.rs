//! Fused CPU kernels for the row-wise operations of the student: softmax, log-softmax, the
//! relation KL, LayerNorm, linear layers (product and bias in one op), a bias, the exact (erf)
//! GELU, a residual branch under drop path's per-sample scaling, whole attention heads
//! (products, softmax and their backward) and the products of many small matrices (the
//! relation logits of every head).
//!
//! Built from candle's primitive ops, each of these costs several passes over memory and as
//! many temporaries forward, and more backward (candle's `Mul` backward, for one, computes
//! the gradient of both operands even when one is a constant). Here each is one
//! [`CustomOp1`]/[`CustomOp2`]/[`CustomOp3`] whose forward is one pass over each row and
//! whose backward is another fused op of one pass. candle's own fused `softmax_last_dim` and
//! `layer_norm` cannot be used: they have no backward (DEPENDENCIES.md).
//!
//! The kernels run over blocks of rows on candle's CPU worker pool ([`crate::pool`]).
//!
//! Every public function here dispatches: the fused kernel for f32 tensors on the CPU, the
//! composite candle ops (the reference path, and the one CUDA runs) otherwise. Results agree
//! with the composite path up to float32 rounding (`train/tests/fused_ops.rs`).

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D,
};

use std::cell::Cell;

use crate::pool::{kernels_supported, par_blocks, par_spans};

/// Rows per parallel task: rows are short (≈ 200 values), so per-row tasks would cost more
/// in scheduling than in arithmetic.
const MIN_ROWS_PER_TASK: usize = 16;

thread_local! {
    /// Whether ops built on this thread may take the fused kernels ([`composite_only`]).
    static KERNELS_ON: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with the fused kernels off on this thread: every op `f` builds, its backward and
/// AdamW's update take candle's composite path, the reference the kernels are tested against
/// (a whole training step among them, `train/tests/model.rs`).
pub fn composite_only<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the switch when `f` returns or unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KERNELS_ON.set(self.0);
        }
    }
    let _restore = Restore(KERNELS_ON.replace(false));
    f()
}

/// Whether `x` takes the fused path: f32 on the CPU, on a CPU that runs the kernels
/// ([`kernels_supported`]: AVX2 and FMA on x86-64), outside [`composite_only`].
pub(crate) fn fused(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && kernels_supported() && KERNELS_ON.get()
}

/// The f32 values of a contiguous operand and its row width (last dimension).
pub(crate) fn rows_of<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &'static str,
) -> Result<(&'a [f32], usize)> {
    let data = s.as_slice::<f32>()?;
    let (start, end) = l
        .contiguous_offsets()
        .ok_or(candle_core::Error::RequiresContiguous { op })?;
    Ok((&data[start..end], l.dims().last().copied().unwrap_or(1)))
}

/// A new `len`-value buffer whose rows of `width` values (the last one possibly shorter) are
/// filled by `f(row index, row)`, in parallel ([`par_blocks`]; `f` writes every value).
fn par_rows(len: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    par_blocks(len, width, MIN_ROWS_PER_TASK, f)
}

/// `e^x` in f32, branch-free so that a loop of it vectorises (glibc's `expf` is a call per
/// value): `x = n·ln 2 + r` with `|r| ≤ ½ ln 2`, `e^r` by Cephes' `expf` polynomial, `2^n`
/// put into the exponent bits. Within 2 ulps of `e^x` (`exp_is_within_float_rounding`); 0
/// below −87.3 (where `e^x` is below f32's smallest normal), clamped at 88.3 above.
#[inline(always)]
fn exp(x: f32) -> f32 {
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
fn fold_lanes(
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
fn sum(x: &[f32]) -> f32 {
    fold_lanes(x, 0.0, |a, b| a + b, |a, b| a + b)
}

/// `max x` of a row, in lanes ([`fold_lanes`]).
#[inline(always)]
fn max(x: &[f32]) -> f32 {
    fold_lanes(x, f32::NEG_INFINITY, f32::max, f32::max)
}

/// `(max, ln Σ exp(x − max))` of a row: its log-sum-exp is their sum, computed stably.
#[inline(always)]
fn max_and_log_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = max(x);
    let sum = fold_lanes(x, 0.0, |a, v| a + exp(v - max), |a, b| a + b);
    (max, sum.ln())
}

/// Replaces a row of logits by its softmax: `exp(y − max y) / Σ exp(y − max y)`.
#[inline(always)]
fn softmax_in_place(y: &mut [f32]) {
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
fn sum_pairs(a: &[f32], b: &[f32], step: impl Fn(f32, f32) -> f32) -> f32 {
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
fn ln(x: f32) -> f32 {
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

// ---------------------------------------------------------------------------------------------
// Softmax

/// `softmax(scale · x)` over the last axis. The scale (attention's d^-½) is folded in so that
/// the scaled logits are never materialised.
///
/// Forward, per row: `s = scale·x`, `y = exp(s − max s) / Σ exp(s − max s)`.
/// Backward: `∂L/∂x = scale · y ⊙ (g − Σ g·y)` (the softmax Jacobian is `diag(y) − y yᵀ`).
pub fn softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    if !fused(x) {
        let x = if scale == 1.0 {
            x.clone()
        } else {
            (x * scale)?
        };
        return candle_nn::ops::softmax(&x, D::Minus1);
    }
    x.contiguous()?.apply_op1(Softmax {
        scale: scale as f32,
    })
}

struct Softmax {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s, l, self.name())?;
        let out = par_rows(x.len(), d, |r, y| {
            for (y, &x) in y.iter_mut().zip(&x[r * d..(r + 1) * d]) {
                *y = x * self.scale;
            }
            softmax_in_place(y);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(
            y.apply_op2_no_bwd(&g, &SoftmaxBwd { scale: self.scale })?,
        ))
    }
}

/// `(y, g) ↦ scale · y ⊙ (g − Σ g·y)`, rows of the last axis.
struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, d) = rows_of(s1, l1, self.name())?;
        let (g, _) = rows_of(s2, l2, self.name())?;
        let out = par_rows(y.len(), d, |r, dx| {
            let (y, g) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let gy = dot(g, y);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = self.scale * (y * (g - gy));
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Attention

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

/// `dst (m×n, rows of dst_rs) = beta · lhs (m×k) · rhs (k×n)`, single-threaded; each operand is
/// given with its row and column strides, so a transpose is a swap of strides.
fn product(
    shape: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    beta: f32,
) {
    product_into(shape, dst, dst_rs, lhs, rhs, beta, false)
}

/// [`product`], adding to what `dst` holds where `accumulate` is set (`dst += beta·lhs·rhs`)
/// instead of overwriting it.
#[allow(clippy::too_many_arguments)]
fn product_into(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
    beta: f32,
    accumulate: bool,
) {
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        dst.len() > last(m, dst_rs, n, 1)
            && lhs.len() > last(m, lhs_rs, k, lhs_cs)
            && rhs.len() > last(k, rhs_rs, n, rhs_cs),
        "product operands out of bounds"
    );
    // SAFETY: every element gemm touches lies in its slice (checked above); dst does not
    // alias lhs or rhs (a `&mut` and two `&` borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
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

// ---------------------------------------------------------------------------------------------
// Products of many small matrices

/// `scale · a·bᵀ` of every matrix of `a` `[.., M, K]` and `b` `[.., N, K]` (the same leading
/// dimensions), `[.., M, N]`: the relation logits q·kᵀ·d^-½ and v·vᵀ·d^-½ of all heads, and
/// (one matrix, scale 1) the linear layers' x·Wᵀ.
///
/// candle multiplies a batch of matrices one after the other, each product split across
/// rayon's threads while candle's own workers spin beside them; here every product, or every
/// block of rows of a single large one, is one single-threaded task on candle's worker pool,
/// and the scale is folded into it. Backward: `∂a = scale·g·b`, `∂b = scale·gᵀ·a` (products of the same
/// kind, transposes taken by strides).
pub fn scaled_products_nt(a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    if !fused(a) || !fused(b) {
        let product = a.matmul(&b.t()?)?;
        return if scale == 1.0 {
            Ok(product)
        } else {
            product * scale
        };
    }
    a.contiguous()?.apply_op2(
        &b.contiguous()?,
        Products {
            scale: scale as f32,
            lhs_t: false,
            rhs_t: true,
        },
    )
}

/// `scale · op(lhs)·op(rhs)` of every matrix pair, `op` a transpose where its flag says so.
struct Products {
    scale: f32,
    lhs_t: bool,
    rhs_t: bool,
}

impl Products {
    /// `(batch, m, n, k)` of the products of operands of `dims_l` and `dims_r`.
    fn sizes(&self, dims_l: &[usize], dims_r: &[usize]) -> Result<(usize, usize, usize, usize)> {
        let split = |dims: &[usize]| match dims {
            [lead @ .., r, c] => Some((lead.to_vec(), *r, *c)),
            _ => None,
        };
        let (Some((lead_l, rl, cl)), Some((lead_r, rr, cr))) = (split(dims_l), split(dims_r))
        else {
            candle_core::bail!("fused-products: operands of rank < 2: {dims_l:?}, {dims_r:?}");
        };
        let (m, k) = if self.lhs_t { (cl, rl) } else { (rl, cl) };
        let (k_r, n) = if self.rhs_t { (cr, rr) } else { (rr, cr) };
        if lead_l != lead_r || k != k_r {
            candle_core::bail!(
                "fused-products: {dims_l:?} and {dims_r:?} (transposed: {}, {}) do not multiply",
                self.lhs_t,
                self.rhs_t
            );
        }
        Ok((lead_l.iter().product(), m, n, k))
    }
}

impl Products {
    /// The products of `lhs` and `rhs`, each output row starting from `bias` (`[n]`) where
    /// one is given (a linear layer's `x·Wᵀ + b`, the bias written first and the product
    /// added to it in the same task) and from zero otherwise.
    fn compute(
        &self,
        (s1, l1): (&CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (batch, m, n, k) = self.sizes(l1.dims(), l2.dims())?;
        if bias.is_some_and(|b| b.len() != n) {
            candle_core::bail!(
                "fused-linear: a bias of {} values for {n} outputs",
                bias.map_or(0, <[f32]>::len)
            );
        }
        let (lhs, cols_l) = rows_of(s1, l1, self.name())?;
        let (rhs, cols_r) = rows_of(s2, l2, self.name())?;
        // Row-major storage: a transpose swaps the row and column strides.
        let strides = |t: bool, cols: usize| if t { (1, cols) } else { (cols, 1) };
        let ((lhs_rs, lhs_cs), (rhs_rs, rhs_cs)) =
            (strides(self.lhs_t, cols_l), strides(self.rhs_t, cols_r));
        // One task per matrix where there are enough of them, else each matrix's rows cut
        // into blocks, about two tasks per thread in all.
        let threads = candle_core::utils::get_num_threads().max(1);
        let rows_per_block = m.div_ceil((2 * threads).div_ceil(batch.max(1)).min(m.max(1)));
        let blocks = m.div_ceil(rows_per_block.max(1));
        let out = par_spans(
            batch * m * n,
            batch * blocks,
            |t| {
                let (i, r0) = (t / blocks, (t % blocks) * rows_per_block);
                (i * m + r0) * n..(i * m + m.min(r0 + rows_per_block)) * n
            },
            |t, out| {
                let (i, r0) = (t / blocks, (t % blocks) * rows_per_block);
                let lhs = &lhs[i * m * k + r0 * lhs_rs..(i + 1) * m * k];
                let rhs = &rhs[i * k * n..(i + 1) * k * n];
                if let Some(bias) = bias {
                    for row in out.chunks_exact_mut(n) {
                        row.copy_from_slice(bias);
                    }
                }
                product_into(
                    (out.len() / n, n, k),
                    out,
                    n,
                    (lhs, lhs_rs, lhs_cs),
                    (rhs, rhs_rs, rhs_cs),
                    self.scale,
                    bias.is_some(),
                );
            },
        );
        let mut dims = l1.dims()[..l1.dims().len() - 2].to_vec();
        dims.extend([m, n]);
        Ok((CpuStorage::F32(out), dims.into()))
    }

    /// The gradients of both operands from the gradient `g` of the products, each only where
    /// its operand takes part in the graph (`track_op`): a constant operand, such as the
    /// pixels of the patch embedding, gets none.
    fn grads(
        &self,
        a: &Tensor,
        b: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let products = |lhs: &Tensor, lhs_t, rhs: &Tensor, rhs_t| {
            let op = Products {
                scale: self.scale,
                lhs_t,
                rhs_t,
            };
            lhs.apply_op2_no_bwd(rhs, &op)
        };
        // C = s·L·R with L = op(a), R = op(b): ∂L = s·g·Rᵀ, ∂R = s·Lᵀ·g.
        let da = match (a.track_op(), self.lhs_t) {
            (false, _) => None,
            (true, true) => Some(products(b, self.rhs_t, &g, true)?),
            (true, false) => Some(products(&g, false, b, !self.rhs_t)?),
        };
        let db = match (b.track_op(), self.rhs_t) {
            (false, _) => None,
            (true, true) => Some(products(&g, true, a, self.lhs_t)?),
            (true, false) => Some(products(a, !self.lhs_t, &g, false)?),
        };
        Ok((da, db))
    }
}

impl CustomOp2 for Products {
    fn name(&self) -> &'static str {
        "fused-products"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.compute((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(a, b, g)
    }
}

/// A linear layer, `x·Wᵀ + b`, for `x` `[M, K]`, `W` `[N, K]` (PyTorch's layout) and `b`
/// `[N]`: one op, so the output is written once (the bias, then the product added in the same
/// task) and the backward has one node fewer to clear and sum into than a product followed by
/// [`add_bias`]. Backward: `∂x = g·W`, `∂W = gᵀ·x`, `∂b = Σ_rows g`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(fused(x) && fused(w) && fused(b)) {
        return add_bias(&scaled_products_nt(x, w, 1.0)?, b);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Linear)
}

/// [`linear`]'s op: [`Products`] of `x` and `Wᵀ` with the bias as the rows' start.
struct Linear;

impl Linear {
    const PRODUCTS: Products = Products {
        scale: 1.0,
        lhs_t: false,
        rhs_t: true,
    };
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bias, _) = rows_of(s3, l3, self.name())?;
        if l3.dims().len() != 1 {
            candle_core::bail!("fused-linear: a bias of shape {:?}, not [N]", l3.dims());
        }
        Self::PRODUCTS.compute((s1, l1), (s2, l2), Some(bias))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::PRODUCTS.grads(x, w, g)?;
        let db = g.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((dx, dw, Some(db)))
    }
}

// ---------------------------------------------------------------------------------------------
// Log-softmax

/// `log_softmax(x)` over the last axis.
///
/// Forward, per row: `y = (x − max x) − ln Σ exp(x − max x)` (stable for any logits).
/// Backward: `∂L/∂x = g − softmax(x) · Σ g`, with `softmax(x) = exp(y)`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return candle_nn::ops::log_softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(LogSoftmax)
}

struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "fused-log-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s, l, self.name())?;
        let out = par_rows(x.len(), d, |r, y| {
            let x = &x[r * d..(r + 1) * d];
            let (max, lse) = max_and_log_sum_exp(x);
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (x - max) - lse;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(y.apply_op2_no_bwd(&g, &LogSoftmaxBwd)?))
    }
}

/// `(y, g) ↦ g − exp(y) · Σ g`, rows of the last axis.
struct LogSoftmaxBwd;

impl CustomOp2 for LogSoftmaxBwd {
    fn name(&self) -> &'static str {
        "fused-log-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, d) = rows_of(s1, l1, self.name())?;
        let (g, _) = rows_of(s2, l2, self.name())?;
        let out = par_rows(y.len(), d, |r, dx| {
            let (y, g) = (&y[r * d..(r + 1) * d], &g[r * d..(r + 1) * d]);
            let sum = sum(g);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = g - exp(y) * sum;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Relation KL

/// The forward KL of each row, `Σ_j T_j · (ln T_j − log_softmax(S)_j)` over the last axis,
/// with `0 · ln 0 = 0`: logits `S` and target distributions `T` of the same shape give the
/// per-row divergences, shape `S.dims()[..-1]`. The target carries no gradient.
///
/// Backward: `∂L/∂S_j = g · (softmax(S)_j · Σ T − T_j)` (`Σ T = 1` for a distribution, but the
/// formula holds for any non-negative T). The backward recomputes the softmax from `S`, so
/// no `[.., N]`-sized intermediate is kept between forward and backward.
pub fn kl_rows(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    let target = target.detach();
    if !(fused(logits) && fused(&target)) {
        let positive = target.gt(0.0)?;
        // ln T where T > 0, and 0 elsewhere, so that 0·ln 0 counts as 0.
        let log_target = positive.where_cond(&target.log()?, &target.zeros_like()?)?;
        let log_student = log_softmax_last_dim(logits)?;
        return (target * (log_target - log_student)?)?.sum(D::Minus1);
    }
    logits
        .contiguous()?
        .apply_op2(&target.contiguous()?, KlRows)
}

struct KlRows;

impl CustomOp2 for KlRows {
    fn name(&self) -> &'static str {
        "fused-kl-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: self.name(),
            });
        }
        let (s, d) = rows_of(s1, l1, self.name())?;
        let (t, _) = rows_of(s2, l2, self.name())?;
        let rows = s.len().checked_div(d).unwrap_or(0);
        let out = par_rows(rows, 1, |r, kl| {
            let (s, t) = (&s[r * d..(r + 1) * d], &t[r * d..(r + 1) * d]);
            let (max, lse) = max_and_log_sum_exp(s);
            // A target below f32's smallest normal (≈1.2e-38) adds less than 1e-36: counted
            // as zero, as zero itself is (0·ln 0 = 0).
            kl[0] = sum_pairs(s, t, |s, t| {
                let term = t * (ln(t) - ((s - max) - lse));
                if t >= f32::MIN_POSITIVE {
                    term
                } else {
                    0.0
                }
            });
        });
        let mut dims = l1.dims().to_vec();
        dims.pop();
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        s: &Tensor,
        t: &Tensor,
        _kl: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        Ok((Some(s.apply_op3_no_bwd(t, &g, &KlRowsBwd)?), None))
    }
}

/// `(S, T, g) ↦ g · (softmax(S) · Σ T − T)` per row of the last axis, one `g` per row.
struct KlRowsBwd;

impl CustomOp3 for KlRowsBwd {
    fn name(&self) -> &'static str {
        "fused-kl-rows-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (s, d) = rows_of(s1, l1, self.name())?;
        let (t, _) = rows_of(s2, l2, self.name())?;
        let (g, _) = rows_of(s3, l3, self.name())?;
        let out = par_rows(s.len(), d, |r, ds| {
            let (s, t) = (&s[r * d..(r + 1) * d], &t[r * d..(r + 1) * d]);
            let (max, lse) = max_and_log_sum_exp(s);
            let mass = sum(t);
            for ((ds, &s), &t) in ds.iter_mut().zip(s).zip(t) {
                *ds = g[r] * (exp(s - max - lse) * mass - t);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Column sums (the parameter gradients of broadcast parameters)

/// Rows per partial sum of [`column_sums`]: fixed, so results do not depend on the thread
/// count.
const ROWS_PER_PARTIAL: usize = 32;

/// `k` column-sum vectors of width `d` over `rows` rows, `[k·d]` values: `accumulate(rows,
/// acc)` adds the contribution of a range of rows to `acc` (`k·d` zeros at first). Ranges of
/// [`ROWS_PER_PARTIAL`] rows are summed in parallel into partial sums, which are then added
/// in a fixed order (deterministic).
fn column_sums(
    rows: usize,
    d: usize,
    k: usize,
    accumulate: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let width = k * d;
    let n_partials = rows.div_ceil(ROWS_PER_PARTIAL);
    let partials = par_rows(n_partials * width, width, |c, acc| {
        acc.fill(0.0);
        let start = c * ROWS_PER_PARTIAL;
        accumulate(start..rows.min(start + ROWS_PER_PARTIAL), acc);
    });
    let mut out = vec![0f32; width];
    if width > 0 {
        for partial in partials.chunks(width) {
            for (o, p) in out.iter_mut().zip(partial) {
                *o += p;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bias

/// `x + b`: a bias `b` `[D]` added to every row of `x` `[.., D]` (the patch embedding's, and a
/// linear layer's where its product is not [`linear`]'s).
///
/// Backward: `∂L/∂x = g` (passed on, no copy) and `∂L/∂b = Σ_rows g`, summed by a parallel
/// column-sum kernel (candle's broadcast backward reduces over the leading axes slowly).
pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !(fused(x) && fused(b)) {
        return x.broadcast_add(b);
    }
    x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (b, _) = rows_of(s2, l2, self.name())?;
        if l2.dims() != [d] {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: l1.shape().clone(),
                rhs: l2.shape().clone(),
                op: self.name(),
            });
        }
        let out = par_rows(x.len(), d, |r, y| {
            for ((y, &x), &b) in y.iter_mut().zip(&x[r * d..(r + 1) * d]).zip(b) {
                *y = x + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = g.contiguous()?.apply_op1_no_bwd(&ColumnSums)?;
        Ok((Some(g.clone()), Some(db)))
    }
}

/// `g` `[.., D]` ↦ `Σ_rows g` `[D]`.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "fused-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, d) = rows_of(s, l, self.name())?;
        let rows = g.len().checked_div(d).unwrap_or(0);
        let out = column_sums(rows, d, 1, |range, acc| {
            for r in range {
                for (a, &g) in acc.iter_mut().zip(&g[r * d..(r + 1) * d]) {
                    *a += g;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// LayerNorm over the last axis, `y = x̂ ⊙ w + b` with `x̂ = (x − μ) / √(σ² + eps)` and the
/// biased variance `σ² = mean((x − μ)²)` as in PyTorch; `w`, `b` are `[D]`.
///
/// Backward, with `r = 1/√(σ² + eps)`, `ĝ = g ⊙ w` and means over the row:
/// `∂L/∂x = r · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂))`, `∂L/∂w = Σ_rows g ⊙ x̂`,
/// `∂L/∂b = Σ_rows g`. Both kernels recompute μ and r from x instead of keeping them.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if !(fused(x) && fused(w) && fused(b)) {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
        return normed.broadcast_mul(w)?.broadcast_add(b);
    }
    let (w, b) = (w.contiguous()?, b.contiguous()?);
    let d = x.dim(D::Minus1)?;
    if w.dims() != [d] || b.dims() != [d] {
        return Err(candle_core::Error::ShapeMismatchBinaryOp {
            lhs: x.shape().clone(),
            rhs: w.shape().clone(),
            op: "fused-layer-norm",
        });
    }
    x.contiguous()?
        .apply_op3(&w, &b, LayerNorm { eps: eps as f32 })
}

struct LayerNorm {
    eps: f32,
}

/// Writes `x − μ` of a row to `centred` and returns `√(σ² + eps)`.
#[inline(always)]
fn centre(x: &[f32], eps: f32, centred: &mut [f32]) -> f32 {
    let inv_d = (1.0 / x.len() as f64) as f32;
    let mean = sum(x) * inv_d;
    for (c, &x) in centred.iter_mut().zip(x) {
        *c = x - mean;
    }
    (dot(centred, centred) * inv_d + eps).sqrt()
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (w, _) = rows_of(s2, l2, self.name())?;
        let (b, _) = rows_of(s3, l3, self.name())?;
        let out = par_rows(x.len(), d, |r, y| {
            let std = centre(&x[r * d..(r + 1) * d], self.eps, y);
            for ((y, &w), &b) in y.iter_mut().zip(w).zip(b) {
                *y = (*y / std) * w + b;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &LayerNormBwdX { eps: self.eps })?;
        let dwb = x.apply_op2_no_bwd(&g, &LayerNormBwdParams { eps: self.eps })?;
        Ok((Some(dx), Some(dwb.get(0)?), Some(dwb.get(1)?)))
    }
}

/// `(x, w, g) ↦ r · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂))` with `ĝ = g ⊙ w`, rows of the last axis.
struct LayerNormBwdX {
    eps: f32,
}

impl CustomOp3 for LayerNormBwdX {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (w, _) = rows_of(s2, l2, self.name())?;
        let (g, _) = rows_of(s3, l3, self.name())?;
        let inv_d = (1.0 / d as f64) as f32;
        let out = par_rows(x.len(), d, |r, dx| {
            let g = &g[r * d..(r + 1) * d];
            // dx holds x̂ until the last loop overwrites it.
            let std = centre(&x[r * d..(r + 1) * d], self.eps, dx);
            let mut g_sum = 0f32;
            let mut gx_sum = 0f32;
            for ((xh, &g), &w) in dx.iter_mut().zip(g).zip(w) {
                *xh /= std;
                g_sum += g * w;
                gx_sum += g * w * *xh;
            }
            let (g_mean, gx_mean) = (g_sum * inv_d, gx_sum * inv_d);
            for ((dx, &g), &w) in dx.iter_mut().zip(g).zip(w) {
                *dx = (g * w - g_mean - *dx * gx_mean) / std;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `(x, g) ↦ [Σ_rows g ⊙ x̂; Σ_rows g]`, `[2, D]`: the gradients of LayerNorm's `w` and `b`.
struct LayerNormBwdParams {
    eps: f32,
}

impl CustomOp2 for LayerNormBwdParams {
    fn name(&self) -> &'static str {
        "fused-layer-norm-bwd-params"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, d) = rows_of(s1, l1, self.name())?;
        let (g, _) = rows_of(s2, l2, self.name())?;
        let rows = x.len().checked_div(d).unwrap_or(0);
        let out = column_sums(rows, d, 2, |range, acc| {
            let (dw, db) = acc.split_at_mut(d);
            let mut xh = vec![0f32; d];
            for r in range {
                let std = centre(&x[r * d..(r + 1) * d], self.eps, &mut xh);
                for (((dw, db), &xh), &g) in dw
                    .iter_mut()
                    .zip(db.iter_mut())
                    .zip(&xh)
                    .zip(&g[r * d..(r + 1) * d])
                {
                    *dw += g * (xh / std);
                    *db += g;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((2, d))))
    }
}

// ---------------------------------------------------------------------------------------------
// GELU

/// erf in f32 as a rational function, `x·P(x²)/Q(x²)` on x clamped to ±4 (beyond which erf
/// is ±1 in f32): the approximation of Eigen's and XLA's f32 erf, within 5e-7 of erf
/// everywhere, 4 ulps near ±1 (`erf_is_within_float_rounding`). Branch-free, so a loop of it
/// vectorises, which libm's `erff` (a call per value, with branches) does not.
#[inline(always)]
fn erf(x: f32) -> f32 {
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

/// The exact GELU, `x · Φ(x) = ½ x (1 + erf(x/√2))`, elementwise.
///
/// Backward: `∂L/∂x = g · (Φ(x) + x φ(x))` with `φ(x) = exp(−x²/2)/√(2π)`, in one pass. It
/// takes `Φ(x) = y / x` from the forward's result instead of evaluating erf again (the
/// forward computes `y` as `Φ(x) · x`, so this is Φ as the forward had it, to a rounding);
/// `Φ = ½` for `|x| < 1e-30`, where that division would lose precision.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

struct Gelu;

/// Values per row of the elementwise kernels (GELU, per-sample scaling), which split their
/// input into rows of this length (the last one shorter) for [`par_rows`].
const ELEMENTWISE_CHUNK: usize = 4096;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, _) = rows_of(s, l, self.name())?;
        let out = par_rows(x.len(), ELEMENTWISE_CHUNK, |c, y| {
            let x = &x[c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + y.len()];
            for (y, &x) in y.iter_mut().zip(x) {
                *y = (erf(x * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * x;
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        Ok(Some(x.apply_op3_no_bwd(y, &g, &GeluBwd)?))
    }
}

/// `(x, y, g) ↦ g · (Φ(x) + x φ(x))` with `Φ(x) = y / x`, elementwise.
struct GeluBwd;

impl CustomOp3 for GeluBwd {
    fn name(&self) -> &'static str {
        "fused-gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, _) = rows_of(s1, l1, self.name())?;
        let (y, _) = rows_of(s2, l2, self.name())?;
        let (g, _) = rows_of(s3, l3, self.name())?;
        // 1/√(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let out = par_rows(x.len(), ELEMENTWISE_CHUNK, |c, dx| {
            let part = c * ELEMENTWISE_CHUNK..c * ELEMENTWISE_CHUNK + dx.len();
            let (x, y, g) = (&x[part.clone()], &y[part.clone()], &g[part]);
            for (((dx, &x), &y), &g) in dx.iter_mut().zip(x).zip(y).zip(g) {
                let cdf = if x.abs() < 1e-30 { 0.5 } else { y / x };
                let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
                *dx = g * (cdf + x * pdf);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Per-sample scaling (drop path)

/// `x + y` with sample `i` of `y` `[B, ...]` multiplied by `factors[i]`: a residual branch
/// under drop path's mask, added to the stream in one pass and without a broadcast mask
/// tensor.
///
/// Backward: `∂L/∂x = g` (passed on, no copy), `∂L/∂y = g` with sample `i` multiplied by
/// `factors[i]`; the factors are constants (candle's `Mul` backward would also compute a
/// gradient for the mask).
pub fn add_scaled_samples(x: &Tensor, y: &Tensor, factors: &[f32]) -> Result<Tensor> {
    if y.dim(0)? != factors.len() || x.dims() != y.dims() {
        return Err(candle_core::Error::Msg(format!(
            "add_scaled_samples: {} factors for {:?} added to {:?}",
            factors.len(),
            y.dims(),
            x.dims()
        )));
    }
    if !(fused(x) && fused(y)) {
        let mut shape = vec![1; y.rank()];
        shape[0] = factors.len();
        let mask = Tensor::from_slice(factors, shape, y.device())?.to_dtype(y.dtype())?;
        return x + y.broadcast_mul(&mask)?;
    }
    x.contiguous()?.apply_op2(
        &y.contiguous()?,
        AddScaledSamples {
            factors: factors.to_vec(),
        },
    )
}

/// Fills `out`, the values from flat index `start` of a `[B, ...]` tensor of `per_sample`
/// values a sample, by `f(sample's factor, offset in out, offset in the tensor, values)` for
/// the part of it in each sample.
fn by_sample(
    factors: &[f32],
    per_sample: usize,
    start: usize,
    out: &mut [f32],
    f: impl Fn(f32, usize, &mut [f32]),
) {
    let mut at = 0;
    while at < out.len() {
        let sample = (start + at) / per_sample;
        let stop = out.len().min((sample + 1) * per_sample - start);
        f(factors[sample], start + at, &mut out[at..stop]);
        at = stop;
    }
}

struct AddScaledSamples {
    factors: Vec<f32>,
}

impl CustomOp2 for AddScaledSamples {
    fn name(&self) -> &'static str {
        "fused-add-scaled-samples"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, _) = rows_of(s1, l1, self.name())?;
        let (y, _) = rows_of(s2, l2, self.name())?;
        let per_sample = y.len() / self.factors.len().max(1);
        let out = par_rows(y.len(), ELEMENTWISE_CHUNK, |c, out| {
            by_sample(
                &self.factors,
                per_sample,
                c * ELEMENTWISE_CHUNK,
                out,
                |f, at, out| {
                    let (x, y) = (&x[at..at + out.len()], &y[at..at + out.len()]);
                    for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                        *o = x + y * f;
                    }
                },
            );
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let scaled = g.contiguous()?.apply_op1_no_bwd(&ScaleSamples {
            factors: &self.factors,
        })?;
        Ok((Some(g.clone()), Some(scaled)))
    }
}

/// `g` `[B, ...]` with sample `i` multiplied by `factors[i]`.
struct ScaleSamples<'a> {
    factors: &'a [f32],
}

impl CustomOp1 for ScaleSamples<'_> {
    fn name(&self) -> &'static str {
        "fused-scale-samples"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, _) = rows_of(s, l, self.name())?;
        let per_sample = g.len() / self.factors.len().max(1);
        let out = par_rows(g.len(), ELEMENTWISE_CHUNK, |c, out| {
            by_sample(
                self.factors,
                per_sample,
                c * ELEMENTWISE_CHUNK,
                out,
                |f, at, out| {
                    let g = &g[at..at + out.len()];
                    for (o, &g) in out.iter_mut().zip(g) {
                        *o = g * f;
                    }
                },
            );
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
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
