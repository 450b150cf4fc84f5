//! Stored targets to relation maps on the training device: the stored rows of any encoding
//! decode to `(R_QK, R_VV)`, each `[B, H, N, N]` f32 (TINYMIM.md, "Relation maps").
//!
//! - `maps`: the stored maps themselves;
//! - `qkv`: softmax(q·kᵀ·d^-½) and softmax(v·vᵀ·d^-½) of the stored q, k, v;
//! - `ln1`: q, k, v = X̂Wᵀ + b from the stored LN1 output and the store's qkv weight and bias,
//!   then as `qkv`;
//! - `ln1-int8`: X̂ = value · scale (the row's per-channel scales) first, then as `ln1`. The
//!   int8 values travel to the device as they are stored (one byte each; candle has no i8, so
//!   as u8, sign restored there).
//!
//! From `qkv` and `ln1` rows the maps can be formed with any split of the teacher's width D into
//! relation heads H' (`train --relation-heads`, MiniLMv2's relation heads): q, k and v are
//! joined back to `[N, D]` and split into H' heads of width D / H', so one store serves every
//! student width that H' divides. `maps` rows are softmaxes of the teacher's own split and
//! cannot be re-split.

use candle_core::{DType, Device, Tensor};
use tinymim_formats::{Encoding, QkvParams, StoreError, StoreHeader, Targets, TeacherGeometry};

use super::error::{DataError, Result};
use crate::model::fused::softmax_last_dim;
use crate::model::HeadsQkv;

/// Decodes a store's rows into relation maps on one device.
#[derive(Clone, Debug)]
pub struct TargetDecoder {
    encoding: Encoding,
    /// The teacher's geometry: the stored rows' tokens, heads and width.
    geometry: TeacherGeometry,
    /// Relation heads of the decoded maps.
    heads: usize,
    /// Wᵀ `[D, 3D]` and b `[3D]` of the teacher's target block (`ln1` only).
    projection: Option<(Tensor, Tensor)>,
    device: Device,
}

impl TargetDecoder {
    /// A decoder for the store described by `header`, forming maps with `relation_heads`
    /// heads (`None`: the teacher's); `qkv` (the store's qkv parameters) is required for the
    /// `ln1` encoding. Refused: a head count that does not divide the teacher's width, and any
    /// other than the teacher's for `maps`.
    pub fn new(
        header: &StoreHeader,
        qkv: Option<&QkvParams>,
        relation_heads: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let g = &header.geometry;
        let dim = g.dim as usize;
        let stored_heads = g.heads as usize;
        let heads = relation_heads.unwrap_or(stored_heads);
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(DataError::RelationHeads(format!(
                "{heads} relation heads do not divide the teacher's width {dim}"
            )));
        }
        if header.encoding == Encoding::Maps && heads != stored_heads {
            return Err(DataError::RelationHeads(format!(
                "a `maps` store holds the teacher's relation maps for its own {stored_heads} \
                 heads, softmaxes that cannot be split into {heads}; train with the teacher's \
                 {stored_heads} relation heads, or extract `qkv`, `ln1` or `ln1-int8` targets, \
                 which any head split can be formed from"
            )));
        }
        let projection = if header.encoding.stores_ln1() {
            let params = qkv.ok_or(StoreError::MissingQkvParams)?;
            params.views(dim)?;
            let weight = Tensor::from_slice(&params.weight, (3 * dim, dim), device)?;
            let bias = Tensor::from_slice(&params.bias, 3 * dim, device)?;
            Some((weight.t()?.contiguous()?, bias))
        } else {
            None
        };
        Ok(TargetDecoder {
            encoding: header.encoding,
            geometry: g.clone(),
            heads,
            projection,
            device: device.clone(),
        })
    }

    /// Relation heads of the decoded maps.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// The stored values on the device as f32 `[total values]`: float16 widened; int8 with
    /// its sign restored and times its channel's scale.
    fn values_on_device(&self, targets: &Targets, b: usize) -> Result<Tensor> {
        match targets {
            Targets::Half(values) => {
                Ok(Tensor::from_slice(values, values.len(), &self.device)?.to_dtype(DType::F32)?)
            }
            Targets::Int8 { values, scales } => {
                let bytes: &[u8] = bytemuck::cast_slice(values);
                let (n, dim) = (self.geometry.tokens as usize, self.geometry.dim as usize);
                let unsigned = Tensor::from_slice(bytes, (b, n, dim), &self.device)?;
                // Two's complement: bytes from 128 up stand for value − 256.
                let negative = unsigned.ge(128u8)?.to_dtype(DType::F32)?;
                let signed = (unsigned.to_dtype(DType::F32)? - (negative * 256.0)?)?;
                let scales =
                    Tensor::from_slice(scales, (b, 1, dim), &self.device)?.to_dtype(DType::F32)?;
                Ok(signed.broadcast_mul(&scales)?.flatten_all()?)
            }
        }
    }

    /// The relation maps `(R_QK, R_VV)`, each `[B, H, N, N]` f32, of `targets` holding `B`
    /// rows back to back.
    pub fn decode(&self, targets: &Targets) -> Result<(Tensor, Tensor)> {
        let what = format!("a batch of `{}` target rows", self.encoding);
        let b = self.encoding.count_rows(&self.geometry, targets, &what)?;
        let g = &self.geometry;
        let (h, n, dim) = (g.heads as usize, g.tokens as usize, g.dim as usize);
        let d = dim / h;
        let (rh, rd) = (self.heads, dim / self.heads);
        let values = self.values_on_device(targets, b)?;
        match (self.encoding, &self.projection) {
            (Encoding::Maps, _) => {
                let maps = values.reshape((b, 2, h, n, n))?;
                Ok((maps.get_on_dim(1, 0)?, maps.get_on_dim(1, 1)?))
            }
            (Encoding::Qkv, _) => {
                let mut qkv = values.reshape((b, 3, h, n, d))?;
                if rh != h {
                    // Join the heads back into [N, D] per token, then split into H'.
                    qkv = qkv
                        .permute((0, 1, 3, 2, 4))?
                        .reshape((b, 3, n, rh, rd))?
                        .permute((0, 1, 3, 2, 4))?;
                }
                let heads = HeadsQkv {
                    q: qkv.get_on_dim(1, 0)?.contiguous()?,
                    k: qkv.get_on_dim(1, 1)?.contiguous()?,
                    v: qkv.get_on_dim(1, 2)?.contiguous()?,
                };
                relation_maps(&heads)
            }
            (Encoding::Ln1 | Encoding::Ln1Int8, Some((weight_t, bias))) => {
                let qkv = values
                    .reshape((b * n, dim))?
                    .matmul(weight_t)?
                    .broadcast_add(bias)?
                    .reshape((b, n, 3, rh, rd))?
                    .permute((2, 0, 3, 1, 4))?;
                let heads = HeadsQkv {
                    q: qkv.get(0)?.contiguous()?,
                    k: qkv.get(1)?.contiguous()?,
                    v: qkv.get(2)?.contiguous()?,
                };
                relation_maps(&heads)
            }
            (Encoding::Ln1 | Encoding::Ln1Int8, None) => Err(StoreError::MissingQkvParams.into()),
        }
    }
}

/// Relation maps of q, k, v: the softmax over keys of the relation logits, detached (targets
/// carry no gradient).
pub fn relation_maps(heads: &HeadsQkv) -> Result<(Tensor, Tensor)> {
    let (qk, vv) = heads.relation_logits()?;
    Ok((
        softmax_last_dim(&qk, 1.0)?.detach(),
        softmax_last_dim(&vv, 1.0)?.detach(),
    ))
}
