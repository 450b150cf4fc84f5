//! The source image set: a folder walked in sorted order, ImageNet's `<class>/<file>` layout
//! giving labels, and `--shard i/n` selecting images by their content hash.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tinymim_formats::Hash32;

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// One image file of the source set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path on disk.
    pub path: PathBuf,
    /// Path relative to the source root, `/`-separated (what the store records).
    pub relative: String,
    /// The top-level folder under the root (ImageNet's class folder); `None` for files directly
    /// in the root.
    pub label: Option<String>,
}

/// Why the source folder could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A folder could not be read.
    #[error("{path}: cannot list folder: {source}")]
    List {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A path is not valid UTF-8 (the store records paths as text).
    #[error("{path}: the path is not valid UTF-8")]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
}

/// Every image file under `root` (recursively), sorted by relative path.
pub fn walk(root: &Path) -> Result<Vec<SourceFile>, SourceError> {
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|source| SourceError::List {
            path: folder.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| SourceError::List {
                path: folder.clone(),
                source,
            })?;
            let path = entry.path();
            // Follows symbolic links, as an image folder of links is common.
            if path.is_dir() {
                folders.push(path);
            } else if is_image(&path) {
                files.push(source_file(root, path)?);
            }
        }
    }
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn source_file(root: &Path, path: PathBuf) -> Result<SourceFile, SourceError> {
    let rel = path.strip_prefix(root).unwrap_or(&path);
    let parts: Vec<&str> = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<_>>()
        .ok_or_else(|| SourceError::NotUtf8 { path: path.clone() })?;
    let label = (parts.len() > 1).then(|| parts[0].to_string());
    Ok(SourceFile {
        relative: parts.join("/"),
        label,
        path,
    })
}

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
    fn walk_sorts_labels_class_folders_and_skips_non_images() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("n02/sub")).unwrap();
        std::fs::create_dir_all(root.join("n01")).unwrap();
        for f in [
            "n02/b.JPEG",
            "n02/sub/c.png",
            "n01/a.jpg",
            "top.png",
            "notes.txt",
            "n01/x.gif",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let files = walk(root).unwrap();
        let got: Vec<(&str, Option<&str>)> = files
            .iter()
            .map(|f| (f.relative.as_str(), f.label.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("n01/a.jpg", Some("n01")),
                ("n02/b.JPEG", Some("n02")),
                ("n02/sub/c.png", Some("n02")),
                ("top.png", None),
            ]
        );
    }

    #[test]
    fn walk_of_a_missing_folder_names_it() {
        let err = walk(Path::new("/no/such/folder")).unwrap_err().to_string();
        assert!(err.contains("/no/such/folder"), "{err}");
    }

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
