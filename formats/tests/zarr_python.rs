//! zarr-python 3 reads a store written by zarrs: the test writes stores in every encoding
//! (one committed segment, one cut short after a checkpoint), runs `read_store.py` with the
//! cache's Python and compares keys, views, targets (bit for bit; an 8-bit store's scales too,
//! and the values they decode to), image tables and qkv parameters with what was written.
//! The same check runs on a local folder and on an `s3://` store of a real S3-compatible server
//! (moto's, see `support/s3.rs`), which zarr-python reads through s3fs.

#[path = "support/s3.rs"]
mod s3;
mod store_fixture;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use store_fixture::{geometry, header, image, qkv_params, rows};
use tinymim_formats::{Encoding, RelationStore, Targets};

fn hex_list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn zarr_python_reads_what_zarrs_wrote() {
    for encoding in Encoding::ALL {
        let dir = tempfile::tempdir().unwrap();
        writes_and_zarr_python_reads(encoding, &dir.path().join("relations.zarr"), &[]);
    }
}

#[test]
fn zarr_python_reads_what_zarrs_wrote_to_object_storage() {
    let server = s3::server();
    for encoding in Encoding::ALL {
        let url = server.fresh_url(&format!("zarr-python-{encoding}"));
        writes_and_zarr_python_reads(encoding, &url, &server.env());
    }
}

/// Writes a store of `encoding` at `path` (a folder or an `s3://` URL), reads it with
/// zarr-python (`env` added to its environment) and compares.
fn writes_and_zarr_python_reads(encoding: Encoding, path: &Path, env: &[(&str, String)]) {
    let python = s3::python();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/read_store.py");
    {
        let header = header(encoding);
        let params = encoding.stores_ln1().then(|| qkv_params(3));
        let store = RelationStore::create_or_open(path, &header, params.as_ref()).unwrap();

        // Segment A: 7 rows in shards of 3 (the last one partly filled), committed.
        let committed = rows(&header, 0, 7);
        let mut writer = store.begin_segment_with_shard_rows(10, 3).unwrap();
        for (image, meta, targets) in &committed {
            writer.add_image(image.clone()).unwrap();
            writer.push(*meta, targets).unwrap();
        }
        writer.commit(serde_json::json!({"note": "A"})).unwrap();
        // Segment B: 5 rows, checkpointed after 3 (one shard), then cut short.
        let cut = rows(&header, 100, 5);
        let mut writer = store.begin_segment_with_shard_rows(8, 3).unwrap();
        for (i, (image, meta, targets)) in cut.iter().enumerate() {
            writer.add_image(image.clone()).unwrap();
            writer.push(*meta, targets).unwrap();
            if i == 3 {
                writer.checkpoint().unwrap();
            }
        }
        drop(writer);

        let output = Command::new(&python)
            .arg(&script)
            .arg(path)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "read_store.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let read: Value = serde_json::from_slice(&output.stdout).unwrap();

        let record = &read["tinymim"];
        assert_eq!(record["format"], "tinymim.relations");
        assert_eq!(record["encoding"], encoding.name());
        assert_eq!(record["dtype"], encoding.dtype());
        assert_eq!(record["teacher"]["fingerprint"], header.teacher.to_hex());
        assert_eq!(record["teacher"]["geometry"]["tokens"], 5);

        let segments = read["segments"].as_array().unwrap();
        assert_eq!(segments.len(), 2, "{encoding}");
        for (segment, written, closed) in [
            (&segments[0], &committed, true),
            (&segments[1], &cut[..3].to_vec(), false),
        ] {
            let n = written.len();
            assert_eq!(segment["committed_rows"], n as u64, "{encoding}");
            assert_eq!(segment["closed"], closed);
            assert_eq!(segment["targets_dtype"], encoding.dtype());
            let mut shape = vec![n as u64];
            shape.extend(encoding.row_shape(&header.geometry));
            assert_eq!(segment["targets_shape"], serde_json::json!(shape));
            let keys: Vec<String> = written.iter().map(|(_, m, _)| m.key.to_hex()).collect();
            assert_eq!(hex_list(&segment["key"]), keys, "{encoding}");
            let images: Vec<String> = written.iter().map(|(_, m, _)| m.image.to_hex()).collect();
            assert_eq!(hex_list(&segment["image"]), images);
            let views: Vec<Vec<u32>> = written
                .iter()
                .map(|(_, m, _)| {
                    let v = m.view;
                    vec![v.x, v.y, v.w, v.h, u32::from(v.flip)]
                })
                .collect();
            assert_eq!(segment["view"], serde_json::json!(views));
            let mut targets = encoding.no_targets();
            for (_, _, t) in written {
                targets.append(t);
            }
            let (bits, scale_bits): (Vec<u16>, Vec<u16>) = match &targets {
                Targets::Half(values) => (values.iter().map(|x| x.to_bits()).collect(), vec![]),
                Targets::Int8 { values, scales } => (
                    values.iter().map(|&v| u16::from(v as u8)).collect(),
                    scales.iter().map(|s| s.to_bits()).collect(),
                ),
            };
            assert_eq!(
                segment["targets_bits"],
                serde_json::json!(bits),
                "{encoding}"
            );
            if encoding == Encoding::Ln1Int8 {
                assert_eq!(segment["scale_bits"], serde_json::json!(scale_bits));
                // zarr-python's value · scale is exactly what the Rust side decodes.
                let decoded: Vec<f64> = serde_json::from_value(segment["decoded"].clone()).unwrap();
                let ours: Vec<f64> = targets
                    .to_f32(geometry().dim as usize)
                    .into_iter()
                    .map(f64::from)
                    .collect();
                assert_eq!(decoded, ours);
            } else {
                assert!(segment.get("scale_bits").is_none(), "{encoding}");
            }
        }

        // Image tables: A holds images 0..4, B (checkpointed with 4 rows pushed) 100..102.
        for (segment, table) in [(&segments[0], 0..4u64), (&segments[1], 100..102)] {
            let entries: Vec<_> = table.map(image).collect();
            let hashes: Vec<String> = entries.iter().map(|e| e.hash.to_hex()).collect();
            assert_eq!(hex_list(&segment["images"]["hash"]), hashes);
            let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(segment["images"]["path"], serde_json::json!(paths));
            let sizes: Vec<u64> = entries.iter().map(|e| e.size).collect();
            assert_eq!(segment["images"]["size"], serde_json::json!(sizes));
            let labels: Vec<&str> = entries
                .iter()
                .map(|e| e.label.as_deref().unwrap_or(""))
                .collect();
            assert_eq!(segment["images"]["label"], serde_json::json!(labels));
            // Modification times as int64 nanoseconds, i64::MIN where none was recorded.
            let modified: Vec<i64> = entries
                .iter()
                .map(|e| e.modified.unwrap_or(i64::MIN))
                .collect();
            assert_eq!(segment["images"]["modified"], serde_json::json!(modified));
        }

        match params {
            Some(p) => {
                let weight: Vec<f32> = serde_json::from_value(read["qkv_weight"].clone()).unwrap();
                let bias: Vec<f32> = serde_json::from_value(read["qkv_bias"].clone()).unwrap();
                assert_eq!((weight, bias), (p.weight, p.bias));
            }
            None => assert!(read.get("qkv_weight").is_none()),
        }
    }
}
