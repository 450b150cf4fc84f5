//! The order rows are visited in: a fresh permutation of the canonical row list every epoch,
//! drawn from the run seed, so that any step's batch can be recomputed (resume) without
//! replaying the earlier epochs. With `--group-views` (FKD-style) the permutation is of images
//! instead, each image's views kept together, so that a micro-batch decodes each of its images
//! once for all the views it holds.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tinymim_formats::Hash32;

use super::rows::RowSet;

/// The permutation of `0..rows` visited in epoch `epoch` of a run seeded with `seed`: a
/// Fisher–Yates shuffle driven by ChaCha8 seeded with `seed` on stream `epoch`.
pub fn epoch_order(rows: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut rng);
    order
}

/// The order of epoch `epoch` with each image's rows together: the images (`images[i]` is row
/// i's, in their canonical order of first appearance) are shuffled as [`epoch_order`] shuffles
/// rows, and each image's rows follow in canonical order.
pub fn grouped_epoch_order(images: &[Hash32], seed: u64, epoch: u64) -> Vec<usize> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<&Hash32, usize> = HashMap::new();
    for (row, image) in images.iter().enumerate() {
        let g = *index.entry(image).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(row);
    }
    epoch_order(groups.len(), seed, epoch)
        .into_iter()
        .flat_map(|g| std::mem::take(&mut groups[g]))
        .collect()
}

/// How a run walks its rows: micro-batches of `batch` rows, `accum` micro-batches per
/// optimiser step, whole steps per epoch (the incomplete tail of an epoch is dropped, like
/// PyTorch's `drop_last`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPlan {
    /// Rows in the training set.
    pub rows: usize,
    /// Rows per micro-batch (one forward pass).
    pub batch: usize,
    /// Micro-batches per optimiser step.
    pub accum: usize,
    /// Run seed.
    pub seed: u64,
    /// Each image's views visited together ([`grouped_epoch_order`]) instead of every row
    /// shuffled on its own ([`epoch_order`]).
    pub group_views: bool,
}

impl BatchPlan {
    /// The order `rows` are visited in during epoch `epoch`.
    pub fn epoch_order(&self, rows: &RowSet, epoch: u64) -> Vec<usize> {
        if self.group_views {
            let images: Vec<Hash32> = rows.rows().iter().map(|r| r.image).collect();
            grouped_epoch_order(&images, self.seed, epoch)
        } else {
            epoch_order(rows.len(), self.seed, epoch)
        }
    }

    /// Optimiser steps per epoch: ⌊rows / (batch · accum)⌋ (0 when one step needs more rows
    /// than the set has).
    pub fn steps_per_epoch(&self) -> u64 {
        (self.rows / (self.batch * self.accum).max(1)) as u64
    }

    /// Micro-batches per epoch.
    fn micro_per_epoch(&self) -> u64 {
        self.steps_per_epoch() * self.accum as u64
    }

    /// The epoch micro-batch `micro` (counted from the start of the run) belongs to.
    pub fn epoch_of(&self, micro: u64) -> u64 {
        micro / self.micro_per_epoch().max(1)
    }

    /// The canonical row indices of micro-batch `micro`, given its epoch's order.
    pub fn micro_rows<'a>(&self, micro: u64, order: &'a [usize]) -> &'a [usize] {
        let within = (micro % self.micro_per_epoch().max(1)) as usize;
        &order[within * self.batch..(within + 1) * self.batch]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_distinct_reproducible_permutations() {
        let a = epoch_order(50, 7, 0);
        assert_eq!(a, epoch_order(50, 7, 0));
        assert_ne!(a, epoch_order(50, 7, 1), "each epoch reshuffles");
        assert_ne!(a, epoch_order(50, 8, 0), "the seed matters");
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn grouped_orders_keep_each_images_views_together_and_shuffle_the_images() {
        // 6 images × 3 views, rows interleaved as a store may hold them.
        let images: Vec<Hash32> = (0..18)
            .map(|r| Hash32::of_bytes(&[(r % 6) as u8]))
            .collect();
        let order = grouped_epoch_order(&images, 3, 0);
        assert_eq!(order, grouped_epoch_order(&images, 3, 0));
        assert_ne!(order, grouped_epoch_order(&images, 3, 1));
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..18).collect::<Vec<_>>());
        for group in order.chunks(3) {
            assert!(
                group.iter().all(|&r| images[r] == images[group[0]]),
                "{order:?}"
            );
            assert!(
                group.windows(2).all(|w| w[0] < w[1]),
                "canonical within an image"
            );
        }
        // The images visit in the order `epoch_order` shuffles six items.
        let first: Vec<usize> = order.chunks(3).map(|g| g[0]).collect();
        assert_eq!(first, epoch_order(6, 3, 0));
    }

    #[test]
    fn micro_batches_tile_each_epoch_without_the_tail() {
        let plan = BatchPlan {
            rows: 10,
            batch: 2,
            accum: 2,
            seed: 0,
            group_views: false,
        };
        assert_eq!(plan.steps_per_epoch(), 2);
        let order: Vec<usize> = (0..10).collect();
        assert_eq!(plan.micro_rows(0, &order), &[0, 1]);
        assert_eq!(plan.micro_rows(3, &order), &[6, 7]);
        assert_eq!(plan.epoch_of(3), 0);
        assert_eq!(plan.epoch_of(4), 1);
        assert_eq!(
            plan.micro_rows(4, &order),
            &[0, 1],
            "rows 8 and 9 are dropped"
        );
    }
}
