//! One extraction run: source images → rendered views → teacher → encoded rows → one segment.
//!
//! Three stages run at once, joined by bounded channels so memory stays bounded whatever the
//! source size:
//!
//! 1. **render** (a dedicated rayon pool), over the files of this `--shard` (chosen from the
//!    listing by path, so other shards' files are never opened): skip, unopened, a file the
//!    store has done (same path, size and modification time in its image table, its views
//!    stored: [`DoneFiles`]); read each other file, hash it, keep
//!    it if its bytes were not seen before in this run, decode, draw its views, drop views whose
//!    content key is already committed in the store, render the rest;
//! 2. **teacher** (the calling thread): batches of views through ONNX Runtime;
//! 3. **write** (its own thread): the encoding (in parallel over views), then rows into this
//!    run's segment, checkpointed every few seconds, committed at the end with the run's
//!    summary in the segment's attributes.
//!
//! A bad image (unreadable, corrupt, not an image) is listed with its reason and skipped.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use tinymim_formats::images::{modification_time, walk, ImageFile, WalkError};
use tinymim_formats::view::sample_views;
use tinymim_formats::{
    content_key, Encoding, Hash32, ImageEntry, RelationStore, RowMeta, SourceImage, SourceRoot,
    StoreError, StoreHeader, ViewRecipe,
};

use crate::encode::{encode_batch, EncodeError};
use crate::source::{DoneFiles, Shard};
use crate::teacher::{Teacher, TeacherBatch, TeacherError};

/// What to extract and where to.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Source image folder.
    pub images: PathBuf,
    /// Views per image.
    pub views: u32,
    /// Encoding of the stored targets.
    pub encoding: Encoding,
    /// The relation store (created if missing).
    pub out: PathBuf,
    /// Run seed of the view recipe.
    pub seed: u64,
    /// The part of the source set this process handles.
    pub shard: Shard,
    /// Views per teacher batch.
    pub batch: usize,
    /// Threads that decode and render images.
    pub render_threads: usize,
    /// Rows per store shard (`None`: about 32 MB of targets per shard).
    pub shard_rows: Option<u64>,
    /// Least time between two checkpoints.
    pub checkpoint_every: Duration,
    /// Draw a progress bar on stderr (hidden anyway when stderr is not a terminal).
    pub progress: bool,
}

/// An image that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadImage {
    /// Path relative to the source root.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// What a run did: printed as the summary line and recorded in the segment's attributes.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The segment written (`None` when there was nothing new to write).
    pub segment: Option<String>,
    /// ONNX Runtime's execution provider.
    pub provider: String,
    /// Encoding of the targets.
    pub encoding: Encoding,
    /// Shard of the source set, `i/n`.
    pub shard: String,
    /// The source root (absolute) that image paths are relative to; `train` uses it when it is
    /// given no `--images`.
    #[serde(flatten)]
    pub source: SourceRoot,
    /// Image files found under the source root.
    pub images_found: u64,
    /// Images of this shard whose views were extracted or already present.
    pub images_used: u64,
    /// Of those, images skipped without opening the file: the store's image table records
    /// the same path, size and modification time, and the store holds their views.
    pub images_unchanged: u64,
    /// Images left to other shards (never read: membership is by path).
    pub images_other_shard: u64,
    /// Files whose bytes equal an earlier file's (extracted once).
    pub images_duplicate: u64,
    /// Bytes of image files read in this run: the files of this shard only, each once.
    pub bytes_read: u64,
    /// Views written in this run.
    pub views_written: u64,
    /// Views skipped because their key was already committed.
    pub views_present: u64,
    /// Images skipped as bad, with the reason.
    pub bad: Vec<BadImage>,
    /// Bytes the store grew by per written view (compressed, all arrays), measured after the
    /// commit: absent from the summary recorded in the segment itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_view: Option<f64>,
    /// Wall time of the run in seconds.
    pub wall_s: f64,
    /// Views written per second of wall time.
    pub views_per_s: f64,
}

