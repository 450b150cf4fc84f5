//! `train eval` against a straightforward f64 computation of the relation loss, view by view,
//! on a tiny store: every row visited once, rendered as stored, weighted per view whatever the
//! batch size, and the twin is the untrained model of the run's seed.

mod loop_fixture;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use loop_fixture::{World, SEED, TEACHER_HEADS};
use tinymim_formats::{RelationStore, SourceImage};
use tinymim_train::data::{scan_images, RowSet};
use tinymim_train::eval::{evaluate, EvalConfig};
use tinymim_train::export::load_exported;
use tinymim_train::run::train;
use tinymim_train::Student;

/// KL(T ‖ softmax(S)) summed over keys, per query row, averaged over rows; f64 throughout.
fn mean_row_kl(logits: &[f32], target: &[f64], n: usize) -> f64 {
    let rows = logits.len() / n;
    let mut total = 0.0;
    for r in 0..rows {
        let s: Vec<f64> = logits[r * n..(r + 1) * n]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let log_z = max + s.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        for (k, &t) in target[r * n..(r + 1) * n].iter().enumerate() {
            if t > 0.0 {
                total += t * (t.ln() - (s[k] - log_z));
            }
        }
    }
    total / rows as f64
}

/// The reference: mean over the store's views of (L_QK, L_VV) for `model`.
fn reference(world: &World, model: &Student) -> (f64, f64) {
    let store = RelationStore::open(&world.store).unwrap();
    let reader = store.reader().unwrap();
    let g = store.header().geometry.clone();
    let rows = RowSet::from_store(&reader, &world.store).unwrap();
    let images: HashMap<_, _> = scan_images(&world.images)
        .unwrap()
        .into_iter()
        .map(|f| (f.hash, f.path))
        .collect();
    let (n, h, s) = (
        g.tokens as usize,
        g.heads as usize,
        model.config().image_size,
    );
    let (mut qk, mut vv) = (0.0, 0.0);
    for row in rows.rows() {
        let (image, _) = SourceImage::open(&images[&row.image]).unwrap();
        let mut pixels = vec![0f32; 3 * s * s];
        image
            .render(&row.view, s as u32, &g.normalization, &mut pixels)
            .unwrap();
        let pixels = Tensor::from_vec(pixels, (1, 3, s, s), &Device::Cpu).unwrap();
        let (l_qk, l_vv) = model.relation_logits(&pixels, None).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let target: Vec<f64> = reader
            .targets(row.store_row.unwrap())
            .unwrap()
            .to_f32(g.dim as usize)
            .into_iter()
            .map(f64::from)
            .collect();
        let per_map = h * n * n;
        qk += mean_row_kl(&flat(l_qk), &target[..per_map], n);
        vv += mean_row_kl(&flat(l_vv), &target[per_map..], n);
    }
    let views = rows.len() as f64;
    (qk / views, vv / views)
}

#[test]
fn eval_equals_the_f64_loss_of_student_and_twin_at_any_batch_size() {
    let world = World::new(3, 2);
    let run = world.cache_run("run");
    train(&tinymim_train::run::RunConfig {
        max_steps: Some(3),
        ..run.clone()
    })
    .unwrap();
    let model = run.out.join("model.safetensors");
    let config = |batch| EvalConfig {
        store: world.store.clone(),
        images: None,
        model: model.clone(),
        batch,
        device: Device::Cpu,
        twin_seed: None,
    };
    // 6 views: batches of 4 + 2 must weigh each view alike.
    let report = evaluate(&config(4)).unwrap();
    assert_eq!((report.views, report.twin_seed), (6, SEED));
    let (student, _) = load_exported(&model, &Device::Cpu).unwrap();
    let twin = Student::frozen(student.config(), TEACHER_HEADS, SEED, &Device::Cpu).unwrap();
    for (name, terms, model) in [
        ("student", report.student, &student),
        ("twin", report.twin, &twin),
    ] {
        let (qk, vv) = reference(&world, model);
        for (term, ours, reference) in [("L_QK", terms.loss_qk, qk), ("L_VV", terms.loss_vv, vv)] {
            assert!(
                (ours - reference).abs() <= 1e-5 * reference.max(1e-3),
                "{name} {term}: eval {ours} vs f64 {reference}"
            );
        }
        assert!((terms.loss - (terms.loss_qk + terms.loss_vv)).abs() < 1e-12);
    }
    assert!(
        report.student.loss < report.twin.loss,
        "three steps of distillation lower the loss on the training views: {report}"
    );
    let one = evaluate(&config(1)).unwrap();
    assert!(
        (one.student.loss - report.student.loss).abs() < 1e-6,
        "{one} vs {report}"
    );
}
