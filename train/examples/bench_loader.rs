//! The loader's stages, each on one core, in views/s: reading a target row from the store
//! (zstd + crc32c, per encoding, at ViT-L/16 block-18 size), decoding the source JPEG, and
//! rendering one view (RandomResizedCrop + bicubic resize to 224 px) with its colour jitter and
//! normalisation; then what one core sustains for K views per image with and without the K views
//! of an image sharing one decode, and how many cores a GPU at a given rate needs. The decode
//! of targets into maps, which runs on the training device, is timed on this CPU beside them.
//! Store reads are timed in a random order (the loader's) and in store order (rows as they lie
//! in their shards). Then the real loader ([`load_micro_batch`]) end to end on one core, on an
//! `ln1` and an `ln1-int8` store of K views of 64 such JPEGs, in the default order and with
//! `--group-views`.
//!
//! ```text
//! cargo run --release -p tinymim-train --example bench_loader -- [--views-per-image 4]
//!     [--gpu-views-per-s 3000] [--rows 64] [--cold]
//! ```
//!
//! `--cold` empties the page cache before each timed pass of store reads (root only), so that
//! they come from the disk as on a first epoch over a store larger than memory.
//! `--read-store STORE[,STORE…]` only times reads of existing stores' rows, in a random order:
//! one row at a time on one core, and as the loader reads them, micro-batches of 64 rows through
//! `StoreReader::targets_of` (concurrent requests on object storage); each store after the first
//! is also given as a ratio to the first, measured in the same run (e.g. an `s3://` copy against
//! its local folder: `scripts/bench_s3.sh`). Real targets compress, random ones barely, and zstd
//! decodes the two at different speeds.
//!
//! The JPEG is ImageNet-sized: a cached photo resized to 500×333 and encoded at quality 90 by
//! the `image` crate. Store rows hold random values (float16 in [-2, 2), or such rows quantised
//! to int8; real targets compress 8–14 % better). Needs the asset cache (scripts/setup.sh).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use half::f16;
use image::codecs::jpeg::JpegEncoder;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use tinymim_formats::quant::ln1_int8_row;
use tinymim_formats::view::sample_views;
use tinymim_formats::vit::{ArchFile, ArchOverrides, VitArch};
use tinymim_formats::{
    content_key, Encoding, Hash32, ImageEntry, Normalization, QkvParams, RelationStore, RowMeta,
    SourceImage, StoreHeader, Targets, TeacherGeometry, ViewRecipe,
};

use tinymim_train::data::{
    load_micro_batch, BatchPlan, ImageCatalog, LoaderSpec, RenderSpec, RowSet, TargetDecoder,
    TargetFeed,
};
use tinymim_train::jitter::{jitter_and_normalize, ColorJitter};

/// ViT-L/16 block 18 at 224 px: the built-in `mae-vit-large` preset's geometry.
fn vit_l() -> TeacherGeometry {
    let preset = ArchFile::preset("mae-vit-large").expect("a built-in preset");
    VitArch::resolve(&ArchOverrides::default(), &preset)
        .expect("a consistent preset")
        .geometry()
}

/// Items per second of `f` run `n` times on one core (a one-thread rayon pool: the renderer
/// and the decoders split their work into rayon tasks), after one warm-up call.
fn per_core(n: usize, mut f: impl FnMut(usize) + Send) -> f64 {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    pool.install(|| {
        f(0);
        let started = Instant::now();
        for i in 0..n {
            f(i);
        }
        n as f64 / started.elapsed().as_secs_f64()
    })
}

