//! The relation store: round trips, the commit protocol, header checks, concurrent segments
//! and verification. The tests of its guarantees run twice: in a local folder and in a prefix
//! of a real S3-compatible server (moto's, `support/s3.rs`).

#[path = "support/s3.rs"]
mod s3;
mod store_fixture;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use store_fixture::{bits, geometry, header, image, qkv_params, rows};
use tinymim_formats::{
    Encoding, Hash32, ImageEntry, QkvParams, RelationStore, RowMeta, SegmentWriter, StoreError,
    StoreHeader, Targets, VerifyProblem, VerifyReport,
};

fn params_for(encoding: Encoding) -> Option<QkvParams> {
    encoding.stores_ln1().then(|| qkv_params(7))
}

fn create(path: &Path, header: &StoreHeader) -> RelationStore {
    RelationStore::create_or_open(path, header, params_for(header.encoding).as_ref()).unwrap()
}

/// Where a test's store lives: a fresh local folder, or a fresh prefix of the S3 test server.
enum Place {
    Folder(tempfile::TempDir),
    Bucket(PathBuf),
}

impl Place {
    /// A fresh folder and a fresh `s3://` prefix, for test `test`.
    fn both(test: &str) -> [Place; 2] {
        [
            Place::Folder(tempfile::tempdir().unwrap()),
            Place::Bucket(s3::server().fresh_url(test)),
        ]
    }

    /// The store's folder or URL.
    fn path(&self) -> PathBuf {
        match self {
            Place::Folder(dir) => dir.path().join("relations.zarr"),
            Place::Bucket(url) => url.clone(),
        }
    }

    /// (bucket, object key) of the store's `key`.
    fn object(&self, key: &str) -> (String, String) {
        let url = self.path().display().to_string();
        let rest = url.strip_prefix("s3://").expect("an s3:// place");
        let (bucket, prefix) = rest.split_once('/').unwrap();
        (bucket.to_string(), format!("{prefix}/{key}"))
    }

    /// The bytes of the store's file or object `key`.
    fn read(&self, key: &str) -> Vec<u8> {
        match self {
            Place::Folder(_) => std::fs::read(self.path().join(key)).unwrap(),
            Place::Bucket(_) => {
                let (bucket, key) = self.object(key);
                let hex = s3::server().boto3(&format!(
                    "print(s3.get_object(Bucket={bucket:?}, Key={key:?})['Body'].read().hex())"
                ));
                (0..hex.trim().len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect()
            }
        }
    }

    /// Overwrites the store's file or object `key` with `bytes`.
    fn write(&self, key: &str, bytes: &[u8]) {
        match self {
            Place::Folder(_) => std::fs::write(self.path().join(key), bytes).unwrap(),
            Place::Bucket(_) => {
                let (bucket, key) = self.object(key);
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                s3::server().boto3(&format!(
                    "s3.put_object(Bucket={bucket:?}, Key={key:?}, Body=bytes.fromhex({hex:?}))"
                ));
            }
        }
    }
}

fn push_all(writer: &mut SegmentWriter, rows: &[(ImageEntry, RowMeta, Targets)]) {
    for (image, meta, targets) in rows {
        writer.add_image(image.clone()).unwrap();
        writer.push(*meta, targets).unwrap();
    }
}

#[test]
fn what_is_pushed_is_read_back_bit_for_bit_in_every_encoding() {
    for (encoding, place) in Encoding::ALL
        .into_iter()
        .flat_map(|e| Place::both(&format!("round-trip-{e}")).map(|p| (e, p)))
    {
        let path = place.path();
        let header = header(encoding);
        let store = create(&path, &header);
        let written = rows(&header, 0, 10);
        let mut writer = store.begin_segment_with_shard_rows(16, 4).unwrap();
        push_all(&mut writer, &written);
        let summary = serde_json::json!({"views": 10, "provider": "test"});
        let info = writer.commit(summary.clone()).unwrap();
        assert_eq!((info.committed_rows, info.closed), (10, true));

        let store = RelationStore::open(&path).unwrap();
        assert_eq!(store.header(), &header);
        let segments = store.segments().unwrap();
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].summary, summary);
        let reader = store.reader().unwrap();
        assert_eq!(reader.len(), 10, "{encoding}");
        for (i, (image, meta, targets)) in written.iter().enumerate() {
            assert_eq!(reader.row(i), meta, "{encoding} row {i}");
            assert_eq!(
                bits(&reader.targets(i).unwrap()),
                bits(targets),
                "{encoding} row {i}"
            );
            assert_eq!(reader.image(&image.hash), Some(image));
            let maps = reader.maps(i).unwrap();
            let (h, n) = (geometry().heads as usize, geometry().tokens as usize);
            assert_eq!(maps.shape(), &[2, h, n, n]);
            if encoding == Encoding::Maps {
                let stored = targets.to_f32(geometry().dim as usize);
                assert_eq!(maps.as_slice().unwrap(), stored.as_slice());
            } else {
                for row_sum in maps.sum_axis(ndarray::Axis(3)) {
                    assert!(
                        (row_sum - 1.0).abs() < 1e-5,
                        "{encoding}: row sums to {row_sum}"
                    );
                }
            }
        }
        assert!(matches!(
            reader.targets(10),
            Err(StoreError::RowOutOfRange { index: 10, len: 10 })
        ));
        let report = reader.verify().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.rows, report.segments), (10, 1));
        assert_eq!(reader.qkv_params(), params_for(encoding).as_ref());
        assert_eq!(
            store.qkv_params().unwrap(),
            params_for(encoding),
            "{encoding}: stored qkv parameters"
        );
        assert!(store.disk_bytes().unwrap() > 0);
    }
}

