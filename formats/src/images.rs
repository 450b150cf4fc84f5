//! Image folders, walked by one rule for both phases (`extract`'s source set, `train`'s images
//! and the probe's labelled folders), so that one folder means the same images and labels in
//! each:
//!
//! - every file whose extension is one of [`IMAGE_EXTENSIONS`] (any case) is an image; what it
//!   holds is recognised by content when it is decoded;
//! - symbolic links are followed, to files and to folders (an image folder of links is
//!   common); a folder reached a second time — a link cycle, or two links to one folder — is
//!   walked once, at its first path in sorted order;
//! - the label is the top-level folder under the root (ImageNet's and torchvision's
//!   `ImageFolder` layout `<class>/…/<file>`); files directly in the root have none;
//! - images are listed sorted by their `/`-separated path relative to the root.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

/// File extensions read as images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff"];

/// One image file of a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// Path on disk (under the root as walked, links not resolved).
    pub path: PathBuf,
    /// Path relative to the root, `/`-separated.
    pub relative: String,
    /// The top-level folder under the root; `None` for files directly in the root.
    pub label: Option<String>,
}

/// Why an image folder could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// A folder could not be read.
    #[error("{path}: cannot list folder: {source}")]
    List {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A path is not valid UTF-8 (stores and labels record paths as text).
    #[error("{path}: the path is not valid UTF-8")]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
}

/// Every image file under `root`, by the rules of this module.
pub fn walk(root: &Path) -> Result<Vec<ImageFile>, WalkError> {
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    walk_folder(root, root, &mut seen, &mut files)?;
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// Whether `relative` is a path [`walk`] could give: relative to the root, `/`-separated, with
/// no empty, `.` or `..` part, so that joining it to the root names a file under the root. A
/// store's image table is made elsewhere: its paths are checked by this before one is opened.
pub fn is_under_root(relative: &str) -> bool {
    // `"".split('/')` is one empty part: the empty path is refused too.
    relative
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..")
        && Path::new(relative)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// A file's modification time as image tables record it: nanoseconds since the Unix epoch
/// (`None` where the file system gives none, or one before the epoch).
pub fn modification_time(metadata: &std::fs::Metadata) -> Option<i64> {
    let since = metadata
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    i64::try_from(since.as_nanos()).ok()
}

/// Whether `path`'s extension is one of [`IMAGE_EXTENSIONS`].
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn walk_folder(
    root: &Path,
    folder: &Path,
    seen: &mut HashSet<PathBuf>,
    files: &mut Vec<ImageFile>,
) -> Result<(), WalkError> {
    let list = |source| WalkError::List {
        path: folder.to_path_buf(),
        source,
    };
    if !seen.insert(std::fs::canonicalize(folder).map_err(list)?) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .map_err(list)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(list)?;
    entries.sort();
    for path in entries {
        // `is_dir` follows links; a dangling link is no folder and is listed by its name
        // (decoding it then reports it missing).
        if path.is_dir() {
            walk_folder(root, &path, seen, files)?;
        } else if is_image_name(&path) {
            files.push(image_file(root, path)?);
        }
    }
    Ok(())
}

fn image_file(root: &Path, path: PathBuf) -> Result<ImageFile, WalkError> {
    let rel = path.strip_prefix(root).unwrap_or(&path);
    let parts: Vec<&str> = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<_>>()
        .ok_or_else(|| WalkError::NotUtf8 { path: path.clone() })?;
    let label = (parts.len() > 1).then(|| parts[0].to_string());
    Ok(ImageFile {
        relative: parts.join("/"),
        label,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(root: &Path) -> Vec<(String, Option<String>)> {
        walk(root)
            .unwrap()
            .into_iter()
            .map(|f| (f.relative, f.label))
            .collect()
    }

    fn owned(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(r, l)| (r.to_string(), l.map(str::to_string)))
            .collect()
    }

    #[test]
    fn walk_sorts_labels_by_top_level_folder_and_skips_non_images() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("n02/sub")).unwrap();
        std::fs::create_dir_all(root.join("n01")).unwrap();
        for f in [
            "n02/b.JPEG",
            "n02/sub/c.png",
            "n01/a.jpg",
            "n01/d.WebP",
            "n01/e.tiff",
            "top.bmp",
            "notes.txt",
            "n01/x.gif",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        assert_eq!(
            listing(root),
            owned(&[
                ("n01/a.jpg", Some("n01")),
                ("n01/d.WebP", Some("n01")),
                ("n01/e.tiff", Some("n01")),
                ("n02/b.JPEG", Some("n02")),
                ("n02/sub/c.png", Some("n02")),
                ("top.bmp", None),
            ])
        );
    }

    #[cfg(unix)]
    #[test]
    fn links_are_followed_once_and_cycles_end() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("cats")).unwrap();
        std::fs::write(data.join("cats/a.jpg"), b"x").unwrap();
        std::fs::write(data.join("b.png"), b"x").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("dogs")).unwrap();
        // A linked class folder, a linked file, a second link to the same folder and a cycle.
        symlink(data.join("cats"), root.join("cats")).unwrap();
        symlink(data.join("cats"), root.join("felines")).unwrap();
        symlink(data.join("b.png"), root.join("dogs/b.png")).unwrap();
        symlink(&root, root.join("dogs/again")).unwrap();
        symlink(data.join("gone.jpg"), root.join("dogs/gone.jpg")).unwrap();
        assert_eq!(
            listing(&root),
            owned(&[
                ("cats/a.jpg", Some("cats")),
                ("dogs/b.png", Some("dogs")),
                ("dogs/gone.jpg", Some("dogs")),
            ])
        );
    }

    #[test]
    fn only_paths_under_the_root_are_under_the_root() {
        for good in [
            "a.jpg",
            "n01/a.JPEG",
            "n01/sub/a b.png",
            "..a/b..c.png",
            ".hidden/x.png",
        ] {
            assert!(is_under_root(good), "{good}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x.png",
            "a/../../x.png",
            "a/..",
            "./a.png",
            "a/./b.png",
            "a//b.png",
            "a/",
            "/",
        ] {
            assert!(!is_under_root(bad), "{bad}");
        }
    }

    #[test]
    fn walked_paths_are_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("n01/deep er")).unwrap();
        for f in ["n01/deep er/a.jpg", "n01/b.png", "c.webp"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        for file in walk(dir.path()).unwrap() {
            assert!(is_under_root(&file.relative), "{}", file.relative);
        }
    }

    #[test]
    fn walk_of_a_missing_folder_names_it() {
        let err = walk(Path::new("/no/such/folder")).unwrap_err().to_string();
        assert!(err.contains("/no/such/folder"), "{err}");
    }
}
