//! The encodings of a view's relation targets in the store.

use serde::{Deserialize, Serialize};

use crate::teacher::TeacherGeometry;

/// How a view's relation targets are stored. All three decode to the same relation maps
/// within float16 rounding (see `relation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// R_QK and R_VV themselves: `[2, H, N, N]` float16.
    Maps,
    /// q, k and v of the target block after the head split: `[3, H, N, d]` float16.
    Qkv,
    /// The target block's normalised input LN1(x): `[N, D]` float16; the block's qkv weight and
    /// bias are stored once per store.
    Ln1,
}

impl Encoding {
    /// All encodings, in their canonical order.
    pub const ALL: [Encoding; 3] = [Encoding::Maps, Encoding::Qkv, Encoding::Ln1];

    /// The name used on the command line, in store attributes and as the target array's name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Maps => "maps",
            Encoding::Qkv => "qkv",
            Encoding::Ln1 => "ln1",
        }
    }

    /// The one-byte tag of this encoding inside a content key (never change these).
    pub fn tag(self) -> u8 {
        match self {
            Encoding::Maps => 1,
            Encoding::Qkv => 2,
            Encoding::Ln1 => 3,
        }
    }

    /// Shape of one row's target array (without the leading row axis).
    pub fn row_shape(self, g: &TeacherGeometry) -> Vec<u64> {
        let (h, n, d, dim) = (
            g.heads as u64,
            g.tokens as u64,
            g.head_dim() as u64,
            g.dim as u64,
        );
        match self {
            Encoding::Maps => vec![2, h, n, n],
            Encoding::Qkv => vec![3, h, n, d],
            Encoding::Ln1 => vec![n, dim],
        }
    }

    /// Number of float16 values in one row's targets.
    pub fn row_len(self, g: &TeacherGeometry) -> usize {
        self.row_shape(g).iter().product::<u64>() as usize
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Encoding::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown encoding `{s}` (expected maps, qkv or ln1)"))
    }
}
