//! Writing one segment: buffered rows, whole shards, an atomic watermark.

use half::f16;

use super::{ImageEntry, Result, RowMeta, SegmentInfo};

/// The single writer of one segment. Send it to the thread that extracts; see the module
/// documentation of [`store`](crate::store) for the commit protocol. Dropping it without
/// [`commit`](Self::commit) keeps the rows up to the last [`checkpoint`](Self::checkpoint).
pub struct SegmentWriter {
    id: String,
}

impl SegmentWriter {
    /// The segment's id (its folder name under `segments/`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a source image to the segment's image table (an image already added is skipped).
    pub fn add_image(&mut self, entry: ImageEntry) -> Result<()> {
        let _ = entry;
        todo!()
    }

    /// Appends one row; `targets` must hold exactly one row of the store's encoding.
    pub fn push(&mut self, row: RowMeta, targets: &[f16]) -> Result<()> {
        let _ = (row, targets);
        todo!()
    }

    /// Rows pushed so far (committed or not).
    pub fn rows(&self) -> u64 {
        todo!()
    }

    /// Writes every full shard buffered so far and advances the watermark past them.
    pub fn checkpoint(&mut self) -> Result<()> {
        todo!()
    }

    /// Writes the remaining rows and the image table, shrinks the arrays to the row count and
    /// closes the segment with `summary` recorded in its attributes.
    pub fn commit(self, summary: serde_json::Value) -> Result<SegmentInfo> {
        let _ = summary;
        todo!()
    }
}
