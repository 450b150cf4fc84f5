//! The seeded, resumable random stream of training (drop path).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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
    fn garbage_word_position_is_refused() {
        let mut state = TrainRng::from_seed(1).state();
        state.word_pos = "twelve".into();
        assert!(TrainRng::from_state(&state).is_none());
    }
}