#[test]
fn a_segment_never_checkpointed_is_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Qkv);
    let store = create(dir.path(), &header);
    let mut writer = store.begin_segment_with_shard_rows(16, 4).unwrap();
    // Five rows: the first shard of four is on disk, the fifth only buffered.
    push_all(&mut writer, &rows(&header, 0, 5));
    let id = writer.id().to_string();
    drop(writer);
    let segments = store.segments().unwrap();
    assert_eq!(segments.len(), 1);
    assert_eq!(segments[0].id, id);
    assert_eq!((segments[0].committed_rows, segments[0].closed), (0, false));
    assert_eq!(store.reader().unwrap().len(), 0);
    assert!(store.committed_keys().unwrap().is_empty());
}

#[test]
fn a_crash_keeps_the_checkpointed_rows_and_only_those() {
    for place in Place::both("crash") {
        let path = place.path();
        let header = header(Encoding::Maps);
        let store = create(&path, &header);
        let written = rows(&header, 0, 10);
        let mut writer = store.begin_segment_with_shard_rows(16, 4).unwrap();
        push_all(&mut writer, &written[..6]);
        writer.checkpoint().unwrap(); // one full shard: rows 0..4; rows 4, 5 stay buffered
        push_all(&mut writer, &written[6..]); // a second shard (4..8) reaches the disk
        assert_eq!(writer.rows(), 10);
        drop(writer); // the crash

        let reader = RelationStore::open(&path).unwrap().reader().unwrap();
        assert_eq!(reader.len(), 4);
        for (i, (image, meta, targets)) in written[..4].iter().enumerate() {
            assert_eq!(reader.row(i), meta);
            assert_eq!(bits(&reader.targets(i).unwrap()), bits(targets));
            assert_eq!(reader.image(&image.hash), Some(image));
        }
        let keys = store.committed_keys().unwrap();
        let expected: HashSet<Hash32> = written[..4].iter().map(|(_, m, _)| m.key).collect();
        assert_eq!(keys, expected);
        assert!(reader.verify().unwrap().is_ok());
    }
}

#[test]
fn the_image_table_survives_checkpoints_and_grows_past_the_row_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Qkv);
    let store = create(dir.path(), &header);
    let mut writer = store.begin_segment_with_shard_rows(2, 1).unwrap();
    let written = rows(&header, 0, 2);
    push_all(&mut writer, &written);
    writer.checkpoint().unwrap();
    // More images than rows: the table's arrays grow; the last chunk is rewritten.
    for i in 1..1500 {
        writer.add_image(image(i)).unwrap();
    }
    writer.checkpoint().unwrap();
    drop(writer);
    let reader = store.reader().unwrap();
    assert_eq!(reader.len(), 2);
    for i in 0..1500 {
        assert_eq!(reader.image(&image(i).hash), Some(&image(i)), "image {i}");
    }
}

