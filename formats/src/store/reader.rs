//! Reading committed rows: metadata in memory, targets on demand.

use half::f16;
use ndarray::Array4;

use super::{ImageEntry, Result, RowMeta, StoreHeader, VerifyReport};
use crate::hash::Hash32;

/// Read access to every committed row of a store. `Send + Sync`: parallel loader threads share
/// one reader. Row metadata and the merged image tables are held in memory; targets are read
/// (one inner chunk per array) on demand.
pub struct StoreReader {
    header: StoreHeader,
    rows: Vec<RowMeta>,
}

impl StoreReader {
    /// What every row shares.
    pub fn header(&self) -> &StoreHeader {
        &self.header
    }

    /// Number of committed rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the store has no committed row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Metadata of row `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    pub fn row(&self, i: usize) -> &RowMeta {
        &self.rows[i]
    }

    /// The image-table entry of an image hash (tables of all segments merged).
    pub fn image(&self, hash: &Hash32) -> Option<&ImageEntry> {
        let _ = hash;
        todo!()
    }

    /// The raw encoded targets of row `i` (length `encoding.row_len(geometry)`).
    pub fn targets(&self, i: usize) -> Result<Vec<f16>> {
        let _ = i;
        todo!()
    }

    /// The relation maps of row `i`, decoded from any encoding: `[2, H, N, N]`.
    pub fn maps(&self, i: usize) -> Result<Array4<f32>> {
        let _ = i;
        todo!()
    }

    /// Reads every row's chunks (crc32c checked by the codec) and recomputes every row's
    /// content key from (teacher, block, encoding, image, view).
    pub fn verify(&self) -> Result<VerifyReport> {
        todo!()
    }
}