/// Why a run failed (bad images do not fail a run).
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The source folder could not be listed.
    #[error(transparent)]
    Source(#[from] WalkError),
    /// The store could not be created, or refused this run (another teacher, encoding, …).
    #[error("{path}: cannot extract into this store: {source}")]
    Open {
        /// The store's folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The store failed to read or write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The teacher failed.
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    /// Encoding failed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A pipeline thread died.
    #[error("the {0} stage stopped unexpectedly")]
    Stage(&'static str),
}

/// A rendered view waiting for the teacher.
struct PendingView {
    row: RowMeta,
    pixels: Vec<f32>,
    /// The image's last new view: once it has run, the image counts as done.
    last_of_image: bool,
}

/// What the render stage made of one file.
enum Outcome {
    /// New views to run (possibly none when all were present), with the image's table entry.
    Image {
        entry: ImageEntry,
        views: Vec<PendingView>,
        present: u64,
    },
    /// A file the store has done ([`DoneFiles`]), with its views counted as present.
    Unchanged {
        present: u64,
    },
    Duplicate,
    Bad(BadImage),
}

/// A teacher batch on its way to be encoded and stored, with image entries to add first.
struct WriteBatch {
    images: Vec<ImageEntry>,
    rows: Vec<RowMeta>,
    outputs: TeacherBatch,
}

/// Runs one extraction with `teacher` into the store at `options.out`.
pub fn extract(teacher: &mut Teacher, options: &ExtractOptions) -> Result<Summary, ExtractError> {
    let started = Instant::now();
    teacher.check_encoding(options.encoding)?;
    let header = StoreHeader {
        teacher: teacher.fingerprint(),
        geometry: teacher.geometry(),
        encoding: options.encoding,
        recipe: ViewRecipe {
            seed: options.seed,
            ..ViewRecipe::default()
        },
    };
    let qkv = if options.encoding.stores_ln1() {
        teacher.qkv_params()
    } else {
        None
    };
    let store = RelationStore::create_or_open(&options.out, &header, qkv).map_err(|source| {
        ExtractError::Open {
            path: options.out.clone(),
            source,
        }
    })?;
    let (committed, done) = {
        let reader = store.reader()?;
        let keys: HashSet<Hash32> = (0..reader.len()).map(|i| reader.row(i).key).collect();
        (Arc::new(keys), DoneFiles::of(&reader, options.views))
    };
    let bytes_before = store.disk_bytes()?;
    let found = walk(&options.images)?;
    let images_found = found.len() as u64;
    // This shard's files, known from the listing: the others are never opened.
    let files: Vec<ImageFile> = found
        .into_iter()
        .filter(|f| options.shard.contains(&f.relative))
        .collect();
    let images_other_shard = images_found - files.len() as u64;
    let capacity = files.len() as u64 * options.views as u64;

    let progress = progress_bar(options.progress, files.len() as u64);
    let batch = options.batch.max(1);
    // About two teacher batches of rendered views in flight, at least two images.
    let (render_tx, render_rx) =
        sync_channel::<Outcome>((2 * batch).div_ceil(options.views.max(1) as usize).max(2));
    let (write_tx, write_rx) = sync_channel::<WriteBatch>(2);

    let render = {
        let ctx = RenderContext {
            header: header.clone(),
            committed,
            views: options.views,
            done,
            seen: Mutex::new(HashSet::new()),
            bytes_read: AtomicU64::new(0),
        };
        let threads = options.render_threads.max(1);
        std::thread::spawn(move || render_stage(files, ctx, threads, render_tx))
    };
    let writer = {
        let shard_rows = options.shard_rows;
        let every = options.checkpoint_every;
        let encoding = options.encoding;
        std::thread::spawn(move || {
            write_stage(store, encoding, capacity, shard_rows, every, write_rx)
        })
    };

    let mut summary = Summary {
        segment: None,
        provider: teacher.provider().name().to_string(),
        encoding: options.encoding,
        shard: options.shard.to_string(),
        source: SourceRoot {
            source_root: std::path::absolute(&options.images)
                .unwrap_or_else(|_| options.images.clone()),
        },
        images_found,
        images_used: 0,
        images_unchanged: 0,
        images_other_shard,
        images_duplicate: 0,
        bytes_read: 0,
        views_written: 0,
        views_present: 0,
        bad: Vec::new(),
        bytes_per_view: None,
        wall_s: 0.0,
        views_per_s: 0.0,
    };
    let teacher_result = teacher_stage(
        teacher,
        batch,
        render_rx,
        &write_tx,
        &progress,
        &mut summary,
    );
    drop(write_tx);
    let writer_result = writer.join().map_err(|_| ExtractError::Stage("write"))?;
    let bytes_read = render.join().map_err(|_| ExtractError::Stage("render"))?;
    progress.finish_and_clear();
    // A write failure closes the channel under the teacher stage: report the write error.
    let segment = writer_result?;
    teacher_result?;

    summary.bytes_read = bytes_read;
    summary.bad.sort_by(|a, b| a.path.cmp(&b.path));
    summary.wall_s = started.elapsed().as_secs_f64();
    summary.views_per_s = summary.views_written as f64 / summary.wall_s.max(1e-9);
    if let Some(segment) = segment {
        summary.segment = Some(segment.id().to_string());
        let value = serde_json::to_value(&summary).expect("the summary serialises");
        segment.commit(value)?;
        // The bytes of the summary attribute itself are negligible next to the rows.
        let grown = RelationStore::open(&options.out)?
            .disk_bytes()?
            .saturating_sub(bytes_before);
        summary.bytes_per_view = Some(grown as f64 / summary.views_written.max(1) as f64);
    }
    Ok(summary)
}

fn progress_bar(enabled: bool, files: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(files);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} images · {msg} · ETA {eta}",
        )
        .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs batches through the teacher as rendered views arrive; hands rows to the writer.
fn teacher_stage(
    teacher: &mut Teacher,
    batch: usize,
    outcomes: Receiver<Outcome>,
    writer: &SyncSender<WriteBatch>,
    progress: &ProgressBar,
    summary: &mut Summary,
) -> Result<(), ExtractError> {
    let started = Instant::now();
    let mut pending: Vec<PendingView> = Vec::new();
    let mut new_images: Vec<ImageEntry> = Vec::new();
    let mut run = |views: Vec<PendingView>, images: Vec<ImageEntry>, summary: &mut Summary| {
        let count = views.len();
        let images_done = views.iter().filter(|v| v.last_of_image).count() as u64;
        let mut pixels = Vec::with_capacity(count * teacher.pixels_per_view());
        for v in &views {
            pixels.extend_from_slice(&v.pixels);
        }
        let outputs = teacher.run(&pixels, count)?;
        let rows = views.into_iter().map(|v| v.row).collect();
        writer
            .send(WriteBatch {
                images,
                rows,
                outputs,
            })
            .map_err(|_| ExtractError::Stage("write"))?;
        summary.views_written += count as u64;
        progress.inc(images_done);
        let rate = summary.views_written as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.set_message(format!("{} views ({rate:.2}/s)", summary.views_written));
        Ok::<(), ExtractError>(())
    };
    for outcome in outcomes {
        // An image with new views counts as done once its last view has run.
        let has_views = matches!(&outcome, Outcome::Image { views, .. } if !views.is_empty());
        if !has_views {
            progress.inc(1);
        }
        match outcome {
            Outcome::Image {
                entry,
                views,
                present,
            } => {
                summary.images_used += 1;
                summary.views_present += present;
                if !views.is_empty() {
                    new_images.push(entry);
                    pending.extend(views);
                }
            }
            Outcome::Unchanged { present } => {
                summary.images_used += 1;
                summary.images_unchanged += 1;
                summary.views_present += present;
            }
            Outcome::Duplicate => summary.images_duplicate += 1,
            Outcome::Bad(bad) => {
                progress.suspend(|| eprintln!("extract: skipping {}: {}", bad.path, bad.reason));
                summary.bad.push(bad);
            }
        }
        while pending.len() >= batch {
            let rest = pending.split_off(batch);
            let views = std::mem::replace(&mut pending, rest);
            run(views, std::mem::take(&mut new_images), summary)?;
        }
    }
    if !pending.is_empty() {
        run(pending, new_images, summary)?;
    }
    Ok(())
}

/// What every render worker shares.
struct RenderContext {
    header: StoreHeader,
    committed: Arc<HashSet<Hash32>>,
    views: u32,
    /// Files the store has done: skipped unopened.
    done: DoneFiles,
    /// Image hashes seen in this run (duplicates are extracted once).
    seen: Mutex<HashSet<Hash32>>,
    /// Bytes of image files read so far.
    bytes_read: AtomicU64,
}

/// Renders every file on a pool of `threads`; returns the bytes of image files read.
fn render_stage(
    files: Vec<ImageFile>,
    ctx: RenderContext,
    threads: usize,
    out: SyncSender<Outcome>,
) -> u64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("render-{i}"))
        .build()
        .expect("a thread pool");
    pool.install(|| {
        // `try_for_each` stops early once the teacher stage has hung up.
        let _ = files.par_iter().try_for_each_with(out, |out, file| {
            out.send(render_file(file, &ctx)).map_err(|_| ())
        });
    });
    ctx.bytes_read.into_inner()
}

