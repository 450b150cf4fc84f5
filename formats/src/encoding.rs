//! The encodings of a view's relation targets in the store, and [`Targets`], the stored values
//! of one or more rows in their encoding's element type.

use half::f16;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use crate::teacher::TeacherGeometry;

/// How a view's relation targets are stored. The float16 encodings decode to the same relation
/// maps within float16 rounding, `ln1-int8` within its 8-bit rounding (see `relation`, and
/// BENCHMARKS.md for what each costs in KL).
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
    /// LN1(x) in 8 bits: `[N, D]` int8 with one float16 scale per channel of the row, `[D]`
    /// (x ≈ value · scale; [`crate::quant`], per-channel layout), half of `ln1`'s bytes.
    #[serde(rename = "ln1-int8")]
    Ln1Int8,
}

impl Encoding {
    /// All encodings, in their canonical order.
    pub const ALL: [Encoding; 4] = [
        Encoding::Maps,
        Encoding::Qkv,
        Encoding::Ln1,
        Encoding::Ln1Int8,
    ];

    /// The name used on the command line, in store attributes and as the target array's name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Maps => "maps",
            Encoding::Qkv => "qkv",
            Encoding::Ln1 => "ln1",
            Encoding::Ln1Int8 => "ln1-int8",
        }
    }

    /// The one-byte tag of this encoding inside a content key (never change these).
    pub fn tag(self) -> u8 {
        match self {
            Encoding::Maps => 1,
            Encoding::Qkv => 2,
            Encoding::Ln1 => 3,
            Encoding::Ln1Int8 => 4,
        }
    }

    /// True for the encodings that store the target block's input LN1(x): decoding them needs
    /// the block's qkv weight and bias (stored once per store), and any head split of q/k/v
    /// can be formed from them.
    pub fn stores_ln1(self) -> bool {
        matches!(self, Encoding::Ln1 | Encoding::Ln1Int8)
    }

    /// The element type of the target array, as Zarr names it.
    pub fn dtype(self) -> &'static str {
        match self {
            Encoding::Ln1Int8 => "int8",
            _ => "float16",
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
            Encoding::Ln1 | Encoding::Ln1Int8 => vec![n, dim],
        }
    }

    /// Shape of one row's scale array (without the leading row axis): `[D]` for `ln1-int8`;
    /// `None` for the float16 encodings, which have none.
    pub fn scale_shape(self, g: &TeacherGeometry) -> Option<Vec<u64>> {
        (self == Encoding::Ln1Int8).then(|| vec![g.dim as u64])
    }

    /// Number of values in one row's target array.
    pub fn row_len(self, g: &TeacherGeometry) -> usize {
        self.row_shape(g).iter().product::<u64>() as usize
    }

    /// Number of scales of one row (0 for the float16 encodings).
    pub fn scale_len(self, g: &TeacherGeometry) -> usize {
        self.scale_shape(g)
            .map_or(0, |s| s.iter().product::<u64>() as usize)
    }

    /// Bytes of one row before compression: its values and its float16 scales.
    pub fn row_bytes(self, g: &TeacherGeometry) -> u64 {
        let value_bytes = if self == Encoding::Ln1Int8 { 1 } else { 2 };
        (value_bytes * self.row_len(g) + 2 * self.scale_len(g)) as u64
    }

    /// The number of rows `targets` holds, checked against this encoding: its element type (a
    /// [`StoreError::Mismatch`]), a positive whole number of rows of values, and as many rows of
    /// scales (each a [`StoreError::Length`]). `what` names the targets in the errors.
    pub fn count_rows(
        self,
        g: &TeacherGeometry,
        targets: &Targets,
        what: &str,
    ) -> Result<usize, StoreError> {
        if targets.dtype() != self.dtype() {
            return Err(StoreError::Mismatch {
                what: format!("the element type of {what}"),
                store: self.dtype().to_string(),
                writer: targets.dtype().to_string(),
            });
        }
        let (values, scales) = targets.lens();
        let rows = values / self.row_len(g).max(1);
        for (what, per_row, got) in [
            (what.to_string(), self.row_len(g), values),
            (format!("{what} (scales)"), self.scale_len(g), scales),
        ] {
            if rows == 0 || got != per_row * rows {
                return Err(StoreError::Length {
                    what,
                    expected: per_row * rows.max(1),
                    got,
                });
            }
        }
        Ok(rows)
    }

    /// Like [`count_rows`](Self::count_rows), for exactly one row.
    pub fn check_row(
        self,
        g: &TeacherGeometry,
        targets: &Targets,
        what: &str,
    ) -> Result<(), StoreError> {
        match self.count_rows(g, targets, what)? {
            1 => Ok(()),
            rows => Err(StoreError::Length {
                what: what.to_string(),
                expected: self.row_len(g),
                got: rows * self.row_len(g),
            }),
        }
    }

    /// No rows of this encoding: the start of a batch that rows are appended to.
    pub fn no_targets(self) -> Targets {
        match self {
            Encoding::Ln1Int8 => Targets::Int8 {
                values: Vec::new(),
                scales: Vec::new(),
            },
            _ => Targets::Half(Vec::new()),
        }
    }
}

