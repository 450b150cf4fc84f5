//! The k-NN probe: DINO's weighted k-NN on L2-normalised features.
//!
//! Cosine similarity to every training feature; the k nearest vote with weight
//! exp(similarity / [`VOTE_TEMPERATURE`]); ties go to the first class in sorted order.

/// Temperature of the k-NN vote weights exp(s / T).
pub const VOTE_TEMPERATURE: f64 = 0.07;

/// Weighted k-NN top-1 accuracy: `train` and `test` are L2-normalised features `[n, D]`.
pub fn knn_top1(
    train: &[Vec<f32>],
    train_labels: &[usize],
    test: &[Vec<f32>],
    test_labels: &[usize],
    k: usize,
) -> f64 {
    if test.is_empty() {
        return 0.0;
    }
    let classes = train_labels.iter().max().map_or(0, |m| m + 1);
    let correct = test
        .iter()
        .zip(test_labels)
        .filter(|(query, &label)| {
            let mut sims: Vec<(f32, usize)> = train
                .iter()
                .zip(train_labels)
                .map(|(t, &l)| (t.iter().zip(query.iter()).map(|(a, b)| a * b).sum(), l))
                .collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut votes = vec![0f64; classes];
            for &(s, l) in sims.iter().take(k) {
                votes[l] += (f64::from(s) / VOTE_TEMPERATURE).exp();
            }
            let best = votes
                .iter()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |acc, (c, &v)| if v > acc.1 { (c, v) } else { acc },
                );
            best.0 == label
        })
        .count();
    correct as f64 / test.len() as f64
}

/// `rows`, each scaled to unit L2 norm.
pub fn l2_normalized(rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
    rows.iter()
        .map(|row| {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter().map(|x| x / norm).collect()
        })
        .collect()
}
