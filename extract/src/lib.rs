//! Phase one of tinymim: run a teacher ViT through ONNX Runtime over deterministic views of an
//! image set and write its relation targets to a relation store.
//!
//! - [`runtime`]: finding and starting ONNX Runtime, choosing CPU or CUDA;
//! - [`teacher`]: loading a teacher (exported, or third-party with a config) and running it to
//!   the target block's q, k, v (and ln1);
//! - [`encode`]: teacher outputs → float16 rows in the store's encoding;
//! - [`source`]: the image folder, labels and `--shard i/n` (or the launcher's part);
//! - [`pipeline`]: one extraction run (render → teacher → write, bounded and resumable);
//! - [`inspect`], [`verify`]: reading a store back;
//! - [`export`]: `extract teacher`, a checkpoint → a truncated teacher ONNX;
//! - [`bench`]: `extract bench`, the pipeline against the bare teacher.

#![forbid(unsafe_code)]

pub mod bench;
pub mod encode;
pub mod export;
pub mod inspect;
pub mod pipeline;
pub mod runtime;
pub mod source;
pub mod teacher;
pub mod verify;
