//! The seeded, resumable random stream of training (drop path).

use rand::distr::{Bernoulli, Distribution};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dist::Part;

/// A seeded ChaCha8 stream whose exact position can be saved and restored, so that a run
/// resumed from a checkpoint draws the same drop-path masks as an uninterrupted one.
#[derive(Clone, Debug)]
pub struct TrainRng(ChaCha8Rng);

/// The saved position of a [`TrainRng`]: ChaCha8's key, stream and word position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte key the stream was seeded with.
    pub seed: [u8; 32],
    /// The stream number.
    pub stream: u64,
    /// Position in 32-bit words, as a decimal string (JSON numbers cannot hold a u128).
    pub word_pos: String,
}

impl TrainRng {
    /// A stream seeded from a 64-bit seed.
    pub fn from_seed(seed: u64) -> TrainRng {
        TrainRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// The current position, to be saved in a checkpoint.
    pub fn state(&self) -> RngState {
        RngState {
            seed: self.0.get_seed(),
            stream: self.0.get_stream(),
            word_pos: self.0.get_word_pos().to_string(),
        }
    }

    /// Restores a saved position; `None` if the word position is not a number.
    pub fn from_state(state: &RngState) -> Option<TrainRng> {
        let word_pos: u128 = state.word_pos.parse().ok()?;
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(word_pos);
        Some(TrainRng(rng))
    }
}

/// The drop-path draws of one process's samples of a micro-batch: every process draws one
/// coin per sample of the whole global micro-batch (`global` samples) from the same stream
/// and keeps the coins of its [`Part`], so the masks, and the stream's position after them,
/// are the one-process run's whatever the world size.
#[derive(Debug)]
pub struct SampleDraws<'a> {
    rng: &'a mut TrainRng,
    part: Part,
    global: usize,
}

impl<'a> SampleDraws<'a> {
    /// Draws for `part` of a global micro-batch of `global` samples ([`Part::WHOLE`] of the
    /// batch itself in one process).
    pub fn new(rng: &'a mut TrainRng, part: Part, global: usize) -> SampleDraws<'a> {
        SampleDraws { rng, part, global }
    }

    /// One value per local sample: `1/keep` where the sample's coin (kept with probability
    /// `keep`) says keep, else 0. `local` must be the part's sample count.
    pub(crate) fn keep_scales(&mut self, local: usize, keep: f64) -> Result<Vec<f32>, String> {
        let mine = self.part.range(self.global);
        if mine.len() != local {
            return Err(format!(
                "a part of {local} samples, but part {} of {} of a {}-sample micro-batch holds {}",
                self.part.index,
                self.part.count,
                self.global,
                mine.len()
            ));
        }
        let coin = Bernoulli::new(keep).map_err(|e| format!("keep probability {keep}: {e}"))?;
        let scale = (1.0 / keep) as f32;
        let all: Vec<f32> = (0..self.global)
            .map(|_| if coin.sample(self.rng) { scale } else { 0.0 })
            .collect();
        Ok(all[mine].to_vec())
    }
}

impl RngCore for TrainRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn restored_state_continues_the_same_stream() {
        let mut a = TrainRng::from_seed(7);
        for _ in 0..13 {
            a.next_u32();
        }
        let mut b = TrainRng::from_state(&a.state()).unwrap();
        let xs: Vec<f64> = (0..20).map(|_| a.random()).collect();
        let ys: Vec<f64> = (0..20).map(|_| b.random()).collect();
        assert_eq!(xs, ys);
    }

    #[test]
    fn parts_draw_the_whole_batchs_coins_and_keep_their_own() {
        let mut whole_rng = TrainRng::from_seed(5);
        let whole = SampleDraws::new(&mut whole_rng, Part::WHOLE, 9)
            .keep_scales(9, 0.5)
            .unwrap();
        assert!(whole.contains(&0.0) && whole.contains(&2.0), "{whole:?}");
        let mut joined = Vec::new();
        for index in 0..3 {
            let mut rng = TrainRng::from_seed(5);
            let part = Part { index, count: 3 };
            joined.extend(
                SampleDraws::new(&mut rng, part, 9)
                    .keep_scales(3, 0.5)
                    .unwrap(),
            );
            assert_eq!(
                rng.state(),
                whole_rng.state(),
                "every rank's stream advances alike"
            );
        }
        assert_eq!(joined, whole);
        let mut rng = TrainRng::from_seed(5);
        let err = SampleDraws::new(&mut rng, Part { index: 0, count: 2 }, 9)
            .keep_scales(5, 0.5)
            .unwrap_err();
        assert!(err.contains("holds 4"), "{err}");
    }

    #[test]
    fn garbage_word_position_is_refused() {
        let mut state = TrainRng::from_seed(1).state();
        state.word_pos = "twelve".into();
        assert!(TrainRng::from_state(&state).is_none());
    }
}
