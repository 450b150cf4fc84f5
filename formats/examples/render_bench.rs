//! Rendering throughput: decode cost per photo, and sampled views rendered at 224 px per second
//! on one core (fast_image_resize's own threading is confined to a one-thread rayon pool).
//!
//! `cargo run --release -p tinymim-formats --example render_bench [PHOTO] [VIEWS]`
//!
//! PHOTO defaults to every photo in the cache (`$TINYMIM_CACHE/photos`, else
//! `.cache/tinymim/photos`); VIEWS (default 2000) views of each are rendered.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tinymim_formats::view::sample_views;
use tinymim_formats::{Hash32, Normalization, SourceImage, ViewRecipe};

const SIZE: u32 = 224;

fn photos(arg: Option<String>) -> Vec<PathBuf> {
    if let Some(path) = arg {
        return vec![PathBuf::from(path)];
    }
    let cache = std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/tinymim"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(cache.join("photos"))
        .expect("no photos in the cache: run scripts/setup.sh")
        .map(|entry| entry.expect("readable cache folder").path())
        .filter(|path| {
            let ext = path.extension().unwrap_or_default().to_ascii_lowercase();
            ext == "png" || ext == "jpg" || ext == "jpeg"
        })
        .collect();
    paths.sort();
    paths
}

fn main() {
    let mut args = std::env::args().skip(1);
    let photos = photos(args.next());
    let views_per_photo: u32 = args
        .next()
        .map_or(2000, |v| v.parse().expect("VIEWS is a number"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("rayon pool");
    pool.install(|| {
        let mut out = vec![0f32; (3 * SIZE * SIZE) as usize];
        let mut rgb = vec![0u8; (3 * SIZE * SIZE) as usize];
        let (mut total_views, mut total_render_s, mut total_rgb_s, mut total_decode_s) = (0u64, 0.0, 0.0, 0.0);
        println!("{:<24} {:>10} {:>11} {:>13} {:>13}", "photo", "size", "decode ms", "views/s f32", "views/s rgb8");
        for path in &photos {
            let bytes = std::fs::read(path).expect("readable photo");
            let hash = Hash32::of_bytes(&bytes);
            let repeats = 5;
            let start = Instant::now();
            for _ in 0..repeats {
                SourceImage::decode(&bytes, path).expect("decodable photo");
            }
            let decode_s = start.elapsed().as_secs_f64() / repeats as f64;
            let image = SourceImage::decode(&bytes, path).expect("decodable photo");
            let views = sample_views(&ViewRecipe::default(), &hash, image.width(), image.height(), views_per_photo);

            let start = Instant::now();
            for view in &views {
                image.render(view, SIZE, &Normalization::IMAGENET, &mut out).expect("view inside");
            }
            let render_s = start.elapsed().as_secs_f64();
            let start = Instant::now();
            for view in &views {
                image.render_rgb(view, SIZE, &mut rgb).expect("view inside");
            }
            let rgb_s = start.elapsed().as_secs_f64();

            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let dims = format!("{}×{}", image.width(), image.height());
            println!(
                "{name:<24} {dims:>10} {:>11.2} {:>13.0} {:>13.0}",
                decode_s * 1e3,
                views.len() as f64 / render_s,
                views.len() as f64 / rgb_s
            );
            total_views += views.len() as u64;
            total_render_s += render_s;
            total_rgb_s += rgb_s;
            total_decode_s += decode_s;
        }
        let per_view_ms = total_render_s * 1e3 / total_views as f64;
        let decode_ms = total_decode_s * 1e3 / photos.len() as f64;
        println!(
            "one core: {:.0} views/s at {SIZE} px (normalised f32 CHW), {:.0} views/s as 8-bit RGB; \
             decode {decode_ms:.2} ms per photo = {:.1} rendered views",
            total_views as f64 / total_render_s,
            total_views as f64 / total_rgb_s,
            decode_ms / per_view_ms
        );
    });
}
