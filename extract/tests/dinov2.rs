//! The real DINOv2 ViT-S/14 teacher through its shipped config: relation maps computed from the
//! q/k/v tensors `extract` adds as outputs must equal the model's own attention probabilities,
//! and the three encodings must decode to the same maps within float16 rounding.

mod common;

use ndarray::{s, Array2, Array4, ArrayView2, ArrayView3, Axis, Ix4};
use tinymim_extract::encode::encode_batch;
use tinymim_extract::teacher::{
    Teacher, TeacherBatch, TeacherConfig, TeacherError, TeacherOptions,
};
use tinymim_formats::view::sample_view;
use tinymim_formats::{
    decode_maps, relation_maps, split_heads_qkv, Encoding, SourceImage, Targets, ViewRecipe,
};

/// The model's own softmax over q·kᵀ of the last layer.
const SOFTMAX: &str = "/backbone/encoder/layer.11/attention/attention/Softmax_output_0";
/// Unit roundoff of float16 (relative error of rounding a normal number).
const F16_U: f32 = 1.0 / 2048.0;
/// Largest absolute rounding error of a float16 subnormal (half its spacing 2⁻²⁴).
const F16_SUB: f32 = 1.0 / 33_554_432.0;
/// Slack for float32 arithmetic done in a different order by ONNX Runtime and by us.
const F32_SLACK: f32 = 2e-6;

fn config() -> TeacherConfig {
    TeacherConfig::load(&common::dinov2_config()).unwrap()
}

/// Two views of real photos rendered with formats, run through the teacher.
fn run_two_views(extra: &[&str]) -> (Teacher, TeacherBatch) {
    let options = TeacherOptions {
        extra_outputs: extra.iter().map(|s| s.to_string()).collect(),
        threads: Some(2),
        ..Default::default()
    };
    let mut teacher = Teacher::load(&common::dinov2_onnx(), Some(&config()), &options).unwrap();
    let pixels = two_view_pixels(&teacher);
    let batch = teacher.run(&pixels, 2).unwrap();
    (teacher, batch)
}

/// Two sampled views of real photos rendered for `teacher` (`[2, 3, S, S]`).
fn two_view_pixels(teacher: &Teacher) -> Vec<f32> {
    let g = teacher.geometry();
    let per_view = teacher.pixels_per_view();
    let mut pixels = vec![0.0f32; 2 * per_view];
    for (i, name) in ["astronaut.png", "chelsea.png"].iter().enumerate() {
        let (image, hash) = SourceImage::open(&common::photo(name)).unwrap();
        let view = sample_view(
            &ViewRecipe::default(),
            &hash,
            image.width(),
            image.height(),
            i as u32,
        );
        image
            .render(
                &view,
                g.image_size,
                &g.normalization,
                &mut pixels[i * per_view..(i + 1) * per_view],
            )
            .unwrap();
    }
    pixels
}

fn view3(a: &Array4<f32>, i: usize) -> ArrayView3<'_, f32> {
    a.slice(s![i, .., .., ..])
}

