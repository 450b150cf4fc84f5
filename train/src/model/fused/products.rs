//! Products of many small matrices (the relation logits of every head, and the linear
//! layers' `x·Wᵀ`), and the single-threaded strided product ([`product`]) that they and the
//! attention heads run on.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{fused, rows_of};
use crate::pool::par_spans;

/// `dst (m×n, rows of dst_rs) = beta · lhs (m×k) · rhs (k×n)`, single-threaded; each operand is
/// given with its row and column strides, so a transpose is a swap of strides.
pub(super) fn product(
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
    if m == 0 || n == 0 {
        return;
    }
    // The offset of the last element an operand's view touches, checked (None: past usize).
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows - 1)
            .checked_mul(rs)?
            .checked_add((cols - 1).checked_mul(cs)?)
    };
    let within = |len: usize, last: Option<usize>| last.is_some_and(|last| last < len);
    assert!(
        within(dst.len(), last(m, dst_rs, n, 1)),
        "product output out of bounds"
    );
    if k == 0 {
        // An empty sum: `dst` keeps what it holds where accumulating, else becomes zero.
        if !accumulate {
            for row in 0..m {
                dst[row * dst_rs..row * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(
        within(lhs.len(), last(m, lhs_rs, k, lhs_cs))
            && within(rhs.len(), last(k, rhs_rs, n, rhs_cs)),
        "product operands out of bounds"
    );
    // SAFETY: m, n, k > 0 and every element gemm touches lies in its slice (checked above, in
    // arithmetic that cannot wrap); dst does not alias lhs or rhs (a `&mut` and two `&`
    // borrows).
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
pub(super) struct Products {
    pub(super) scale: f32,
    pub(super) lhs_t: bool,
    pub(super) rhs_t: bool,
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
    pub(super) fn compute(
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
                if out.is_empty() {
                    return; // no output columns (n = 0)
                }
                let (i, r0) = (t / blocks, (t % blocks) * rows_per_block);
                let lhs = &lhs[i * m * k + r0 * lhs_rs..(i + 1) * m * k];
                let rhs = &rhs[i * k * n..(i + 1) * k * n];
                if let Some(bias) = bias {
                    for row in out.chunks_exact_mut(n) {
                        row.copy_from_slice(bias);
                    }
                }
                product_into(
                    (m.min(r0 + rows_per_block) - r0, n, k),
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
    pub(super) fn grads(
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

#[cfg(test)]
mod tests {
    use super::super::reference::{check, check_all, normal};
    use crate::model::fused;
    use candle_core::Tensor;

    #[test]
    fn scaled_products_match_composite() {
        let f = |args: &[Tensor]| fused::scaled_products_nt(&args[0], &args[1], 0.25);
        // q·kᵀ of 2 samples × 3 heads, N = 17, d = 16; an uneven M, N and K too.
        let (a, b) = (
            normal(&[2, 3, 17, 16], 60, 1.0),
            normal(&[2, 3, 17, 16], 61, 1.0),
        );
        check_all("products", &f, &[a, b], false);
        let (a, b) = (normal(&[4, 5, 3], 62, 1.0), normal(&[4, 7, 3], 63, 1.0));
        check_all("products (M ≠ N)", &f, &[a, b], false);
        let (a, b) = (
            normal(&[2, 3, 16, 17], 64, 1.0),
            normal(&[2, 3, 17, 16], 65, 1.0),
        );
        check_all("products (transposed)", &f, &[a, b], true);
        // One large product (a linear layer's x·Wᵀ), its rows cut into blocks across tasks, and
        // its weight gradient (33 rows) too.
        let (x, w) = (normal(&[70, 24], 67, 1.0), normal(&[33, 24], 68, 1.0));
        check_all("products (one matrix, x·Wᵀ)", &f, &[x, w], false);
        // v·vᵀ: one tensor on both sides, whose gradient gathers both.
        let f = |x: &Tensor| fused::scaled_products_nt(x, x, 0.25);
        check(
            "products (v·vᵀ)",
            &f,
            &normal(&[2, 3, 17, 16], 66, 1.0),
            false,
        );
    }

    #[test]
    fn zero_sizes_give_empty_or_zero_products() {
        // A zero dimension once made the bounds check's `(rows − 1)·stride` wrap. No rows or no
        // columns: an empty result; an empty inner dimension: zeros, or the bias alone.
        let f = |a: &[usize], b: &[usize]| {
            let (a, b) = (normal(a, 70, 1.0), normal(b, 71, 1.0));
            let y = fused::scaled_products_nt(&a, &b, 0.5).unwrap();
            let (r, c) = (a.dims().len() - 2, b.dims().len() - 2);
            assert_eq!(
                y.dims(),
                [&a.dims()[..r], &[a.dims()[r], b.dims()[c]]].concat()
            );
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(f(&[2, 0, 4], &[2, 3, 4]).is_empty());
        assert!(f(&[2, 3, 4], &[2, 0, 4]).is_empty());
        assert!(f(&[0, 3, 4], &[0, 5, 4]).is_empty());
        assert_eq!(f(&[2, 3, 0], &[2, 5, 0]), vec![0.0; 30]);
        let bias = normal(&[5], 72, 1.0);
        let y = fused::linear(&normal(&[3, 0], 73, 1.0), &normal(&[5, 0], 74, 1.0), &bias).unwrap();
        let rows: Vec<Vec<f32>> = y.to_vec2().unwrap();
        let bias: Vec<f32> = bias.to_vec1().unwrap();
        assert!(rows.iter().all(|row| *row == bias), "{rows:?}");
        // The strided product itself: nothing written for m or n = 0, zeros for k = 0, and an
        // out-of-bounds operand refused rather than read.
        let mut dst = vec![7.0f32; 6];
        super::product((0, 3, 2), &mut dst, 3, (&[], 2, 1), (&[0.0; 6], 3, 1), 1.0);
        super::product((2, 0, 2), &mut dst, 3, (&[0.0; 4], 2, 1), (&[], 0, 1), 1.0);
        assert_eq!(dst, vec![7.0; 6]);
        super::product((2, 3, 0), &mut dst, 3, (&[], 0, 1), (&[], 3, 1), 1.0);
        assert_eq!(dst, vec![0.0; 6]);
        let short = std::panic::catch_unwind(|| {
            let mut dst = vec![0.0f32; 6];
            super::product(
                (2, 3, 2),
                &mut dst,
                3,
                (&[1.0; 3], 2, 1),
                (&[1.0; 6], 3, 1),
                1.0,
            );
        });
        assert!(short.is_err(), "a 3-value lhs for a 2×2 operand is refused");
    }
}
