//! `extract inspect STORE`: what a relation store holds, as text or JSON.

use std::path::Path;

use serde::Serialize;
use tinymim_formats::{RelationStore, StoreError, StoreHeader};

/// One segment as reported.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentReport {
    /// Segment id.
    pub id: String,
    /// Committed rows.
    pub rows: u64,
    /// Whether the writer committed it.
    pub closed: bool,
    /// The writer's summary (null while open).
    pub summary: serde_json::Value,
}

/// What `extract inspect` reports.
#[derive(Clone, Debug, Serialize)]
pub struct StoreReport {
    /// The store's folder.
    pub path: String,
    /// Teacher, geometry, encoding and view recipe.
    pub header: StoreHeader,
    /// Committed rows over all segments.
    pub rows: u64,
    /// Every segment, by id.
    pub segments: Vec<SegmentReport>,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Bytes of one row's targets before compression.
    pub raw_bytes_per_row: u64,
}

/// Reads a store's header and segment table.
pub fn inspect(path: &Path) -> Result<StoreReport, StoreError> {
    let store = RelationStore::open(path)?;
    let header = store.header().clone();
    let segments: Vec<SegmentReport> = store
        .segments()?
        .into_iter()
        .map(|s| SegmentReport {
            id: s.id,
            rows: s.committed_rows,
            closed: s.closed,
            summary: s.summary,
        })
        .collect();
    Ok(StoreReport {
        path: path.display().to_string(),
        rows: segments.iter().map(|s| s.rows).sum(),
        raw_bytes_per_row: header.encoding.row_bytes(&header.geometry),
        header,
        segments,
        disk_bytes: store.disk_bytes()?,
    })
}

impl std::fmt::Display for StoreReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.header;
        let g = &h.geometry;
        writeln!(f, "store      {}", self.path)?;
        writeln!(f, "teacher    {} ({})", h.teacher, g.arch)?;
        writeln!(
            f,
            "geometry   N = {}, H = {}, D = {}, block {}, patch {}, {} px",
            g.tokens, g.heads, g.dim, g.target_block, g.patch, g.image_size
        )?;
        let shape = |s: Vec<u64>| s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let scales = h
            .encoding
            .scale_shape(g)
            .map(|s| format!(" + scale [{}] float16", shape(s)))
            .unwrap_or_default();
        writeln!(
            f,
            "encoding   {} [{}] {}{scales}",
            h.encoding,
            shape(h.encoding.row_shape(g)),
            h.encoding.dtype()
        )?;
        writeln!(
            f,
            "views      seed {}, scale {:?}, ratio {:?}, flip {}, {}",
            h.recipe.seed,
            h.recipe.scale,
            h.recipe.ratio,
            h.recipe.flip_probability,
            h.recipe.interpolation
        )?;
        let per_row = if self.rows > 0 {
            format!(
                ", {:.0} bytes/row on disk",
                self.disk_bytes as f64 / self.rows as f64
            )
        } else {
            String::new()
        };
        writeln!(
            f,
            "rows       {} in {} segments, {} bytes{per_row} ({} raw)",
            self.rows,
            self.segments.len(),
            self.disk_bytes,
            self.raw_bytes_per_row
        )?;
        for s in &self.segments {
            let state = if s.closed { "committed" } else { "open" };
            writeln!(f, "  segment {}  {} rows  {state}", s.id, s.rows)?;
        }
        if h.encoding.stores_ln1() {
            writeln!(
                f,
                "qkv        the target block's qkv weight and bias are stored"
            )?;
        }
        Ok(())
    }
}
