//! How far decoded relation maps are from the teacher's exact ones, as the benchmarks report
//! it: the mean over rows of KL(exact ‖ decoded), each row's KL the mean over its 2·H·N query
//! rows of Σ_keys p·ln(p/q) (nats, as the loss counts it); the largest absolute error of a
//! probability; and the share of entries decoded as exactly 0, each counted as 2⁻²⁵ (the
//! largest value float16 rounds to 0) in the KL.

use ndarray::Array4;

/// The largest value float16 rounds to 0 (half its smallest subnormal, 2⁻²⁴).
const F16_ZERO: f64 = 1.0 / (1u64 << 25) as f64;

/// Accumulates rows of (exact, decoded) maps `[2, H, N, N]`.
#[derive(Clone, Debug, Default)]
pub struct Fidelity {
    /// Rows compared.
    pub rows: usize,
    kl_sum: f64,
    /// Largest |p − q| of one probability.
    pub max_abs: f64,
    zeros: usize,
    entries: usize,
}

impl Fidelity {
    /// Adds one row.
    pub fn add(&mut self, truth: &Array4<f32>, decoded: &Array4<f32>) {
        let (mut row_kl, mut queries) = (0.0, 0usize);
        for (p_row, q_row) in truth.rows().into_iter().zip(decoded.rows()) {
            for (&p, &q) in p_row.iter().zip(q_row.iter()) {
                let (p, q) = (f64::from(p), f64::from(q));
                self.max_abs = self.max_abs.max((p - q).abs());
                self.zeros += usize::from(q == 0.0);
                if p > 0.0 {
                    row_kl += p * (p / q.max(F16_ZERO)).ln();
                }
            }
            queries += 1;
            self.entries += p_row.len();
        }
        self.kl_sum += row_kl / queries as f64;
        self.rows += 1;
    }

    /// Mean KL(exact ‖ decoded) per row, in nats.
    pub fn mean_kl(&self) -> f64 {
        self.kl_sum / self.rows.max(1) as f64
    }

    /// Share of decoded entries that are exactly 0.
    pub fn zero_share(&self) -> f64 {
        self.zeros as f64 / self.entries.max(1) as f64
    }
}
