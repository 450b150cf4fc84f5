//! Shards of an image set: which of `n` disjoint parts an image file belongs to
//! (`extract --shard i/n`).
//!
//! Membership is decided by the file's path relative to the source root, as
//! [`walk`](crate::images::walk) gives it and a store's image table records it (`/`-separated
//! UTF-8): the first 8 bytes of blake3(path), little-endian, modulo n. A process therefore knows
//! its part from the listing alone and reads only its own files, so n shards together read the
//! dataset once, and the assignment is the same on every machine that sees the same tree,
//! wherever the tree is mounted.
//!
//! Two identical files at different paths may land in different shards; each shard then
//! extracts that image, the two segments hold rows with the same content keys, and a reader
//! keeps one of them (the store's rows are unique by content key). Within one shard identical
//! bytes are extracted once.

use std::str::FromStr;

use crate::Hash32;

/// One of `count` disjoint parts of an image set, by relative path (`--shard i/n`).
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

    /// Whether the file at `relative` (relative to the source root, `/`-separated) belongs to
    /// this part.
    pub fn contains(&self, relative: &str) -> bool {
        self.count == 1 || part_of(relative, self.count) == self.index
    }
}

/// The part, out of `count`, that the file at `relative` belongs to.
fn part_of(relative: &str, count: u64) -> u64 {
    let hash = Hash32::of_bytes(relative.as_bytes());
    let word = u64::from_le_bytes(hash.0[..8].try_into().expect("8 bytes"));
    word % count
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

    fn paths() -> Vec<String> {
        (0..3000)
            .map(|i| format!("n{:08}/n{:08}_{i}.JPEG", i % 1000, i % 1000))
            .collect()
    }

    #[test]
    fn shards_partition_the_paths_evenly() {
        let shards: Vec<Shard> = (0..8).map(|i| format!("{i}/8").parse().unwrap()).collect();
        let mut sizes = [0usize; 8];
        for path in paths() {
            let owners: Vec<usize> = (0..8).filter(|&i| shards[i].contains(&path)).collect();
            assert_eq!(owners.len(), 1, "{path} belongs to {owners:?}");
            sizes[owners[0]] += 1;
            assert!(Shard::ALL.contains(&path));
        }
        // 375 expected per part; a binomial's standard deviation is ≈ 18.
        assert!(sizes.iter().all(|&n| (300..450).contains(&n)), "{sizes:?}");
    }

    #[test]
    fn membership_is_blake3_of_the_path_modulo_n() {
        // The documented rule, computed from the blake3 crate directly.
        for path in paths().iter().take(200) {
            let digest = blake3::hash(path.as_bytes());
            let word = u64::from_le_bytes(digest.as_bytes()[..8].try_into().unwrap());
            for n in [2u64, 3, 7, 64] {
                let shard = Shard {
                    index: word % n,
                    count: n,
                };
                assert!(shard.contains(path), "{path} not in {shard}");
            }
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
        assert_eq!(Shard { index: 1, count: 4 }.to_string(), "1/4");
    }
}
