//! Rows, order and the loader: the canonical row order does not depend on how the store was
//! written; the loader delivers the planned rows; jitter touches the student's pixels only.

mod loop_fixture;

use std::sync::Arc;

use loop_fixture::{
    teacher_config, write_images, write_store, write_teacher, World, SEED, TEACHER_HEADS,
};
use tinymim_formats::{Normalization, RelationStore};
use tinymim_train::data::{
    epoch_order, load_micro_batch, scan_images, BatchPlan, ImageCatalog, Loader, LoaderSpec,
    Payload, RenderSpec, RowSet, TargetFeed,
};

fn rows_of(store: &std::path::Path) -> RowSet {
    let reader = RelationStore::open(store).unwrap().reader().unwrap();
    RowSet::from_store(&reader, store).unwrap()
}

#[test]
fn row_order_is_canonical_whatever_the_segments() {
    // One store written in one segment, another in two segments (images in another order):
    // the same (image, view) rows in the same canonical order.
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all");
    let paths = write_images(&all, 3);
    let teacher = write_teacher(&dir.path().join("t"), &teacher_config(), TEACHER_HEADS, 1);
    write_store(
        &dir.path().join("one.zarr"),
        &all,
        &teacher,
        TEACHER_HEADS,
        2,
        4,
    );
    let (first, second) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    std::fs::copy(&paths[2], first.join("img2.png")).unwrap();
    std::fs::copy(&paths[0], second.join("img0.png")).unwrap();
    std::fs::copy(&paths[1], second.join("img1.png")).unwrap();
    let two = dir.path().join("two.zarr");
    write_store(&two, &first, &teacher, TEACHER_HEADS, 2, 4);
    write_store(&two, &second, &teacher, TEACHER_HEADS, 2, 4);
    let (a, b) = (rows_of(&dir.path().join("one.zarr")), rows_of(&two));
    assert_eq!(a.len(), 6);
    let strip = |r: &RowSet| {
        r.rows()
            .iter()
            .map(|r| (r.image, r.view))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(a.digest(), b.digest());
    let keys: Vec<_> = a
        .rows()
        .iter()
        .map(|r| (r.image, r.view.x, r.view.y))
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "sorted by image hash, then view"
    );

    // Online rows drawn with the store's seed are the same rows.
    let online = RowSet::sampled(
        &scan_images(&all).unwrap(),
        &RelationStore::open(&two).unwrap().header().recipe,
        2,
    );
    assert_eq!(strip(&online), strip(&a));
}

fn spec(world: &World, jitter: bool) -> LoaderSpec {
    let store = RelationStore::open(&world.store).unwrap();
    let reader = store.reader().unwrap();
    let rows = RowSet::from_store(&reader, &world.store).unwrap();
    let catalog = ImageCatalog::from_store(&reader, &rows, &world.images).unwrap();
    let render = |jitter: bool| RenderSpec {
        size: 32,
        normalization: Normalization::IMAGENET,
        jitter_seed: jitter.then_some(SEED),
    };
    LoaderSpec {
        plan: BatchPlan {
            rows: rows.len(),
            batch: 2,
            accum: 1,
            seed: SEED,
            group_views: false,
        },
        rows: Arc::new(rows),
        catalog: Arc::new(catalog),
        student: render(jitter),
        feed: TargetFeed::Teacher(render(false)),
        first: 0,
        count: 6,
        prefetch: 2,
        part: tinymim_train::dist::Part::WHOLE,
    }
}

#[test]
fn the_loader_delivers_the_planned_rows_in_order() {
    let world = World::new(3, 2);
    let spec = spec(&world, true);
    let batches: Vec<_> = Loader::start(spec.clone()).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 6);
    for (micro, batch) in batches.iter().enumerate() {
        let epoch = micro as u64 / 3;
        let order = epoch_order(6, SEED, epoch);
        let want: Vec<_> = spec
            .plan
            .micro_rows(micro as u64, &order)
            .iter()
            .map(|&i| *spec.rows.get(i))
            .collect();
        assert_eq!(batch.epoch, epoch);
        assert_eq!(batch.rows, want);
        assert_eq!(batch.pixels.len(), 2 * 3 * 32 * 32);
    }
    let seen: std::collections::HashSet<_> =
        batches[..3].iter().flat_map(|b| b.rows.clone()).collect();
    assert_eq!(seen.len(), 6, "an epoch visits every row once");
}

#[test]
fn jitter_changes_student_pixels_only() {
    let world = World::new(3, 2);
    let order = epoch_order(6, SEED, 0);
    let jittered = load_micro_batch(&spec(&world, true), 0, &order).unwrap();
    let plain = load_micro_batch(&spec(&world, false), 0, &order).unwrap();
    let Payload::TeacherPixels(teacher) = &jittered.payload else {
        panic!("teacher feed")
    };
    assert_eq!(teacher, &plain.pixels, "the teacher sees unjittered pixels");
    assert_ne!(jittered.pixels, plain.pixels, "the student's are jittered");
    // And a resumed run renders the same jitter.
    assert_eq!(
        jittered.pixels,
        load_micro_batch(&spec(&world, true), 0, &order)
            .unwrap()
            .pixels
    );
}