/// A store of `rows` random rows of `encoding` at ViT-L size in `dir`; row r is view r % 4 of
/// image r / 4, whose bytes are `images(r / 4)` (`None`: images that exist only by name).
fn random_store(
    dir: &Path,
    encoding: Encoding,
    rows: usize,
    images: Option<&dyn Fn(usize) -> Vec<u8>>,
) -> anyhow::Result<PathBuf> {
    let geometry = vit_l();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let header = StoreHeader {
        teacher: Hash32::of_bytes(b"bench teacher"),
        geometry: geometry.clone(),
        encoding,
        recipe: ViewRecipe::default(),
    };
    let d = geometry.dim as usize;
    let params = QkvParams {
        weight: (0..3 * d * d)
            .map(|_| rng.random_range(-0.05..0.05))
            .collect(),
        bias: vec![0.0; 3 * d],
    };
    let path = dir.join(format!("{encoding}.zarr"));
    let store = RelationStore::create_or_open(&path, &header, Some(&params))?;
    let mut writer = store.begin_segment(rows as u64)?;
    let len = encoding.row_len(&geometry);
    for r in 0..rows {
        let (image, size) = match images {
            Some(bytes) => {
                let bytes = bytes(r / 4);
                (Hash32::of_bytes(&bytes), bytes.len() as u64)
            }
            None => (Hash32::of_bytes(&(r / 4).to_le_bytes()), 1),
        };
        writer.add_image(ImageEntry {
            hash: image,
            path: format!("img{}.jpg", r / 4),
            size,
            label: None,
            modified: None,
        })?;
        let view = sample_views(&header.recipe, &image, 500, 333, 4)[r % 4];
        let key = content_key(
            &header.teacher,
            geometry.target_block,
            encoding,
            &image,
            &view,
        );
        let values: Vec<f32> = (0..len).map(|_| rng.random_range(-2.0..2.0)).collect();
        let targets = match encoding {
            Encoding::Ln1Int8 => {
                ln1_int8_row(Array2::from_shape_vec((geometry.tokens as usize, d), values)?.view())
            }
            _ => Targets::Half(values.into_iter().map(f16::from_f32).collect()),
        };
        writer.push(RowMeta { key, image, view }, &targets)?;
    }
    writer.commit(serde_json::Value::Null)?;
    Ok(path)
}

/// Times random-order reads of every row of the store at `path`, on one core.
/// Rows per micro-batch in the batched read timing.
const READ_BATCH: usize = 64;

/// Times reads of each store in `paths` (one row at a time on one core, and in micro-batches
/// through `targets_of`); returns (per-core, batched) rows/s of each.
fn time_reads(paths: &[&str]) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut rates = Vec::new();
    for path in paths {
        let path = Path::new(path);
        let store = RelationStore::open(path)?;
        let reader = store.reader()?;
        let n = reader.len();
        anyhow::ensure!(n > 0, "{}: no committed rows", path.display());
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(11));
        let one = per_core(2 * n, |i| {
            reader.targets(order[i % n]).expect("reads");
        });
        let started = Instant::now();
        let mut read = 0;
        for _ in 0..2 {
            for batch in order.chunks(READ_BATCH) {
                read += reader.targets_of(batch)?.len();
            }
        }
        let batched = read as f64 / started.elapsed().as_secs_f64();
        let h = store.header();
        let raw = h.encoding.row_bytes(&h.geometry);
        let disk = store.disk_bytes()? as f64 / n as f64;
        let (first_one, first_batched) = *rates.first().unwrap_or(&(one, batched));
        eprintln!(
            "{}: {n} rows of {} ({raw} bytes raw, {disk:.0} stored per row with the store's \
             metadata): {one:.0} rows/s one at a time on one core ({:.2}x the first store), \
             {batched:.0} rows/s in micro-batches of {READ_BATCH} ({:.2}x)",
            path.display(),
            h.encoding,
            one / first_one,
            batched / first_batched,
        );
        println!(
            "{}",
            serde_json::json!({"bench": "loader", "stage": "store_read_existing",
                "store": path.display().to_string(), "encoding": h.encoding.name(),
                "row_bytes": raw, "disk_bytes_per_row": disk, "per_core_rows_per_s": one,
                "batched_rows_per_s": batched, "per_core_vs_first": one / first_one,
                "batched_vs_first": batched / first_batched})
        );
        rates.push((one, batched));
    }
    Ok(rates)
}

/// Empties the kernel's page cache (`--cold`: store reads then come from the disk; needs root).
fn drop_page_cache() -> anyhow::Result<()> {
    let synced = std::process::Command::new("sync").status()?;
    anyhow::ensure!(synced.success(), "sync failed");
    std::fs::write("/proc/sys/vm/drop_caches", "1").map_err(|e| {
        anyhow::anyhow!(
            "--cold empties the page cache through /proc/sys/vm/drop_caches: {e} (needs root)"
        )
    })
}

fn cache() -> PathBuf {
    std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/tinymim"))
}

