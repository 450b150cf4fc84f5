//! Everything both phases of tinymim must agree on bit for bit.
//!
//! `extract` (the teacher, through ONNX Runtime) and `train` (the students, in candle) never
//! read each other's code; they meet here:
//!
//! - [`atomic`]: crash-safe file replacement, used by every file either phase writes;
//! - [`view`]: a view is a crop box in source pixels plus a flip bit, sampled deterministically
//!   from (image hash, run seed, view index) with RandomResizedCrop's recipe;
//! - [`render`]: the one function that turns image bytes and a view into normalised pixels;
//! - [`images`]: image folders, walked and labelled by one rule;
//! - [`shard`]: the parts of an image set (`extract --shard i/n`), by relative path;
//! - [`hash`]: image hashes, teacher fingerprints and content keys (blake3);
//! - [`teacher`]: the teacher's geometry (tokens, heads, width, target block, …) and the ONNX
//!   teacher contract;
//! - [`encoding`]: the four encodings of relation targets (`maps`, `qkv`, `ln1`, `ln1-int8`)
//!   and [`Targets`], stored rows in their element types;
//! - [`quant`]: 8-bit quantisation of `ln1` rows (the layouts an int8 encoding can take);
//! - [`relation`]: relation maps softmax(q·kᵀ/√d), softmax(v·vᵀ/√d) computed on the CPU;
//! - [`store`]: the content-addressed Zarr v3 relation store (`relations.zarr`);
//! - [`vit`]: the ViT architectures and their timm/MAE checkpoints, which both phases read;
//! - [`launch`]: what torchrun, Open MPI or Slurm say about this process (rank, world, its
//!   GPU, its part of an extraction), which both phases run under;
//! - [`device`]: the `--device` argument both binaries take (`cuda` is the launcher's local GPU).

#![forbid(unsafe_code)]

pub mod atomic;
pub mod device;
pub mod encoding;
pub mod hash;
pub mod images;
pub mod launch;
pub mod quant;
pub mod relation;
pub mod render;
pub mod shard;
pub mod store;
pub mod teacher;
pub mod view;
pub mod vit;

pub use device::DeviceSpec;
pub use encoding::{Encoding, Targets};
pub use hash::{content_key, Hash32};
pub use launch::{ExtractionPart, Launch, LaunchError, Launcher};
pub use relation::{decode_maps, relation_maps, split_heads_qkv};
pub use render::{render_view, Normalization, RenderError, SourceImage};
pub use store::{
    ImageEntry, QkvParams, RelationStore, RowMeta, SegmentInfo, SegmentWriter, SourceRoot,
    StoreError, StoreHeader, StoreReader, VerifyProblem, VerifyReport,
};
pub use teacher::TeacherGeometry;
pub use view::{sample_view, sample_views, View, ViewRecipe};
