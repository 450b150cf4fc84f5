//! `--shard i/n`: one of n disjoint parts of the source image set, by relative path
//! ([`tinymim_formats::shard`]; the set itself is [`tinymim_formats::images::walk`]'s, the rule
//! `train` walks folders by).
//! Without `--shard`, a process started by a launcher takes its part from the launcher
//! ([`choose_shard`], [`tinymim_formats::launch::extraction_part`]).

use std::collections::HashMap;

use tinymim_formats::launch::{extraction_part, LaunchError};
pub use tinymim_formats::shard::Shard;
use tinymim_formats::{Hash32, StoreReader};

/// The files a store has done, so that a rerun skips them without opening them: the path, size
/// and modification time recorded in the store's image tables for every image of which the
/// store holds at least `views` rows. A file whose path, size or modification time differs is
/// read again (and its views already committed are still skipped by content key).
#[derive(Debug, Default)]
pub struct DoneFiles {
    /// Relative path → (size, modification time) of each done image recorded at that path.
    files: HashMap<String, Vec<(u64, i64)>>,
}

impl DoneFiles {
    /// The done files of the store `reader` reads, for runs of `views` views per image.
    pub fn of(reader: &StoreReader, views: u32) -> Self {
        let mut rows: HashMap<Hash32, u32> = HashMap::new();
        for i in 0..reader.len() {
            *rows.entry(reader.row(i).image).or_default() += 1;
        }
        let mut files: HashMap<String, Vec<(u64, i64)>> = HashMap::new();
        for entry in reader.images() {
            let done = rows.get(&entry.hash).is_some_and(|&n| n >= views);
            if let (true, Some(modified)) = (done, entry.modified) {
                files
                    .entry(entry.path.clone())
                    .or_default()
                    .push((entry.size, modified));
            }
        }
        DoneFiles { files }
    }

    /// Whether the file at `relative` with this size and modification time is done.
    pub fn contains(&self, relative: &str, size: u64, modified: i64) -> bool {
        self.files
            .get(relative)
            .is_some_and(|seen| seen.contains(&(size, modified)))
    }
}

/// The shard this process handles and, when there is something to say, a line for stderr
/// saying where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenShard {
    /// The part of the images to extract.
    pub shard: Shard,
    /// `shard 1/2 from torchrun (RANK/WORLD_SIZE)`, or why the launcher's part was not taken.
    pub note: Option<String>,
}

/// The shard of this process: `given` (`--shard`) when there is one, the launcher's extraction
/// part (variables looked up with `get`) otherwise, else all images. A given shard wins over
/// the launcher, with a note when the launcher describes several parts or malformed variables.
pub fn choose_shard(
    given: Option<Shard>,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<ChosenShard, LaunchError> {
    let launcher = extraction_part(get);
    let Some(shard) = given else {
        return Ok(match launcher? {
            Some(part) => {
                let shard = Shard {
                    index: part.index,
                    count: part.count,
                };
                ChosenShard {
                    shard,
                    note: Some(format!("shard {shard} from {}", part.source)),
                }
            }
            None => ChosenShard {
                shard: Shard::ALL,
                note: None,
            },
        });
    };
    let note = match launcher {
        Ok(Some(part)) if part.count > 1 => Some(format!(
            "--shard {shard} overrides the launcher's part {}/{} ({})",
            part.index, part.count, part.source
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "--shard {shard} is used; the launcher's variables are ignored ({e})"
        )),
    };
    Ok(ChosenShard { shard, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup over `pairs`.
    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const TORCHRUN: [(&str, &str); 4] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29999"),
    ];

    #[test]
    fn without_shard_the_launchers_part_is_taken_else_all_images() {
        let chosen = choose_shard(None, &vars(&TORCHRUN)).unwrap();
        assert_eq!(chosen.shard, Shard { index: 1, count: 2 });
        assert_eq!(
            chosen.note.as_deref(),
            Some("shard 1/2 from torchrun (RANK/WORLD_SIZE)")
        );
        let alone = choose_shard(None, &vars(&[])).unwrap();
        assert_eq!((alone.shard, alone.note), (Shard::ALL, None));
        let err = choose_shard(None, &vars(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert_eq!(err.to_string(), "RANK=2 is not below WORLD_SIZE=2");
    }

    #[test]
    fn a_given_shard_wins_over_the_launcher_with_a_note() {
        let given = Some(Shard { index: 0, count: 4 });
        let chosen = choose_shard(given, &vars(&TORCHRUN)).unwrap();
        assert_eq!(chosen.shard, Shard { index: 0, count: 4 });
        let note = chosen.note.unwrap();
        assert!(
            note.contains("--shard 0/4 overrides") && note.contains("1/2"),
            "{note}"
        );
        let chosen = choose_shard(given, &vars(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap();
        let note = chosen.note.unwrap();
        assert!(
            note.contains("ignored") && note.contains("RANK=\"x\""),
            "{note}"
        );
        let quiet = choose_shard(given, &vars(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap();
        assert_eq!(quiet.note, None);
    }
}
