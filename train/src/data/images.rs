//! Source images: finding them under the source root, checking them before training, and
//! reading them back verified (blake3 of the bytes must equal the row's image hash).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tinymim_formats::{Hash32, SourceImage, StoreReader};

use super::error::{DataError, Result};
use super::rows::RowSet;

/// A JPEG or PNG found in an image folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundImage {
    /// blake3 of the file's bytes.
    pub hash: Hash32,
    /// Path relative to the folder, `/`-separated.
    pub relative: String,
    /// Full path.
    pub path: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// The parent folder's path relative to the root (ImageNet layout: the class); `None` for
    /// files directly in the root.
    pub label: Option<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Every `.jpg`, `.jpeg` and `.png` file under `folder` (recursively, case-insensitive
/// extensions), hashed and decoded once (in parallel) for its size; sorted by relative path.
/// A folder without images is an error naming it; a file that does not decode is an error
/// naming the file.
pub fn scan_images(folder: &Path) -> Result<Vec<FoundImage>> {
    let mut files = Vec::new();
    collect_files(folder, folder, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(DataError::NoImages {
            folder: folder.to_path_buf(),
        });
    }
    files
        .into_par_iter()
        .map(|relative| {
            let path = folder.join(&relative);
            let (image, hash) = SourceImage::open(&path)?;
            let size = std::fs::metadata(&path)
                .map_err(|e| DataError::io(&path, e))?
                .len();
            let label = relative
                .rsplit_once('/')
                .map(|(parent, _)| parent.to_string());
            Ok(FoundImage {
                hash,
                relative,
                size,
                label,
                width: image.width(),
                height: image.height(),
                path,
            })
        })
        .collect()
}

/// Appends the `/`-separated paths (relative to `root`) of the images under `dir`.
fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| DataError::io(&path, e))?;
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if is_image_name(&path) {
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}

/// Whether a file name ends in `.jpg`, `.jpeg` or `.png` (any case).
fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// Where each source image of a run lives, by image hash.
#[derive(Clone, Debug)]
pub struct ImageCatalog {
    files: BTreeMap<Hash32, PathBuf>,
}

impl ImageCatalog {
    /// The images of `rows`, looked up in the store's image table and joined to `root`. Every
    /// file must exist and have the size the store recorded, checked here before training
    /// starts; the hash itself is checked whenever the file is read.
    pub fn from_store(reader: &StoreReader, rows: &RowSet, root: &Path) -> Result<ImageCatalog> {
        let mut files = BTreeMap::new();
        for row in rows.rows() {
            if files.contains_key(&row.image) {
                continue;
            }
            let entry = reader
                .image(&row.image)
                .ok_or(DataError::UnknownImage { image: row.image })?;
            let path = root.join(&entry.path);
            let missing = |reason: String| DataError::MissingImage {
                path: path.clone(),
                image: row.image.short(),
                reason,
            };
            let meta = std::fs::metadata(&path).map_err(|e| missing(e.to_string()))?;
            if meta.len() != entry.size {
                return Err(missing(format!(
                    "{} bytes on disk, {} bytes at extraction",
                    meta.len(),
                    entry.size
                )));
            }
            files.insert(row.image, path);
        }
        Ok(ImageCatalog { files })
    }

    /// The images found by [`scan_images`].
    pub fn from_found(found: &[FoundImage]) -> ImageCatalog {
        ImageCatalog {
            files: found.iter().map(|f| (f.hash, f.path.clone())).collect(),
        }
    }

    /// Number of distinct images.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when the catalogue is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Reads image `hash`, checks that its bytes still hash to it, and decodes it.
    pub fn load(&self, hash: &Hash32) -> Result<SourceImage> {
        let path = self
            .files
            .get(hash)
            .ok_or(DataError::UnknownImage { image: *hash })?;
        let bytes = std::fs::read(path).map_err(|e| DataError::MissingImage {
            path: path.clone(),
            image: hash.short(),
            reason: e.to_string(),
        })?;
        let actual = Hash32::of_bytes(&bytes);
        if actual != *hash {
            return Err(DataError::ChangedImage {
                path: path.clone(),
                expected: hash.short(),
                actual: actual.short(),
            });
        }
        Ok(SourceImage::decode(&bytes, path)?)
    }
}
