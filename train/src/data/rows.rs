//! The training set as a list of rows (image hash, view), in a canonical order that does not
//! depend on how the rows were stored: sorted by (image hash, view).

use tinymim_formats::view::sample_views;
use tinymim_formats::{Hash32, StoreReader, View, ViewRecipe};

use super::error::{DataError, Result};
use super::images::FoundImage;

/// One training example: a view of a source image, and where its stored targets are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Row {
    /// blake3 of the source image's bytes.
    pub image: Hash32,
    /// The crop box and flip the targets were (or will be) computed on.
    pub view: View,
    /// Index of the row in the [`StoreReader`] (cache mode); `None` when targets are computed
    /// online.
    pub store_row: Option<usize>,
}

impl Row {
    /// The canonical sort key: image hash, then x, y, w, h, flip of the view.
    fn sort_key(&self) -> (Hash32, [u32; 5]) {
        let v = self.view;
        (self.image, [v.x, v.y, v.w, v.h, u32::from(v.flip)])
    }
}

/// Every row of a run, sorted by (image hash, view), so the same set of rows gets the same
/// order whether it comes from a store (whose order depends on its segments) or is sampled
/// online.
#[derive(Clone, Debug)]
pub struct RowSet {
    rows: Vec<Row>,
}

impl RowSet {
    /// Sorts `rows` into the canonical order; rows with the same image and view (an image
    /// present twice in a folder) are kept once.
    pub fn new(mut rows: Vec<Row>) -> RowSet {
        rows.sort_by_key(Row::sort_key);
        rows.dedup_by_key(|r| r.sort_key());
        RowSet { rows }
    }

    /// All committed rows of a store; a store without any is refused, naming `store`.
    pub fn from_store(reader: &StoreReader, store: &std::path::Path) -> Result<RowSet> {
        if reader.is_empty() {
            return Err(DataError::EmptyStore {
                store: store.to_path_buf(),
            });
        }
        Ok(RowSet::new(
            (0..reader.len())
                .map(|i| {
                    let meta = reader.row(i);
                    Row {
                        image: meta.image,
                        view: meta.view,
                        store_row: Some(i),
                    }
                })
                .collect(),
        ))
    }

    /// Views `0..views` of every image, drawn with `recipe` exactly as `extract` draws them
    /// ([`sample_views`]), for targets computed online.
    pub fn sampled(images: &[FoundImage], recipe: &ViewRecipe, views: u32) -> RowSet {
        RowSet::new(
            images
                .iter()
                .flat_map(|image| {
                    sample_views(recipe, &image.hash, image.width, image.height, views)
                        .into_iter()
                        .map(|view| Row {
                            image: image.hash,
                            view,
                            store_row: None,
                        })
                })
                .collect(),
        )
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Row `i` of the canonical order.
    pub fn get(&self, i: usize) -> &Row {
        &self.rows[i]
    }

    /// The rows in canonical order.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// blake3 over every row's image hash and view in canonical order: equal for the same
    /// training set in cache and online mode; a resumed run checks it.
    pub fn digest(&self) -> Hash32 {
        let mut hasher = blake3::Hasher::new();
        for row in &self.rows {
            let (image, view) = row.sort_key();
            hasher.update(&image.0);
            for v in view {
                hasher.update(&v.to_le_bytes());
            }
        }
        Hash32(*hasher.finalize().as_bytes())
    }
}
