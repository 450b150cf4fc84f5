//! The relation loss: forward KL from the teacher's relation maps to the student's.

use candle_core::Tensor;

use crate::error::{Result, TrainError};

/// L = L_QK + L_VV with L_R = (1/(B·H·N)) Σ T·(ln T − log_softmax(S)) summed over keys
/// (TINYMIM.md, "Loss"): forward KL(T ‖ S), teacher T as target, sum over keys, mean over
/// batch, heads and query tokens. Terms with T = 0 contribute 0. Student logits and teacher
/// maps are `[B, H, N, N]` f32; the targets carry no gradient.
pub fn relation_loss(
    student_qk: &Tensor,
    student_vv: &Tensor,
    target_qk: &Tensor,
    target_vv: &Tensor,
) -> Result<Tensor> {
    let (qk, vv) = relation_loss_parts(student_qk, student_vv, target_qk, target_vv)?;
    Ok((qk + vv)?)
}

/// The two terms of [`relation_loss`], `(L_QK, L_VV)`, as scalar tensors.
pub fn relation_loss_parts(
    student_qk: &Tensor,
    student_vv: &Tensor,
    target_qk: &Tensor,
    target_vv: &Tensor,
) -> Result<(Tensor, Tensor)> {
    Ok((
        relation_kl(student_qk, target_qk, "QK")?,
        relation_kl(student_vv, target_vv, "VV")?,
    ))
}

/// One relation's KL term, mean over `B·H·N` query rows.
fn relation_kl(logits: &Tensor, target: &Tensor, relation: &str) -> Result<Tensor> {
    let dims = logits.dims();
    if dims.len() != 4 || dims[2] != dims[3] {
        return Err(TrainError::Shape {
            tensor: format!("student {relation} relation logits"),
            expected: "[B, H, N, N]".to_string(),
            actual: dims.to_vec(),
        });
    }
    if target.dims() != dims {
        return Err(TrainError::Shape {
            tensor: format!("teacher {relation} relation map"),
            expected: format!("{dims:?} (the student's {relation} logits)"),
            actual: target.dims().to_vec(),
        });
    }
    let rows = (dims[0] * dims[1] * dims[2]) as f64;
    let kl = crate::model::fused::kl_rows(logits, target)?;
    Ok((kl.sum_all()? / rows)?)
}
