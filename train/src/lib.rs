//! Phase two of tinymim as a library: the candle ViT student ([`Student`]), the relation
//! loss ([`relation_loss`]), AdamW with TinyMIM's parameter groups ([`AdamW`]), the
//! warm-up + cosine schedule ([`LrSchedule`]), one accumulated training step
//! ([`Distiller`]), resumable checkpoints ([`Checkpoint`]) and timm/MAE exports
//! ([`export_student`]). The `train` binary drives these over the relation store.

mod atomic;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod distill;
pub mod error;
pub mod eval;
pub mod export;
pub mod grads;
pub mod heap;
pub mod jitter;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod online;
pub mod optim;
mod pool;
pub mod precision;
pub mod probe;
pub mod rng;
pub mod run;
pub mod schedule;
#[doc(hidden)]
pub mod testing;

pub use checkpoint::Checkpoint;
pub use config::VitConfig;
pub use distill::{Distiller, MicroBatch, StepReport};
pub use error::{Result, TrainError};
pub use export::export_student;
pub use grads::Gradients;
pub use loss::{relation_loss, relation_loss_parts};
pub use model::{HeadsQkv, Param, Student};
pub use optim::{AdamW, AdamWConfig, Moments};
pub use precision::Precision;
pub use rng::{RngState, SampleDraws, TrainRng};
pub use schedule::LrSchedule;