#[test]
fn reopening_lists_the_committed_keys_of_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Ln1);
    let store = create(dir.path(), &header);
    let first = rows(&header, 0, 6);
    let second = rows(&header, 100, 3);
    for batch in [&first, &second] {
        let mut writer = store.begin_segment(64).unwrap();
        push_all(&mut writer, batch);
        writer.commit(serde_json::Value::Null).unwrap();
    }
    drop(store);
    let reopened = create(dir.path(), &header);
    let expected: HashSet<Hash32> = first.iter().chain(&second).map(|(_, m, _)| m.key).collect();
    assert_eq!(expected.len(), 9);
    assert_eq!(reopened.committed_keys().unwrap(), expected);
    assert_eq!(reopened.segments().unwrap().len(), 2);
}

#[test]
fn a_key_committed_twice_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Qkv);
    let store = create(dir.path(), &header);
    for _ in 0..2 {
        let mut writer = store.begin_segment(8).unwrap();
        push_all(&mut writer, &rows(&header, 0, 3));
        writer.commit(serde_json::Value::Null).unwrap();
    }
    let reader = store.reader().unwrap();
    assert_eq!(reader.len(), 3);
    assert_eq!(reader.verify().unwrap().rows, 6);
}

#[test]
fn image_paths_that_leave_the_source_root_are_refused_with_the_entry_named() {
    for bad in [
        "/etc/passwd",
        "../outside.png",
        "cats/../../x.png",
        "",
        "./a.png",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let header = header(Encoding::Maps);
        let store = create(dir.path(), &header);
        // Rows 2 and 3 are views of image 1, the table's second entry.
        let mut written = rows(&header, 0, 4);
        for (image, _, _) in written.iter_mut().skip(2) {
            image.path = bad.to_string();
        }
        let mut writer = store.begin_segment(8).unwrap();
        push_all(&mut writer, &written);
        writer.commit(serde_json::Value::Null).unwrap();
        let err = store.reader().err().expect("a refusal").to_string();
        let entry =
            format!("image table entry 1 is `{bad}`, which is not a path under the source root");
        assert!(
            err.contains("images/path") && err.contains(&entry),
            "{bad}: {err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}

#[test]
fn segments_written_before_modification_times_were_recorded_read_as_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (id, written) = committed_store(dir.path());
    assert!(written.iter().any(|(image, _, _)| image.modified.is_some()));
    let table = dir.path().join("segments").join(&id).join("images");
    std::fs::remove_dir_all(table.join("modified")).unwrap();
    let reader = RelationStore::open(dir.path()).unwrap().reader().unwrap();
    for (image, _, _) in &written {
        let expected = ImageEntry {
            modified: None,
            ..image.clone()
        };
        assert_eq!(reader.image(&image.hash), Some(&expected));
    }
}

/// Opens `path` with `other` and returns the error message, which must be a mismatch.
fn refusal(path: &Path, other: &StoreHeader) -> String {
    match RelationStore::create_or_open(path, other, params_for(other.encoding).as_ref()) {
        Err(e @ StoreError::Mismatch { .. }) => e.to_string(),
        Err(e) => panic!("expected a mismatch, got {e}"),
        Ok(_) => panic!("a store for another header was opened"),
    }
}

#[test]
fn a_store_refuses_writers_for_another_teacher_encoding_geometry_or_recipe() {
    for place in Place::both("refusal") {
        let path = place.path();
        let original = header(Encoding::Qkv);
        create(&path, &original);

        let mut other = original.clone();
        other.teacher = Hash32::of_bytes(b"another teacher");
        let message = refusal(&path, &other);
        assert!(message.contains("teacher fingerprint"), "{message}");
        assert!(message.contains(&original.teacher.to_hex()), "{message}");
        assert!(message.contains(&other.teacher.to_hex()), "{message}");

        let mut other = original.clone();
        other.encoding = Encoding::Maps;
        let message = refusal(&path, &other);
        assert!(message.contains("encoding"), "{message}");
        assert!(
            message.contains("qkv") && message.contains("maps"),
            "{message}"
        );

        let mut other = original.clone();
        other.geometry.tokens = 197;
        let message = refusal(&path, &other);
        assert!(message.contains("tokens"), "{message}");
        assert!(
            message.contains('5') && message.contains("197"),
            "{message}"
        );

        let mut other = original.clone();
        other.recipe.seed = 4242;
        let message = refusal(&path, &other);
        assert!(message.contains("view recipe field `seed`"), "{message}");
        assert!(message.contains("4242"), "{message}");

        // The same header opens.
        create(&path, &original);
    }
}

#[test]
fn ln1_needs_qkv_parameters_and_refuses_different_ones() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Ln1);
    assert!(matches!(
        RelationStore::create_or_open(dir.path(), &header, None),
        Err(StoreError::MissingQkvParams)
    ));
    let short = QkvParams {
        weight: vec![0.0; 5],
        bias: vec![0.0; 24],
    };
    let message = RelationStore::create_or_open(dir.path(), &header, Some(&short))
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.contains("qkv weight") && message.contains("192"),
        "{message}"
    );
    create(dir.path(), &header);
    let err = RelationStore::create_or_open(dir.path(), &header, Some(&qkv_params(8)))
        .err()
        .unwrap();
    assert!(
        matches!(&err, StoreError::Mismatch { what, .. } if what == "qkv weight"),
        "{err}"
    );
}

