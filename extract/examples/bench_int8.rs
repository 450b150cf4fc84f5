//! What an 8-bit `ln1` would cost in fidelity, per scale layout ([`tinymim_formats::quant`]),
//! beside the float16 `ln1` the store holds today, on the real teacher's targets.
//!
//! Every view of the cached photos is rendered and run through the DINOv2-S teacher (the same
//! teacher, photos and views as `bench_extract`); its q, k, v give the **exact** f32 relation
//! maps, and its LN1 output X̂ is stored each way (float16, or int8 with scales), decoded back,
//! projected with the target block's qkv weights and turned into maps, which are compared with
//! the exact ones (`common/fidelity.rs`: mean KL(exact ‖ decoded) per row, largest absolute
//! error of a probability). Bytes per row are given at this teacher's size and at ViT-L/16
//! block 18's (N 197, D 1024).
//!
//! ```text
//! cargo run --release -p tinymim-extract --example bench_int8 -- [VIEWS_PER_IMAGE] [BATCH]
//! ```
//!
//! Defaults: 4 views of each of the 10 cached photos, batch 8. Needs the asset cache
//! (scripts/setup.sh).

use half::f16;
use ndarray::{s, Array2, ArrayView2, Axis};

#[path = "common/assets.rs"]
mod assets;
#[path = "common/fidelity.rs"]
mod fidelity;
use assets::{arg, cache, dinov2_teacher};
use fidelity::Fidelity;

use tinymim_extract::teacher::TeacherOptions;
use tinymim_formats::images::walk;
use tinymim_formats::quant::{dequantize, quantize, Int8Layout};
use tinymim_formats::view::sample_views;
use tinymim_formats::{relation_maps, split_heads_qkv, SourceImage, ViewRecipe};

/// ViT-L/16 block 18: tokens and width.
const VIT_L: (usize, usize) = (197, 1024);

/// A way of storing X̂.
#[derive(Clone, Copy)]
enum Storage {
    /// Today's `ln1`.
    Float16,
    /// 8-bit with scales.
    Int8(Int8Layout),
}

impl Storage {
    fn all() -> Vec<Storage> {
        std::iter::once(Storage::Float16)
            .chain(Int8Layout::ALL.map(Storage::Int8))
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Storage::Float16 => "float16",
            Storage::Int8(layout) => layout.name(),
        }
    }

    /// Bytes of a row of N × D.
    fn row_bytes(self, tokens: usize, dim: usize) -> usize {
        match self {
            Storage::Float16 => 2 * tokens * dim,
            Storage::Int8(layout) => layout.row_bytes(tokens, dim),
        }
    }

    /// X̂ stored and read back.
    fn round_trip(self, x: ArrayView2<f32>) -> Array2<f32> {
        match self {
            Storage::Float16 => x.mapv(|v| f16::from_f32(v).to_f32()),
            Storage::Int8(layout) => dequantize(&quantize(x, layout)),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let views = arg(1, 4) as u32;
    let batch = arg(2, 8);
    let mut teacher = dinov2_teacher(&TeacherOptions::default())?;
    let g = teacher.geometry();
    let params = teacher
        .qkv_params()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the teacher exposes no qkv weights"))?;
    let (n, dim, heads) = (g.tokens as usize, g.dim as usize, g.heads as usize);
    let (weight, bias) = params.views(dim)?;

    let mut pixels = Vec::new();
    for file in walk(&cache().join("photos"))? {
        let (image, hash) = SourceImage::open(&file.path)?;
        for view in sample_views(
            &ViewRecipe::default(),
            &hash,
            image.width(),
            image.height(),
            views,
        ) {
            let mut out = vec![0.0; teacher.pixels_per_view()];
            image.render(&view, g.image_size, &g.normalization, &mut out)?;
            pixels.extend(out);
        }
    }
    let per_view = teacher.pixels_per_view();
    let storages = Storage::all();
    let mut fidelity = vec![Fidelity::default(); storages.len()];
    for chunk in pixels.chunks(batch * per_view) {
        let out = teacher.run(chunk, chunk.len() / per_view)?;
        let ln1 = out
            .ln1
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the teacher gives no ln1"))?;
        for b in 0..out.len() {
            let truth = relation_maps(
                out.q.index_axis(Axis(0), b),
                out.k.index_axis(Axis(0), b),
                out.v.index_axis(Axis(0), b),
            );
            let x = ln1.index_axis(Axis(0), b);
            for (storage, fid) in storages.iter().zip(&mut fidelity) {
                let decoded = storage.round_trip(x);
                let qkv = split_heads_qkv(decoded.view(), weight, bias, heads);
                let maps = relation_maps(
                    qkv.slice(s![0, .., .., ..]),
                    qkv.slice(s![1, .., .., ..]),
                    qkv.slice(s![2, .., .., ..]),
                );
                fid.add(&truth, &maps);
            }
        }
    }
    eprintln!(
        "{} views, DINOv2-S/14 at {} px (N {n}, D {dim}, H {heads})",
        fidelity[0].rows, g.image_size
    );
    eprintln!(
        "{:<14} {:>12} {:>14} {:>16} {:>12} {:>8}",
        "ln1 storage", "bytes/row", "ViT-L bytes", "KL(exact‖dec)", "max |err|", "zeros"
    );
    for (storage, fid) in storages.iter().zip(&fidelity) {
        let (ln, ld) = VIT_L;
        eprintln!(
            "{:<14} {:>12} {:>14} {:>16.3e} {:>12.2e} {:>7.3}%",
            storage.name(),
            storage.row_bytes(n, dim),
            storage.row_bytes(ln, ld),
            fid.mean_kl(),
            fid.max_abs,
            100.0 * fid.zero_share()
        );
        println!(
            "{}",
            serde_json::json!({
                "bench": "int8",
                "storage": storage.name(),
                "views": fid.rows,
                "row_bytes": storage.row_bytes(n, dim),
                "vit_l_row_bytes": storage.row_bytes(ln, ld),
                "mean_kl_exact_decoded": fid.mean_kl(),
                "max_abs_error": fid.max_abs,
                "decoded_zero_share": fid.zero_share(),
            })
        );
    }
    Ok(())
}