#[test]
fn maps_from_qkv_equal_the_models_own_attention_probabilities() {
    let (teacher, batch) = run_two_views(&[SOFTMAX]);
    let g = teacher.geometry();
    assert_eq!(batch.q.shape(), &[2, 6, 257, 64]);
    let attention = batch.extra[0].clone().into_dimensionality::<Ix4>().unwrap();
    assert_eq!(attention.shape(), &[2, 6, 257, 257]);
    let rows = encode_batch(Encoding::Maps, &batch).unwrap();
    let n = g.tokens as usize;
    for (i, stored_row) in rows.iter().enumerate() {
        let Targets::Half(stored_row) = stored_row else {
            panic!("maps rows are float16")
        };
        let maps = relation_maps(view3(&batch.q, i), view3(&batch.k, i), view3(&batch.v, i));
        let r_qk = maps.index_axis(Axis(0), 0);
        let reference = attention.index_axis(Axis(0), i);
        // f32 against f32: only the order of operations differs.
        let worst = (&r_qk - &reference)
            .iter()
            .fold(0.0f32, |m, d| m.max(d.abs()));
        assert!(
            worst < 1e-5,
            "view {i}: R_QK differs from the model's softmax by {worst}"
        );
        // The stored float16 row: each probability rounded once.
        for (h, row) in reference.outer_iter().enumerate() {
            for (q, probs) in row.outer_iter().enumerate() {
                for (k, &p) in probs.iter().enumerate() {
                    let stored = stored_row[(h * n + q) * n + k].to_f32();
                    let tol = F16_U * p + F16_SUB + F32_SLACK;
                    assert!(
                        (stored - p).abs() <= tol,
                        "view {i} h{h} q{q} k{k}: {stored} vs {p}"
                    );
                }
            }
        }
        // A pretrained ViT attends selectively: the class token's attention is far from uniform.
        let cls = reference.slice(s![.., 0, ..]);
        assert!(cls.iter().cloned().fold(0.0, f32::max) > 10.0 / n as f32);
    }
}

#[test]
fn the_configs_qkv_initializers_reproduce_q_k_v_from_ln1() {
    let (teacher, batch) = run_two_views(&[]);
    let g = teacher.geometry();
    let params = teacher
        .qkv_params()
        .expect("the dinov2 config names the qkv initializers");
    let (weight, bias) = params.views(g.dim as usize).unwrap();
    let ln1 = batch.ln1.as_ref().expect("the dinov2 config names ln1");
    for i in 0..2 {
        let x = ln1.index_axis(Axis(0), i);
        let qkv = split_heads_qkv(x, weight, bias, g.heads as usize);
        for (part, model) in [&batch.q, &batch.k, &batch.v].into_iter().enumerate() {
            let ours = qkv.index_axis(Axis(0), part);
            let model = model.index_axis(Axis(0), i);
            let scale = model.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let worst = (&ours - &model).iter().fold(0.0f32, |m, d| m.max(d.abs()));
            assert!(
                worst <= 1e-5 * scale.max(1.0),
                "view {i} part {part}: {worst} (scale {scale})"
            );
        }
    }
}

/// Elementwise bound on how far float16 rounding moves each value.
fn f16_error(a: ArrayView2<f32>) -> Array2<f32> {
    a.mapv(|x| F16_U * x.abs() + F16_SUB)
}

/// Bound on |softmax(a′b′ᵀ·s) − softmax(abᵀ·s)| per entry, where a′, b′ lie within `ea`, `eb`
/// of a, b and `p` = softmax(abᵀ·s): logits move by at most δ_ij ≤ s(|a||eb|ᵀ + |ea||b|ᵀ +
/// |ea||eb|ᵀ), and a row whose logits move by at most δ has every probability within a factor
/// e^{±2δ}, so |Δp_ij| ≤ p_ij (e^{2 max_j δ_ij} − 1).
fn softmax_bound(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    ea: &Array2<f32>,
    eb: &Array2<f32>,
    p: ArrayView2<f32>,
) -> Array2<f32> {
    let scale = 1.0 / (a.ncols() as f32).sqrt();
    let (abs_a, abs_b) = (a.mapv(f32::abs), b.mapv(f32::abs));
    let delta = (abs_a.dot(&eb.t()) + ea.dot(&abs_b.t()) + ea.dot(&eb.t())) * scale;
    let mut bound = p.to_owned();
    for (mut row, d) in bound.outer_iter_mut().zip(delta.outer_iter()) {
        let growth = (2.0 * d.iter().cloned().fold(0.0f32, f32::max)).exp() - 1.0;
        row.mapv_inplace(|p| p * growth + F32_SLACK);
    }
    bound
}