#[test]
fn folders_that_hold_no_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing");
    let message = RelationStore::open(&missing).err().unwrap().to_string();
    assert!(message.contains("nothing") && message.contains("not a tinymim relation store"));

    std::fs::write(dir.path().join("photo.jpg"), b"not a store").unwrap();
    let err = RelationStore::create_or_open(dir.path(), &header(Encoding::Qkv), None)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    assert!(!dir.path().join("zarr.json").exists());

    let foreign = dir.path().join("foreign.zarr");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(
        foreign.join("zarr.json"),
        r#"{"zarr_format": 3, "node_type": "group", "attributes": {}}"#,
    )
    .unwrap();
    let message = RelationStore::open(&foreign).err().unwrap().to_string();
    assert!(message.contains("no `tinymim` attribute"), "{message}");
}

#[test]
fn pushes_that_break_the_contract_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Qkv);
    let store = create(dir.path(), &header);
    let mut writer = store.begin_segment(1).unwrap();
    let (image, meta, targets) = rows(&header, 0, 1).remove(0);

    let err = writer.push(meta, &targets).unwrap_err();
    assert!(matches!(err, StoreError::UnknownImage { .. }), "{err}");
    writer.add_image(image).unwrap();

    let Targets::Half(values) = &targets else {
        panic!("qkv rows are float16")
    };
    let err = writer
        .push(meta, &Targets::Half(values[1..].to_vec()))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Length {
                expected: 120,
                got: 119,
                ..
            }
        ),
        "{err}"
    );

    let mut wrong = meta;
    wrong.view.flip = !wrong.view.flip;
    let err = writer.push(wrong, &targets).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");

    writer.push(meta, &targets).unwrap();
    let err = writer.push(meta, &targets).unwrap_err();
    assert!(
        matches!(err, StoreError::CapacityExceeded { capacity: 1, .. }),
        "{err}"
    );
}

#[test]
fn two_segments_written_from_two_threads_are_both_readable() {
    for place in Place::both("two-writers") {
        let path = place.path();
        let header = header(Encoding::Maps);
        let store = create(&path, &header);
        let batches = [rows(&header, 0, 40), rows(&header, 500, 40)];
        std::thread::scope(|scope| {
            for batch in &batches {
                let store = &store;
                scope.spawn(move || {
                    let mut writer = store.begin_segment_with_shard_rows(40, 3).unwrap();
                    for (i, chunk) in batch.chunks(7).enumerate() {
                        push_all(&mut writer, chunk);
                        if i % 2 == 0 {
                            writer.checkpoint().unwrap();
                        }
                    }
                    writer.commit(serde_json::Value::Null).unwrap();
                });
            }
        });
        let expected: HashMap<Hash32, &Targets> = batches
            .iter()
            .flatten()
            .map(|(_, meta, targets)| (meta.key, targets))
            .collect();
        let reader = store.reader().unwrap();
        assert_eq!(reader.len(), 80);
        for i in 0..reader.len() {
            let key = reader.row(i).key;
            assert_eq!(bits(&reader.targets(i).unwrap()), bits(expected[&key]));
        }
    }
}

