//! Measures the relation store at a ViT-L teacher's size (N = 197, H = 16, D = 1024): write
//! throughput, random row reads, and decoding each encoding to maps on the CPU.
//!
//! `cargo run -p tinymim-formats --example store_bench [--release] [ROWS]` (default 48 rows).
//! Targets are random values, so zstd barely compresses them: read and disk figures are for
//! incompressible data.

use std::time::Instant;

use half::f16;
use tinymim_formats::quant::ln1_int8_row;
use tinymim_formats::vit::{ArchFile, ArchOverrides, VitArch};
use tinymim_formats::{
    content_key, decode_maps, Encoding, Hash32, ImageEntry, QkvParams, RelationStore, RowMeta,
    StoreHeader, Targets, View, ViewRecipe,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows: u64 = std::env::args().nth(1).map_or(Ok(48), |a| a.parse())?;
    // ViT-L/16 block 18 at 224 px: the built-in preset's geometry.
    let preset = ArchFile::preset("mae-vit-large")?;
    let geometry = VitArch::resolve(&ArchOverrides::default(), &preset)?.geometry();
    let dim = geometry.dim as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let params = QkvParams {
        weight: (0..3 * dim * dim).map(|_| 0.06 * uniform()).collect(),
        bias: (0..3 * dim).map(|_| 0.01 * uniform()).collect(),
    };
    println!("{rows} rows per encoding, N = 197, H = 16, D = 1024");
    println!("encoding  row MB  write MB/s  read rows/s  read MB/s  decode ms/row  decode/read");
    for encoding in Encoding::ALL {
        let dir = tempfile::tempdir()?;
        let header = StoreHeader {
            teacher: Hash32::of_bytes(b"bench teacher"),
            geometry: geometry.clone(),
            encoding,
            recipe: ViewRecipe::default(),
        };
        let store = RelationStore::create_or_open(dir.path(), &header, Some(&params))?;
        let row_len = encoding.row_len(&geometry);
        let scale = if encoding == Encoding::Maps {
            0.01
        } else {
            2.0
        };
        let values: Vec<f32> = (0..row_len).map(|_| scale * uniform()).collect();
        let targets = match encoding {
            Encoding::Ln1Int8 => {
                let (n, d) = (geometry.tokens as usize, geometry.dim as usize);
                ln1_int8_row(ndarray::ArrayView2::from_shape((n, d), &values)?)
            }
            _ => Targets::Half(values.into_iter().map(f16::from_f32).collect()),
        };
        let row_mb = encoding.row_bytes(&geometry) as f64 / 1e6;

        let start = Instant::now();
        let mut writer = store.begin_segment(rows)?;
        for i in 0..rows {
            let image = ImageEntry {
                hash: Hash32::of_bytes(&i.to_le_bytes()),
                path: format!("img_{i}.jpg"),
                size: 1,
                label: None,
                modified: None,
            };
            let view = View {
                x: 0,
                y: 0,
                w: 224,
                h: 224,
                flip: false,
            };
            let key = content_key(&header.teacher, 18, encoding, &image.hash, &view);
            let meta = RowMeta {
                key,
                image: image.hash,
                view,
            };
            writer.add_image(image)?;
            writer.push(meta, &targets)?;
        }
        writer.commit(serde_json::Value::Null)?;
        let write_s = start.elapsed().as_secs_f64();

        let reader = store.reader()?;
        let order: Vec<usize> = (0..rows as usize)
            .map(|i| (i * 7919) % rows as usize)
            .collect();
        let start = Instant::now();
        for &i in &order {
            std::hint::black_box(reader.targets(i)?);
        }
        let read_s = start.elapsed().as_secs_f64() / rows as f64;

        let decode_rows = rows.min(8) as usize;
        let start = Instant::now();
        for _ in 0..decode_rows {
            std::hint::black_box(decode_maps(encoding, &targets, &geometry, Some(&params))?);
        }
        let decode_s = start.elapsed().as_secs_f64() / decode_rows as f64;
        println!(
            "{:<8}  {row_mb:6.2}  {:10.0}  {:11.0}  {:9.0}  {:13.2}  {:11.2}",
            encoding.name(),
            rows as f64 * row_mb / write_s,
            1.0 / read_s,
            row_mb / read_s,
            1e3 * decode_s,
            decode_s / read_s,
        );
    }
    Ok(())
}