#[test]
fn every_encoding_decodes_to_the_same_maps_within_its_rounding() {
    let (teacher, batch) = run_two_views(&[]);
    let g = teacher.geometry();
    let params = teacher.qkv_params().unwrap();
    let (weight, _) = params.views(g.dim as usize).unwrap();
    let (h, d) = (g.heads as usize, g.head_dim() as usize);
    let encoded: Vec<(Encoding, Vec<Targets>)> = Encoding::ALL
        .into_iter()
        .map(|e| (e, encode_batch(e, &batch).unwrap()))
        .collect();
    for i in 0..2 {
        let (q, k, v) = (view3(&batch.q, i), view3(&batch.k, i), view3(&batch.v, i));
        let reference = relation_maps(q, k, v);
        // An error in ln1 moves q/k/v channel c by at most Σ_j |W_cj| · err(ln1_j).
        let ln1 = batch.ln1.as_ref().unwrap().index_axis(Axis(0), i);
        // Plus float32 accumulation over D = 384 terms (≤ 384·2⁻²⁴ ≈ 2.3e-5 relative).
        let accumulation = ln1.mapv(|x| 3e-5 * x.abs());
        let abs_weight_t = weight.mapv(f32::abs).reversed_axes();
        // float16: one rounding of each value.
        let f16_qkv_err = (f16_error(ln1) + &accumulation).dot(&abs_weight_t); // [N, 3D]
                                                                               // int8: at most half a step of the value's channel scale (a clamped maximum is closer).
        let int8_qkv_err = {
            let Some((_, Targets::Int8 { scales, .. })) = encoded
                .iter()
                .find(|(e, _)| *e == Encoding::Ln1Int8)
                .map(|(e, rows)| (e, &rows[i]))
            else {
                panic!("ln1-int8 rows are int8")
            };
            let half_step = Array2::from_shape_fn(ln1.dim(), |(_, c)| 0.5 * scales[c].to_f32());
            (half_step + &accumulation).dot(&abs_weight_t)
        };
        for (encoding, rows) in &encoded {
            let decoded = decode_maps(*encoding, &rows[i], &g, Some(params)).unwrap();
            assert_eq!(decoded.shape(), reference.shape());
            for (m, (a, b)) in [(q, k), (v, v)].into_iter().enumerate() {
                let part = [0, 2][m]; // q·kᵀ uses q and k; v·vᵀ uses v twice
                for head in 0..h {
                    let p = reference.slice(s![m, head, .., ..]);
                    let got = decoded.slice(s![m, head, .., ..]);
                    let (a, b) = (a.index_axis(Axis(0), head), b.index_axis(Axis(0), head));
                    let bound = match encoding {
                        Encoding::Maps => p.mapv(|x| F16_U * x + F16_SUB + F32_SLACK),
                        Encoding::Qkv => softmax_bound(a, b, &f16_error(a), &f16_error(b), p),
                        Encoding::Ln1 | Encoding::Ln1Int8 => {
                            let qkv_err = match encoding {
                                Encoding::Ln1 => &f16_qkv_err,
                                _ => &int8_qkv_err,
                            };
                            let cols = |p: usize| {
                                let start = p * g.dim as usize + head * d;
                                qkv_err.slice(s![.., start..start + d]).to_owned()
                            };
                            let (ea, eb) = (cols(part), cols(part + 1 - m));
                            softmax_bound(a, b, &ea, &eb, p)
                        }
                    };
                    for ((x, y), t) in got.iter().zip(p.iter()).zip(bound.iter()) {
                        assert!(
                            (x - y).abs() <= *t,
                            "{encoding} view {i} map {m} head {head}: {x} vs {y} (bound {t})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_config_naming_a_missing_tensor_is_refused_naming_it() {
    let mut c = config();
    c.tensors.k = "/backbone/encoder/layer.11/attention/attention/kee/Add_output_0".into();
    let err = Teacher::load(&common::dinov2_onnx(), Some(&c), &TeacherOptions::default())
        .err()
        .expect("a missing tensor must be refused");
    assert!(matches!(err, TeacherError::MissingTensor { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("kee/Add_output_0") && msg.contains("tensors.k"),
        "{msg}"
    );
}

#[test]
fn a_config_with_a_wrong_head_count_is_refused_naming_tensor_and_shapes() {
    // The head-split tensors ([B, H, N, d]) of the last layer, with twice the real head count.
    let mut c = config();
    let at = |t: &str| format!("/backbone/encoder/layer.11/attention/attention/{t}_output_0");
    c.tensors.layout = tinymim_extract::teacher::QkvLayout::Bhnd;
    c.tensors.q = at("Transpose_1");
    c.tensors.k = at("Transpose_2");
    c.tensors.v = at("Transpose");
    c.heads = 12;
    let err = Teacher::load(&common::dinov2_onnx(), Some(&c), &TeacherOptions::default())
        .err()
        .expect("a wrong head count must be refused");
    let msg = err.to_string();
    assert!(matches!(err, TeacherError::Shape { .. }), "{err:?}");
    assert!(msg.contains(&at("Transpose_1")), "{msg}");
    assert!(
        msg.contains("[1, 6, 257, 64]") && msg.contains("[1, 12, 257, 32]"),
        "{msg}"
    );
}

#[test]
fn a_model_without_the_contract_and_without_config_is_refused() {
    let err = Teacher::load(&common::dinov2_onnx(), None, &TeacherOptions::default())
        .err()
        .expect("a third-party model needs a config");
    assert!(matches!(err, TeacherError::NotContract { .. }), "{err:?}");
    assert!(err.to_string().contains("--config"), "{err}");
}

#[test]
fn a_config_naming_a_wrong_input_lists_the_real_inputs() {
    let mut c = config();
    c.input = "pixels".into();
    let err = Teacher::load(&common::dinov2_onnx(), Some(&c), &TeacherOptions::default())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("`pixels`") && msg.contains("input_image"),
        "{msg}"
    );
}

#[test]
fn a_graph_that_interpolates_its_position_embedding_runs_at_another_size_only_when_allowed() {
    let options = TeacherOptions {
        threads: Some(2),
        ..Default::default()
    };
    let at = |size: u32, any_input_size: bool| TeacherConfig {
        image_size: size,
        tokens: (size / 14).pow(2) + 1,
        any_input_size,
        ..config()
    };
    // The graph declares 224 px: 112 is refused unless the config allows any size.
    let refused = Teacher::load(&common::dinov2_onnx(), Some(&at(112, false)), &options)
        .err()
        .expect("112 px against a 224-px declaration")
        .to_string();
    assert!(
        refused.contains("declared shape") && refused.contains("112"),
        "{refused}"
    );

    let mut small = Teacher::load(&common::dinov2_onnx(), Some(&at(112, true)), &options).unwrap();
    let (image, _) = SourceImage::open(&common::photo("astronaut.png")).unwrap();
    let g = small.geometry();
    let mut pixels = vec![0.0f32; small.pixels_per_view()];
    let side = image.width().min(image.height());
    let view = tinymim_formats::View {
        x: 0,
        y: 0,
        w: side,
        h: side,
        flip: false,
    };
    image
        .render(&view, g.image_size, &g.normalization, &mut pixels)
        .unwrap();
    let batch = small.run(&pixels, 1).unwrap();
    assert_eq!(
        batch.q.shape(),
        &[1, 6, 65, 64],
        "8×8 patches + the class token"
    );
    let maps = relation_maps(view3(&batch.q, 0), view3(&batch.k, 0), view3(&batch.v, 0));
    let peak = maps
        .slice(s![0, .., .., ..])
        .iter()
        .cloned()
        .fold(0.0, f32::max);
    assert!(
        peak > 10.0 / 65.0,
        "a pretrained teacher still attends selectively at 112 px (peak {peak})"
    );

    // At the declared size the flag changes nothing.
    let (_, reference) = run_two_views(&[]);
    let mut same = Teacher::load(&common::dinov2_onnx(), Some(&at(224, true)), &options).unwrap();
    let two = two_view_pixels(&same);
    assert_eq!(same.run(&two, 2).unwrap().q, reference.q);
}