/// The stored targets of one or more rows, back to back, in their encoding's element types.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// float16 values (`maps`, `qkv`, `ln1`).
    Half(Vec<f16>),
    /// `ln1-int8`: int8 values `[R, N, D]` and every row's per-channel scales `[R, D]`.
    Int8 {
        /// The quantised values, row-major.
        values: Vec<i8>,
        /// One float16 scale per channel of each row.
        scales: Vec<f16>,
    },
}

impl Targets {
    /// The element type of the values, as Zarr names it ([`Encoding::dtype`]).
    pub fn dtype(&self) -> &'static str {
        match self {
            Targets::Half(_) => "float16",
            Targets::Int8 { .. } => "int8",
        }
    }

    /// Numbers of values and of scales held.
    pub fn lens(&self) -> (usize, usize) {
        match self {
            Targets::Half(values) => (values.len(), 0),
            Targets::Int8 { values, scales } => (values.len(), scales.len()),
        }
    }

    /// Appends the rows of `other`.
    ///
    /// # Panics
    /// If `other` holds the other element type (rows of another encoding).
    pub fn append(&mut self, other: &Targets) {
        match (self, other) {
            (Targets::Half(values), Targets::Half(more)) => values.extend_from_slice(more),
            (
                Targets::Int8 { values, scales },
                Targets::Int8 {
                    values: more,
                    scales: more_scales,
                },
            ) => {
                values.extend_from_slice(more);
                scales.extend_from_slice(more_scales);
            }
            _ => panic!("rows of a float16 and of an int8 encoding cannot be joined"),
        }
    }

    /// Truncates to `lens` (values, scales) values, or pads with zeros up to them.
    pub fn resize(&mut self, (value_len, scale_len): (usize, usize)) {
        match self {
            Targets::Half(values) => values.resize(value_len, f16::ZERO),
            Targets::Int8 { values, scales } => {
                values.resize(value_len, 0);
                scales.resize(scale_len, f16::ZERO);
            }
        }
    }

    /// The values the rows stand for, as f32: float16 widened, int8 times its channel's scale.
    /// `dim` is the width D of an int8 row's channels (unused for float16).
    ///
    /// # Panics
    /// If an int8 batch holds fewer than `dim` scales per row.
    pub fn to_f32(&self, dim: usize) -> Vec<f32> {
        match self {
            Targets::Half(values) => values.iter().map(|v| v.to_f32()).collect(),
            Targets::Int8 { values, scales } => {
                if values.is_empty() || dim == 0 {
                    return Vec::new();
                }
                let scales: Vec<f32> = scales.iter().map(|s| s.to_f32()).collect();
                let row_len = values.len() / (scales.len() / dim).max(1);
                values
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| f32::from(v) * scales[j / row_len * dim + j % dim])
                    .collect()
            }
        }
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
            .ok_or_else(|| format!("unknown encoding `{s}` (expected maps, qkv, ln1 or ln1-int8)"))
    }
}