fn render_file(file: &ImageFile, ctx: &RenderContext) -> Outcome {
    let bad = |reason: String| {
        Outcome::Bad(BadImage {
            path: file.relative.clone(),
            reason,
        })
    };
    let modified = match std::fs::metadata(&file.path) {
        Ok(meta) => {
            let modified = modification_time(&meta);
            if modified.is_some_and(|m| ctx.done.contains(&file.relative, meta.len(), m)) {
                return Outcome::Unchanged {
                    present: u64::from(ctx.views),
                };
            }
            modified
        }
        Err(e) => return bad(format!("cannot read: {e}")),
    };
    let bytes = match std::fs::read(&file.path) {
        Ok(b) => b,
        Err(e) => return bad(format!("cannot read: {e}")),
    };
    ctx.bytes_read
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let hash = Hash32::of_bytes(&bytes);
    if !ctx.seen.lock().expect("no poisoned lock").insert(hash) {
        return Outcome::Duplicate;
    }
    let image = match SourceImage::decode(&bytes, &file.path) {
        Ok(image) => image,
        Err(e) => return bad(strip_path(&e.to_string(), &file.path)),
    };
    let h = &ctx.header;
    let g = &h.geometry;
    let mut keys = HashSet::new();
    let mut views = Vec::new();
    let mut present = 0;
    for view in sample_views(&h.recipe, &hash, image.width(), image.height(), ctx.views) {
        let key = content_key(&h.teacher, g.target_block, h.encoding, &hash, &view);
        if ctx.committed.contains(&key) {
            present += 1;
            continue;
        }
        if !keys.insert(key) {
            continue; // a tiny image can give the same view twice
        }
        let mut pixels = vec![0.0; 3 * (g.image_size as usize).pow(2)];
        if let Err(e) = image.render(&view, g.image_size, &g.normalization, &mut pixels) {
            return bad(strip_path(&e.to_string(), &file.path));
        }
        views.push(PendingView {
            row: RowMeta {
                key,
                image: hash,
                view,
            },
            pixels,
            last_of_image: false,
        });
    }
    if let Some(last) = views.last_mut() {
        last.last_of_image = true;
    }
    Outcome::Image {
        entry: ImageEntry {
            hash,
            path: file.relative.clone(),
            size: bytes.len() as u64,
            label: file.label.clone(),
            modified,
        },
        views,
        present,
    }
}

