//! The prefetching loader: a background thread assembles micro-batches (targets read from the
//! store or teacher pixels rendered, student pixels rendered and jittered, in parallel with
//! rayon) and hands them to the training step through a bounded channel, so the step only
//! waits when the loader falls behind.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use tinymim_formats::{StoreReader, Targets};

use super::error::Result;
use super::images::ImageCatalog;
use super::order::BatchPlan;
use super::pixels::{decode_images, render_rows, RenderSpec};
use super::rows::{Row, RowSet};
use crate::dist::Part;

/// Where a micro-batch's targets come from.
#[derive(Clone)]
pub enum TargetFeed {
    /// Raw rows read from a relation store.
    Store(Arc<StoreReader>),
    /// Pixels for a teacher that computes the targets on the training device.
    Teacher(RenderSpec),
}

/// The targets of a micro-batch as the loader delivers them.
#[derive(Clone, Debug)]
pub enum Payload {
    /// The stored rows, in the store's encoding, back to back.
    Stored(Targets),
    /// The teacher's input `[B, 3, S, S]` (no jitter).
    TeacherPixels(Vec<f32>),
}

/// One micro-batch, ready to become tensors.
#[derive(Clone, Debug)]
pub struct LoadedBatch {
    /// Epoch it belongs to.
    pub epoch: u64,
    /// Its rows, in batch order.
    pub rows: Vec<Row>,
    /// Student input `[B, 3, S, S]`, normalised (and jittered unless disabled).
    pub pixels: Vec<f32>,
    /// Targets.
    pub payload: Payload,
}

/// What the loader produces: micro-batches `first..first + count` of a run.
#[derive(Clone)]
pub struct LoaderSpec {
    /// The training set in canonical order.
    pub rows: Arc<RowSet>,
    /// Where the source images are.
    pub catalog: Arc<ImageCatalog>,
    /// Batch size, accumulation, seed.
    pub plan: BatchPlan,
    /// How student pixels are rendered.
    pub student: RenderSpec,
    /// Where targets come from.
    pub feed: TargetFeed,
    /// First micro-batch (counted from the start of the run: resume skips the done ones).
    pub first: u64,
    /// Number of micro-batches.
    pub count: u64,
    /// Micro-batches assembled ahead of the step (the channel's bound).
    pub prefetch: usize,
    /// This process's part of every micro-batch ([`Part::WHOLE`] in one process).
    pub part: Part,
}

/// Assembles this process's part of one micro-batch (used by the loader thread, and directly
/// by benchmarks).
pub fn load_micro_batch(spec: &LoaderSpec, micro: u64, order: &[usize]) -> Result<LoadedBatch> {
    let global = spec.plan.micro_rows(micro, order);
    let rows: Vec<Row> = global[spec.part.range(global.len())]
        .iter()
        .map(|&i| *spec.rows.get(i))
        .collect();
    load_rows(spec, rows, spec.plan.epoch_of(micro))
}

/// Assembles a batch of any `rows` as they are rendered in `epoch` (`train eval` walks a store
/// in canonical order with it; [`load_micro_batch`] takes a micro-batch's rows).
pub fn load_rows(spec: &LoaderSpec, rows: Vec<Row>, epoch: u64) -> Result<LoadedBatch> {
    let images = decode_images(&spec.catalog, &rows)?;
    let pixels = render_rows(&images, &rows, epoch, &spec.student)?;
    let payload = match &spec.feed {
        TargetFeed::Store(reader) => {
            let indices: Vec<usize> = rows
                .iter()
                .map(|r| r.store_row.expect("cache rows carry their store row"))
                .collect();
            let parts = reader.targets_of(&indices)?;
            let mut targets = reader.header().encoding.no_targets();
            for part in &parts {
                targets.append(part);
            }
            Payload::Stored(targets)
        }
        TargetFeed::Teacher(teacher) => {
            Payload::TeacherPixels(render_rows(&images, &rows, epoch, teacher)?)
        }
    };
    Ok(LoadedBatch {
        epoch,
        rows,
        pixels,
        payload,
    })
}

/// A running loader; iterate it to receive micro-batches in order. Dropping it stops the
/// background thread after the micro-batch it is assembling.
pub struct Loader {
    receiver: Option<Receiver<Result<LoadedBatch>>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts the background thread. Its parallel work runs in a rayon pool of its own: in
    /// the global pool, a long image decode would hold up the step's parallel matmuls, which
    /// candle runs there. Its threads run at a lower scheduling priority than the step's, so
    /// that where cores are few they fill the step's idle moments instead of preempting a
    /// thread that a parallel matmul waits on.
    pub fn start(spec: LoaderSpec) -> Loader {
        let (sender, receiver) = sync_channel(spec.prefetch.max(1));
        let pool = rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("tinymim-loader-{i}"))
            .start_handler(|_| defer_to_step())
            .build()
            .expect("the OS can start threads");
        let worker = std::thread::Builder::new()
            .name("tinymim-loader".to_string())
            .spawn(move || {
                defer_to_step();
                let mut order: Option<(u64, Vec<usize>)> = None;
                for micro in spec.first..spec.first + spec.count {
                    let epoch = spec.plan.epoch_of(micro);
                    if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                        order = Some((epoch, spec.plan.epoch_order(&spec.rows, epoch)));
                    }
                    let (_, rows) = order.as_ref().expect("set above");
                    let batch = pool.install(|| load_micro_batch(&spec, micro, rows));
                    let failed = batch.is_err();
                    if sender.send(batch).is_err() || failed {
                        return;
                    }
                }
            })
            .expect("the OS can start a thread");
        Loader {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }
}

/// Raises the calling thread's nice value by [`LOADER_NICENESS`] (Linux, where nice values
/// are per thread); elsewhere, and where the OS refuses, the thread keeps its priority.
fn defer_to_step() {
    #[cfg(target_os = "linux")]
    // SAFETY: getpriority/setpriority on the calling thread (who = 0) only change its nice
    // value; errors are reported through return values, which are ignored on purpose.
    unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, current + LOADER_NICENESS);
    }
}

/// How much less CPU share a loader thread asks for than the step (nice units).
#[cfg(target_os = "linux")]
const LOADER_NICENESS: libc::c_int = 10;

impl Iterator for Loader {
    type Item = Result<LoadedBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receiver.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
