//! Source images: finding them under the source root, checking them before training, and
//! reading them back verified (blake3 of the bytes must equal the row's image hash).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tinymim_formats::images::walk;
use tinymim_formats::{Hash32, SourceImage, StoreReader};

use super::error::{DataError, Result};
use super::rows::RowSet;

/// An image found in an image folder ([`tinymim_formats::images::walk`]), with its hash and size.
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
    /// The top-level folder under the root (ImageNet layout: the class); `None` for files
    /// directly in the root.
    pub label: Option<String>,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// Every image under `folder`, walked by the rule both phases share
/// ([`tinymim_formats::images`]), hashed and decoded once (in parallel) for its size; sorted by
/// relative path. A folder without images is an error naming it; a file that does not decode
/// is an error naming the file.
pub fn scan_images(folder: &Path) -> Result<Vec<FoundImage>> {
    let files = walk(folder)?;
    if files.is_empty() {
        return Err(DataError::NoImages {
            folder: folder.to_path_buf(),
        });
    }
    files
        .into_par_iter()
        .map(|file| {
            let (image, hash) = SourceImage::open(&file.path)?;
            let size = std::fs::metadata(&file.path)
                .map_err(|e| DataError::io(&file.path, e))?
                .len();
            Ok(FoundImage {
                hash,
                relative: file.relative,
                size,
                label: file.label,
                width: image.width(),
                height: image.height(),
                path: file.path,
            })
        })
        .collect()
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