/// Flips a byte of the inner chunk stored first in a shard file of `rows` inner chunks of one
/// row each; returns that chunk's row within the shard.
fn flip_a_byte_of_the_first_inner_chunk(place: &Place, shard: &str, rows: usize) -> u64 {
    let mut bytes = place.read(shard);
    // The shard index (Zarr sharding spec, index at the end): rows × (offset, size) u64 LE,
    // then a crc32c.
    let index = &bytes[bytes.len() - 4 - rows * 16..bytes.len() - 4];
    let first = (0..rows)
        .find(|&i| index[16 * i..16 * i + 8] == [0; 8])
        .expect("one inner chunk starts the shard");
    bytes[10] ^= 0x01;
    place.write(shard, &bytes);
    first as u64
}

/// A committed maps store with 8 rows in shards of 4; returns the segment id.
fn committed_store(path: &Path) -> (String, Vec<(ImageEntry, RowMeta, Targets)>) {
    let header = header(Encoding::Maps);
    let store = create(path, &header);
    let written = rows(&header, 0, 8);
    let mut writer = store.begin_segment_with_shard_rows(8, 4).unwrap();
    push_all(&mut writer, &written);
    let id = writer.id().to_string();
    writer.commit(serde_json::Value::Null).unwrap();
    (id, written)
}

#[test]
fn verify_finds_a_flipped_byte_in_a_shard() {
    for place in Place::both("flipped-byte") {
        let path = place.path();
        let (id, written) = committed_store(&path);
        // Second shard (rows 4..8) of the targets.
        let shard = format!("segments/{id}/maps/c/1/0/0/0/0");
        let bad_row = 4 + flip_a_byte_of_the_first_inner_chunk(&place, &shard, 4);

        let report =
            only_this_row_is_unreadable(&path, &written, bad_row, &format!("segments/{id}/maps"));
        assert_eq!(report.rows, 8);
    }
}

