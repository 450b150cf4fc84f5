//! `--shard i/n`: one of n disjoint parts of the source image set, chosen by image hash. (The
//! set itself is [`tinymim_formats::images::walk`]'s, the rule `train` walks folders by.)

use std::str::FromStr;

use tinymim_formats::Hash32;

/// One of `count` disjoint parts of the source set, chosen by image hash (`--shard i/n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This part, `0 ≤ index < count`.
    pub index: u64,
    /// Number of parts.
    pub count: u64,
}

impl Shard {
    /// The whole set.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether the image with this hash belongs to this part.
    pub fn contains(&self, image: &Hash32) -> bool {
        let word = u64::from_le_bytes(image.0[..8].try_into().expect("8 bytes"));
        word % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a shard of the form i/n with 0 ≤ i < n");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u64, u64) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_images() {
        let shards: Vec<Shard> = (0..3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for seed in 0u8..50 {
            let h = Hash32::of_bytes(&[seed]);
            assert_eq!(shards.iter().filter(|s| s.contains(&h)).count(), 1);
            assert!(Shard::ALL.contains(&h));
        }
    }

    #[test]
    fn malformed_shards_are_refused() {
        for s in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(s.parse::<Shard>().is_err(), "{s}");
        }
        assert_eq!(
            "1/4".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 4 }
        );
    }
}