/// A render error's message without the leading `<path>: ` (the summary names the file).
fn strip_path(message: &str, path: &std::path::Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

/// Encodes teacher batches and writes their rows into one segment, begun on the first rows;
/// returns it uncommitted. Encoding here keeps it off the teacher's thread, so the teacher
/// runs the next batch meanwhile.
fn write_stage(
    store: RelationStore,
    encoding: Encoding,
    capacity: u64,
    shard_rows: Option<u64>,
    checkpoint_every: Duration,
    batches: Receiver<WriteBatch>,
) -> Result<Option<tinymim_formats::SegmentWriter>, ExtractError> {
    let mut segment = None;
    let mut last_checkpoint = Instant::now();
    for batch in batches {
        let writer = match &mut segment {
            Some(w) => w,
            None => segment.insert(match shard_rows {
                Some(rows) => store.begin_segment_with_shard_rows(capacity, rows)?,
                None => store.begin_segment(capacity)?,
            }),
        };
        for entry in batch.images {
            writer.add_image(entry)?;
        }
        let targets = encode_batch(encoding, &batch.outputs)?;
        for (row, targets) in batch.rows.into_iter().zip(targets) {
            writer.push(row, &targets)?;
        }
        if last_checkpoint.elapsed() >= checkpoint_every {
            writer.checkpoint()?;
            last_checkpoint = Instant::now();
        }
    }
    Ok(segment)
}