#[test]
fn concurrent_creators_of_one_store_agree_on_one_header_and_refuse_the_other() {
    for place in Place::both("creators") {
        let path = place.path();
        let ours = header(Encoding::Ln1);
        let mut theirs = ours.clone();
        theirs.teacher = Hash32::of_bytes(b"another teacher");
        // Six creators at once, three per teacher (the other with other qkv parameters).
        let outcomes: Vec<(bool, Result<(), String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|i| {
                    let (path, header) = (&path, if i % 2 == 0 { &ours } else { &theirs });
                    scope.spawn(move || {
                        let params = qkv_params(if i % 2 == 0 { 7 } else { 8 });
                        let opened = RelationStore::create_or_open(path, header, Some(&params));
                        (i % 2 == 0, opened.map(|_| ()).map_err(|e| e.to_string()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let stored = RelationStore::open(&path).unwrap().header().clone();
        let winner_is_ours = stored == ours;
        assert!(winner_is_ours || stored == theirs);
        for (is_ours, outcome) in &outcomes {
            match outcome {
                // A creator of the stored header opens it unless the other teacher's qkv
                // parameters landed first (then it is refused too, naming them).
                Ok(()) => assert_eq!(*is_ours, winner_is_ours, "{outcomes:?}"),
                Err(message) => assert!(
                    message.contains("teacher fingerprint") || message.contains("qkv"),
                    "{message}"
                ),
            }
        }
        // Whatever opened, opened a sound store: its stored parameters are the winner's.
        if outcomes.iter().any(|(_, o)| o.is_ok()) {
            let params = qkv_params(if winner_is_ours { 7 } else { 8 });
            let store = RelationStore::open(&path).unwrap();
            assert_eq!(store.qkv_params().unwrap(), Some(params));
        }
    }
}

#[test]
fn a_bucket_prefix_that_holds_other_objects_is_refused() {
    let place = Place::Bucket(s3::server().fresh_url("foreign"));
    place.write("photo.jpg", b"not a store");
    let err = RelationStore::create_or_open(&place.path(), &header(Encoding::Qkv), None)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    assert!(err.to_string().contains("photo.jpg"), "{err}");
    let missing = s3::server().fresh_url("missing");
    let message = RelationStore::open(&missing).err().unwrap().to_string();
    assert!(
        message.contains("not a tinymim relation store") && message.contains("s3://"),
        "{message}"
    );
}

/// Every row of the store at `path` but `bad_row` reads back as written; `bad_row` fails naming
/// `array`, and `verify` reports it and nothing else. Returns the report.
fn only_this_row_is_unreadable(
    path: &Path,
    written: &[(ImageEntry, RowMeta, Targets)],
    bad_row: u64,
    array: &str,
) -> VerifyReport {
    let reader = RelationStore::open(path).unwrap().reader().unwrap();
    for (i, (_, _, targets)) in written.iter().enumerate() {
        if i as u64 != bad_row {
            assert_eq!(bits(&reader.targets(i).unwrap()), bits(targets), "row {i}");
        }
    }
    let err = reader.targets(bad_row as usize).unwrap_err();
    assert!(err.to_string().contains(array), "{err}");
    let report = reader.verify().unwrap();
    let bad: Vec<u64> = report
        .problems
        .iter()
        .map(|p| match p {
            VerifyProblem::Unreadable { row, .. } => *row,
            other => panic!("unexpected problem {other}"),
        })
        .collect();
    assert_eq!(bad, vec![bad_row], "{:?}", report.problems);
    report
}

#[test]
fn verify_finds_a_key_that_does_not_match_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let (id, written) = committed_store(dir.path());
    // Overwrite the first shard of the key array with row 1's key replaced.
    let storage = std::sync::Arc::new(zarrs::filesystem::FilesystemStore::new(dir.path()).unwrap());
    let keys = zarrs::array::Array::open(storage, &format!("/segments/{id}/key")).unwrap();
    let mut shard: Vec<u8> = written[..4].iter().flat_map(|(_, m, _)| m.key.0).collect();
    let forged = Hash32::of_bytes(b"forged");
    shard[32..64].copy_from_slice(&forged.0);
    keys.store_chunk(&[0, 0], shard).unwrap();

    let reader = RelationStore::open(dir.path()).unwrap().reader().unwrap();
    let report = reader.verify().unwrap();
    assert_eq!(
        report.problems,
        vec![VerifyProblem::WrongKey {
            segment: id,
            row: 1,
            stored: forged,
            expected: written[1].1.key,
        }]
    );
}

#[test]
fn readers_are_shared_between_threads_and_writers_move_to_one() {
    fn shared<T: Send + Sync>() {}
    fn moved<T: Send>() {}
    shared::<tinymim_formats::StoreReader>();
    shared::<RelationStore>();
    moved::<SegmentWriter>();

    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Qkv);
    let store = create(dir.path(), &header);
    let written = rows(&header, 0, 12);
    let mut writer = store.begin_segment_with_shard_rows(12, 5).unwrap();
    push_all(&mut writer, &written);
    writer.commit(serde_json::Value::Null).unwrap();
    let reader = store.reader().unwrap();
    std::thread::scope(|scope| {
        for t in 0..3 {
            let (reader, written) = (&reader, &written);
            scope.spawn(move || {
                for i in (t..12).step_by(3) {
                    assert_eq!(bits(&reader.targets(i).unwrap()), bits(&written[i].2));
                }
            });
        }
    });
}

#[test]
fn empty_segments_and_segments_being_created_are_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Maps);
    let store = create(dir.path(), &header);
    // A writer that has claimed its folder but written no metadata yet.
    std::fs::create_dir(dir.path().join("segments/0000000000-1-0-deadbeef")).unwrap();
    let empty = store.begin_segment(0).unwrap();
    let info = empty.commit(serde_json::json!({"views": 0})).unwrap();
    assert_eq!((info.committed_rows, info.closed), (0, true));
    let segments = store.segments().unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert_eq!(segments[0].id, info.id);
    let reader = store.reader().unwrap();
    assert!(reader.is_empty());
    assert!(reader.verify().unwrap().is_ok());
}

#[test]
fn a_failed_shard_write_keeps_its_rows_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let header = header(Encoding::Maps);
    let store = create(dir.path(), &header);
    let written = rows(&header, 0, 4);
    let mut writer = store.begin_segment_with_shard_rows(8, 2).unwrap();
    // A file where the targets' chunk folder must go makes the first shard write fail.
    let blocker = dir.path().join(format!("segments/{}/maps/c", writer.id()));
    std::fs::write(&blocker, b"in the way").unwrap();
    push_all(&mut writer, &written[..1]);
    let (image, meta, targets) = &written[1];
    writer.add_image(image.clone()).unwrap();
    let err = writer.push(*meta, targets).unwrap_err();
    assert!(err.to_string().contains("maps"), "{err}");
    assert_eq!(writer.rows(), 2, "the row stays buffered");
    std::fs::remove_file(&blocker).unwrap();
    push_all(&mut writer, &written[2..]);
    writer.commit(serde_json::Value::Null).unwrap();
    let reader = store.reader().unwrap();
    assert_eq!(reader.len(), 4);
    for (i, (_, meta, targets)) in written.iter().enumerate() {
        assert_eq!(reader.row(i), meta);
        assert_eq!(bits(&reader.targets(i).unwrap()), bits(targets));
    }
}

#[test]
fn verify_finds_a_corrupt_shard_index() {
    let dir = tempfile::tempdir().unwrap();
    let (id, _) = committed_store(dir.path());
    let shard = dir.path().join(format!("segments/{id}/maps/c/0/0/0/0/0"));
    let mut bytes = std::fs::read(&shard).unwrap();
    let len = bytes.len();
    bytes[len - 20] ^= 0x80; // inside the index (4 × 16 bytes, then its crc32c)
    std::fs::write(&shard, bytes).unwrap();
    let reader = RelationStore::open(dir.path()).unwrap().reader().unwrap();
    assert!(reader.targets(0).is_err());
    let report = reader.verify().unwrap();
    assert!(!report.is_ok());
    for problem in &report.problems {
        assert!(
            matches!(problem, VerifyProblem::Unreadable { row, .. } if *row < 4),
            "{problem}"
        );
    }
}

#[test]
fn an_int8_store_takes_int8_rows_with_their_scales_and_verifies_both() {
    let place = Place::Folder(tempfile::tempdir().unwrap());
    let path = place.path();
    let header = header(Encoding::Ln1Int8);
    let store = create(&path, &header);
    let written = rows(&header, 0, 8);
    let mut writer = store.begin_segment_with_shard_rows(8, 4).unwrap();
    let (image, meta, targets) = &written[0];
    writer.add_image(image.clone()).unwrap();
    let half = Targets::Half(vec![
        half::f16::ZERO;
        Encoding::Ln1Int8.row_len(&geometry())
    ]);
    let err = writer.push(*meta, &half).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, StoreError::Mismatch { .. })
            && message.contains("int8")
            && message.contains("float16"),
        "{message}"
    );
    let Targets::Int8 { values, scales } = targets else {
        panic!("ln1-int8 rows are int8")
    };
    let short = Targets::Int8 {
        values: values.clone(),
        scales: scales[1..].to_vec(),
    };
    let err = writer.push(*meta, &short).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Length {
                expected: 8,
                got: 7,
                ..
            }
        ),
        "{err}"
    );
    push_all(&mut writer, &written);
    let id = writer.id().to_string();
    writer.commit(serde_json::Value::Null).unwrap();
    // On disk: the values as int8, the scales as float16 beside them.
    for (array, dtype) in [("ln1-int8", "int8"), ("scale", "float16")] {
        let meta =
            std::fs::read_to_string(path.join(format!("segments/{id}/{array}/zarr.json"))).unwrap();
        assert!(
            meta.contains(&format!("\"data_type\": \"{dtype}\"")),
            "{array}: {meta}"
        );
    }

    let bad_row =
        flip_a_byte_of_the_first_inner_chunk(&place, &format!("segments/{id}/scale/c/1/0"), 4) + 4;
    only_this_row_is_unreadable(
        &place.path(),
        &written,
        bad_row,
        &format!("segments/{id}/scale"),
    );
}