fn main() -> anyhow::Result<()> {
    let k = common::number("--views-per-image", 4);
    let gpu_rate = common::number("--gpu-views-per-s", 3000) as f64;
    let rows = common::number("--rows", 64);
    let cold = common::switch("--cold");
    if let Some(paths) = common::flag("--read-store") {
        let paths: Vec<&str> = paths.split(',').collect();
        return time_reads(&paths).map(|_| ());
    }
    let size = 224u32;

    // Source decode: an ImageNet-sized JPEG.
    let photo = image::open(cache().join("photos/coffee.png"))?.to_rgb8();
    let small = image::imageops::resize(&photo, 500, 333, image::imageops::FilterType::CatmullRom);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&small)?;
    let name = Path::new("imagenet-sized.jpg");
    let jpeg_rate = per_core(200, |_| {
        SourceImage::decode(&jpeg, name).expect("decodes");
    });

    // View render + colour jitter + normalisation.
    let image = SourceImage::decode(&jpeg, name)?;
    let hash = Hash32::of_bytes(&jpeg);
    let views = sample_views(&ViewRecipe::default(), &hash, 500, 333, 64);
    let mut rgb = vec![0u8; 3 * (size * size) as usize];
    let mut out = vec![0f32; rgb.len()];
    let render_rate = per_core(400, |i| {
        let view = &views[i % views.len()];
        image.render_rgb(view, size, &mut rgb).expect("renders");
        let jitter = ColorJitter::draw(0, 0, &hash, view);
        jitter_and_normalize(&rgb, &jitter, &Normalization::IMAGENET, &mut out);
    });
    // Its two parts alone: the crop + resize + flip, and the jitter + normalisation.
    let resize_rate = per_core(400, |i| {
        image
            .render_rgb(&views[i % views.len()], size, &mut rgb)
            .expect("renders");
    });
    let jitter_rate = per_core(400, |i| {
        let jitter = ColorJitter::draw(0, 0, &hash, &views[i % views.len()]);
        jitter_and_normalize(&rgb, &jitter, &Normalization::IMAGENET, &mut out);
    });

    println!(
        "{}",
        serde_json::json!({"bench": "loader", "stage": "jpeg_decode", "jpeg_bytes": jpeg.len(),
            "width": 500, "height": 333, "per_core_per_s": jpeg_rate})
    );
    println!(
        "{}",
        serde_json::json!({"bench": "loader", "stage": "render_jitter", "size": size,
            "per_core_per_s": render_rate, "resize_only_per_core_per_s": resize_rate,
            "jitter_only_per_core_per_s": jitter_rate})
    );
    eprintln!(
        "one core: JPEG 500×333 ({} kB) decode {jpeg_rate:.0}/s; view render + jitter at \
         {size} px {render_rate:.0}/s (resize alone {resize_rate:.0}/s, jitter + normalise \
         alone {jitter_rate:.0}/s)",
        jpeg.len() / 1000
    );
    eprintln!(
        "{:<8} {:>8} {:>12} {:>12} {:>14} {:>16} {:>16} {:>12}",
        "enc",
        "row kB",
        "read rows/s",
        "store order",
        "device dec/s",
        format!("{k} views/img v/s"),
        "undecoded-once",
        format!("cores@{gpu_rate:.0}")
    );
    let dir = tempfile::tempdir()?;
    for encoding in Encoding::ALL {
        // Fewer of the big rows, so that every store stays a few hundred MB.
        let n = match encoding {
            Encoding::Maps => rows / 4,
            Encoding::Qkv => rows / 2,
            Encoding::Ln1 | Encoding::Ln1Int8 => rows,
        }
        .max(4);
        let path = random_store(dir.path(), encoding, n, None)?;
        let opened = RelationStore::open(&path)?;
        let reader = opened.reader()?;
        let mut shuffled: Vec<usize> = (0..n).collect();
        shuffled.shuffle(&mut ChaCha8Rng::seed_from_u64(11));
        cold.then(drop_page_cache).transpose()?;
        let read_rate = per_core(n, |i| {
            reader.targets(shuffled[i % n]).expect("reads");
        });
        cold.then(drop_page_cache).transpose()?;
        let store_order_rate = per_core(n, |i| {
            reader.targets(i % n).expect("reads");
        });
        let decoder = TargetDecoder::new(
            opened.header(),
            opened.qkv_params()?.as_ref(),
            None,
            &candle_core::Device::Cpu,
        )?;
        let mut batch = encoding.no_targets();
        for i in 0..8 {
            batch.append(&reader.targets(i % n)?);
        }
        let started = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            decoder.decode(&batch)?;
        }
        let device_rate = (8 * reps) as f64 / started.elapsed().as_secs_f64();
        // Seconds of one core per view: read + render, plus the JPEG decode shared by the K
        // views of an image (grouped) or paid by every view.
        let base = 1.0 / read_rate + 1.0 / render_rate;
        let grouped = 1.0 / (base + 1.0 / (k as f64 * jpeg_rate));
        let ungrouped = 1.0 / (base + 1.0 / jpeg_rate);
        let row_kb = encoding.row_bytes(&opened.header().geometry) as f64 / 1000.0;
        eprintln!(
            "{:<8} {:>8.0} {:>12.0} {:>12.0} {:>14.1} {:>16.0} {:>16.0} {:>12.1}",
            encoding.name(),
            row_kb,
            read_rate,
            store_order_rate,
            device_rate,
            grouped,
            ungrouped,
            gpu_rate / grouped
        );
        println!(
            "{}",
            serde_json::json!({"bench": "loader", "stage": "store_read", "encoding": encoding.name(),
                "row_bytes": row_kb * 1000.0, "per_core_rows_per_s": read_rate,
                "per_core_rows_per_s_store_order": store_order_rate,
                "device_decode_views_per_s_this_cpu": device_rate,
                "views_per_image": k, "per_core_views_per_s_grouped": grouped,
                "per_core_views_per_s_each_view_decoded": ungrouped,
                "cores_for_gpu_rate": gpu_rate / grouped, "gpu_views_per_s": gpu_rate})
        );
    }

    // The loader end to end: 64 JPEGs (the photo shifted by a pixel each, so they differ) ×
    // 4 views in an `ln1` and an `ln1-int8` store, micro-batches of 32, one core.
    let jpeg_of = |i: usize| {
        let shifted = image::imageops::crop_imm(&photo, i as u32 % 50, 0, 550, 400).to_image();
        let small =
            image::imageops::resize(&shifted, 500, 333, image::imageops::FilterType::Triangle);
        let mut bytes = Vec::new();
        JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&small)
            .expect("encodes");
        bytes
    };
    let folder = dir.path().join("images");
    std::fs::create_dir_all(&folder)?;
    let images: Vec<Vec<u8>> = (0..64).map(jpeg_of).collect();
    for (i, bytes) in images.iter().enumerate() {
        std::fs::write(folder.join(format!("img{i}.jpg")), bytes)?;
    }
    for encoding in [Encoding::Ln1, Encoding::Ln1Int8] {
        let store = random_store(
            &dir.path().join("e2e"),
            encoding,
            4 * images.len(),
            Some(&|i| images[i].clone()),
        )?;
        let opened = RelationStore::open(&store)?;
        let reader = opened.reader()?;
        let rows = RowSet::from_store(&reader, &store)?;
        let catalog = ImageCatalog::from_store(&reader, &rows, &folder)?;
        let (rows, catalog) = (Arc::new(rows), Arc::new(catalog));
        let reader = Arc::new(reader);
        for group_views in [false, true] {
            let batch = 32;
            let spec = LoaderSpec {
                rows: rows.clone(),
                catalog: catalog.clone(),
                plan: BatchPlan {
                    rows: rows.len(),
                    batch,
                    accum: 1,
                    seed: 0,
                    group_views,
                },
                student: RenderSpec {
                    size,
                    normalization: Normalization::IMAGENET,
                    jitter_seed: Some(0),
                },
                feed: TargetFeed::Store(reader.clone()),
                first: 0,
                count: 0,
                prefetch: 0,
                part: tinymim_train::dist::Part::WHOLE,
            };
            let order = spec.plan.epoch_order(&rows, 0);
            let micro = (rows.len() / batch) as u64;
            let batches = per_core(micro as usize, |i| {
                load_micro_batch(&spec, i as u64 % micro, &order).expect("loads");
            });
            let views_per_s = batches * batch as f64;
            eprintln!(
                "loader end to end, one core, {encoding}, 4 views/img, batch {batch}, \
                 group_views {group_views}: {views_per_s:.0} views/s"
            );
            println!(
                "{}",
                serde_json::json!({"bench": "loader", "stage": "end_to_end",
                    "encoding": encoding.name(), "views_per_image": 4, "batch": batch,
                    "group_views": group_views, "per_core_views_per_s": views_per_s})
            );
        }
    }
    Ok(())
}
