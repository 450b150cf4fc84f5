//! The gradient sum of a data-parallel step: every gradient and the step's loss terms packed
//! into a few flat buckets, one all-reduce per bucket (not one per tensor, which for a ViT
//! would be ~150 small calls, each paying the collective's latency).

use candle_core::{DType, Tensor};

use super::World;
use crate::error::Result;
use crate::grads::Gradients;

/// Most f32 elements in one bucket (64 MiB): a ViT-S's gradients fit in one, a ViT-L's take
/// five; large enough that each sum runs at the link's bandwidth, small enough that the
/// packing copy stays a fraction of device memory.
pub const BUCKET_ELEMENTS: usize = 16 << 20;

/// Replaces `grads` by their sums over the world and returns the sum of `values` (a 1-D f32
/// tensor on the gradients' device, e.g. the step's loss terms), with one all-reduce per
/// bucket of at most [`BUCKET_ELEMENTS`] (a larger tensor alone in its bucket). `what` names
/// the step in a timeout's message. One process: nothing is copied or summed.
pub fn sum_over_world(
    world: &World,
    grads: &mut Gradients,
    values: &Tensor,
    what: &str,
) -> Result<Tensor> {
    if world.size() == 1 {
        return Ok(values.clone());
    }
    let mut pieces: Vec<Tensor> = vec![values.to_dtype(DType::F32)?];
    pieces.extend(
        grads
            .iter()
            .map(|(_, g)| g.to_dtype(DType::F32)?.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?,
    );
    let lengths: Vec<usize> = pieces.iter().map(Tensor::elem_count).collect();
    let mut summed = Vec::with_capacity(pieces.len());
    let buckets = bucket_bounds(&lengths, BUCKET_ELEMENTS);
    let count = buckets.len();
    for (b, range) in buckets.into_iter().enumerate() {
        let bucket = Tensor::cat(&pieces[range.clone()], 0)?;
        world.all_reduce_sum(&bucket, &format!("{what} (bucket {} of {count})", b + 1))?;
        let mut offset = 0;
        for &len in &lengths[range] {
            summed.push(bucket.narrow(0, offset, len)?);
            offset += len;
        }
    }
    let mut summed = summed.into_iter();
    let values = summed.next().expect("the values lead the first bucket");
    grads.replace_each(|g| {
        let sum = summed.next().expect("one sum per gradient");
        sum.reshape(g.shape())?.to_dtype(g.dtype())
    })?;
    Ok(values)
}

/// Consecutive ranges of `lengths` whose sums stay within `limit` (an item longer than the
/// limit alone in its range); together they cover every item in order.
fn bucket_bounds(lengths: &[usize], limit: usize) -> Vec<std::ops::Range<usize>> {
    let mut bounds = Vec::new();
    let (mut start, mut filled) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > start && filled + len > limit {
            bounds.push(start..i);
            (start, filled) = (i, 0);
        }
        filled += len;
    }
    if start < lengths.len() {
        bounds.push(start..lengths.len());
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_item_in_order_within_the_limit() {
        assert_eq!(
            bucket_bounds(&[3, 4, 2, 9, 1, 1], 8),
            vec![0..2, 2..3, 3..4, 4..6]
        );
        assert_eq!(bucket_bounds(&[8, 8], 8), vec![0..1, 1..2]);
        assert_eq!(bucket_bounds(&[1, 1, 1], 100), vec![0..3]);
        assert!(bucket_bounds(&[], 8).is_empty());
    }

    #[test]
    fn one_process_leaves_gradients_and_values_as_they_are() {
        let values = Tensor::new(&[0.5f32, 0.25], &candle_core::Device::Cpu).unwrap();
        let mut grads = Gradients::default();
        let out = sum_over_world(&World::single(), &mut grads, &values, "step").unwrap();
        assert_eq!(out.to_vec1::<f32>().unwrap(), vec![0.5, 0.25]);
    }
}
