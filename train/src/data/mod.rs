//! The training data path: rows (image hash, view) in a canonical order, their source images
//! read back verified, pixels rendered at the student's size with colour jitter, targets read
//! from the store (or rendered for an online teacher), and the prefetching loader.

pub mod error;
pub mod images;
pub mod loader;
pub mod order;
pub mod pixels;
pub mod rows;
pub mod targets;

pub use error::DataError;
pub use images::{scan_images, FoundImage, ImageCatalog};
pub use loader::{
    load_micro_batch, load_rows, LoadedBatch, Loader, LoaderSpec, Payload, TargetFeed,
};
pub use order::{epoch_order, grouped_epoch_order, BatchPlan};
pub use pixels::RenderSpec;
pub use rows::{Row, RowSet};
pub use targets::{relation_maps, TargetDecoder};
