//! The truncated teacher graph: a timm/MAE ViT up to its target block's relation maps.
//!
//! `pixels [B,3,S,S]` → patch-embed Conv → flatten, transpose → class token prepended → + the
//! checkpoint's `pos_embed` → blocks 1 … T−1 in full (pre-norm, LayerNorm eps 1e-6, qkv with
//! bias, softmax attention, proj, exact erf GELU MLP, no LayerScale) → target block T: LN1
//! (`ln1`), qkv with the contract's initializers, head split (`q`, `k`, `v`), and the relation
//! maps `r_qk` = Softmax(q kᵀ · d^-½), `r_vv` = Softmax(v vᵀ · d^-½). Nothing after.
//!
//! Linear weights of the full blocks are stored transposed (`<name>.t`, `[in, out]`) for
//! MatMul; the target block's qkv is stored as the contract says (`[3D, D]`, float32 whatever
//! the weight dtype) and transposed inside the graph.

use tinymim_formats::teacher::contract;

use tinymim_formats::vit::{block_tensor, Checkpoint, VitArch};

use super::error::ExportError;
use super::onnx::{Attr, Dim, GraphBuilder, WeightDtype};

/// LayerNorm epsilon of MAE/timm ViTs.
const LN_EPS: f32 = 1e-6;

/// Builds the truncated teacher graph of `arch` from `checkpoint`'s weights (already checked
/// with [`VitArch::check`]).
pub fn teacher_graph(
    arch: &VitArch,
    checkpoint: &Checkpoint,
    dtype: WeightDtype,
) -> Result<onnx_protobuf::GraphProto, ExportError> {
    let mut b = VitBuilder {
        g: GraphBuilder::new(&arch.name, dtype),
        arch,
        checkpoint,
    };
    let mut x = b.embed()?;
    for index in 0..arch.target_block - 1 {
        x = b.block(index, &x)?;
    }
    b.target_block(&x)?;
    Ok(b.g.finish())
}

struct VitBuilder<'a> {
    g: GraphBuilder,
    arch: &'a VitArch,
    checkpoint: &'a Checkpoint,
}

impl VitBuilder<'_> {
    /// A checkpoint tensor as a graph weight, under its own name.
    fn weight(&mut self, name: &str, dims: &[usize]) -> Result<String, ExportError> {
        let values = self.checkpoint.load_f32(name)?;
        Ok(self.g.weight(name, dims, &values))
    }

    /// Patch embedding, class token and position embedding: `[B, N, D]`.
    fn embed(&mut self) -> Result<String, ExportError> {
        let (d, p, s) = (self.arch.dim, self.arch.patch, self.arch.image_size);
        let scope = "patch_embed";
        self.g.input(
            contract::INPUT,
            &[Dim::Batch, Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)],
        );
        let w = self.weight("patch_embed.proj.weight", &[d, 3, p, p])?;
        let bias = self.weight("patch_embed.proj.bias", &[d])?;
        let p = p as i64;
        let conv = self.g.node(
            scope,
            "Conv",
            &[contract::INPUT, &w, &bias],
            vec![
                ("kernel_shape", Attr::Ints(vec![p, p])),
                ("strides", Attr::Ints(vec![p, p])),
            ],
        );
        let shape = self.g.int64s(scope, &[3], &[0, d as i64, -1]);
        let flat = self.g.node(scope, "Reshape", &[&conv, &shape], vec![]);
        let patches = self.g.node(
            scope,
            "Transpose",
            &[&flat],
            vec![("perm", Attr::Ints(vec![0, 2, 1]))],
        );

        let scope = "cls_token";
        let cls = self.weight("cls_token", &[1, 1, d])?;
        let batch = self.g.node(
            scope,
            "Shape",
            &[contract::INPUT],
            vec![("start", Attr::Int(0)), ("end", Attr::Int(1))],
        );
        let ones = self.g.int64s(scope, &[2], &[1, 1]);
        let target = self.g.node(
            scope,
            "Concat",
            &[&batch, &ones],
            vec![("axis", Attr::Int(0))],
        );
        let cls = self.g.node(scope, "Expand", &[&cls, &target], vec![]);
        let tokens = self.g.node(
            scope,
            "Concat",
            &[&cls, &patches],
            vec![("axis", Attr::Int(1))],
        );

        let pos = self.weight("pos_embed", &[1, self.arch.tokens(), d])?;
        Ok(self.g.node("pos_embed", "Add", &[&tokens, &pos], vec![]))
    }

    /// One full pre-norm block (0-based `index`): x + Attn(LN1 x), then + MLP(LN2 ·).
    fn block(&mut self, index: usize, x: &str) -> Result<String, ExportError> {
        let (d, m, heads) = (self.arch.dim, self.arch.mlp_dim, self.arch.heads);
        let scope = format!("blocks.{index}");
        let h = self.layer_norm(&scope, &block_tensor(index, "norm1"), x, None)?;
        let qkv = self.linear(&scope, &block_tensor(index, "attn.qkv"), &h, d, 3 * d)?;
        let [q, k, v] = self.split_heads(&scope, &qkv, heads, None);
        let attn = self.attention_map(&scope, &q, &k, d / heads, None);
        let mixed = self.g.node(&scope, "MatMul", &[&attn, &v], vec![]);
        let merged = self.g.node(
            &scope,
            "Transpose",
            &[&mixed],
            vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let shape = self.g.int64s(&scope, &[3], &[0, 0, d as i64]);
        let merged = self.g.node(&scope, "Reshape", &[&merged, &shape], vec![]);
        let proj = self.linear(&scope, &block_tensor(index, "attn.proj"), &merged, d, d)?;
        let x = self.g.node(&scope, "Add", &[x, &proj], vec![]);

        let h = self.layer_norm(&scope, &block_tensor(index, "norm2"), &x, None)?;
        let h = self.linear(&scope, &block_tensor(index, "mlp.fc1"), &h, d, m)?;
        let h = self.gelu(&scope, &h);
        let h = self.linear(&scope, &block_tensor(index, "mlp.fc2"), &h, m, d)?;
        Ok(self.g.node(&scope, "Add", &[&x, &h], vec![]))
    }

    /// The target block: LN1, qkv and the relation maps, all graph outputs.
    fn target_block(&mut self, x: &str) -> Result<(), ExportError> {
        let (d, heads, n) = (self.arch.dim, self.arch.relation_heads, self.arch.tokens());
        let index = self.arch.target_block - 1;
        let scope = format!("blocks.{index}");
        let h = self.layer_norm(
            &scope,
            &block_tensor(index, "norm1"),
            x,
            Some(contract::LN1),
        )?;

        let w = self
            .checkpoint
            .load_f32(&block_tensor(index, "attn.qkv.weight"))?;
        let w = self
            .g
            .f32_initializer(contract::QKV_WEIGHT, &[3 * d, d], &w);
        let bias = self
            .checkpoint
            .load_f32(&block_tensor(index, "attn.qkv.bias"))?;
        let bias = self.g.f32_initializer(contract::QKV_BIAS, &[3 * d], &bias);
        let wt = self.g.node(
            &scope,
            "Transpose",
            &[&w],
            vec![("perm", Attr::Ints(vec![1, 0]))],
        );
        let qkv = self.g.node(&scope, "MatMul", &[&h, &wt], vec![]);
        let qkv = self.g.node(&scope, "Add", &[&qkv, &bias], vec![]);
        let [q, k, v] = self.split_heads(
            &scope,
            &qkv,
            heads,
            Some([contract::Q, contract::K, contract::V]),
        );
        self.attention_map(&scope, &q, &k, d / heads, Some(contract::R_QK));
        self.attention_map(&scope, &v, &v, d / heads, Some(contract::R_VV));

        let hd = d / heads;
        self.g
            .output(contract::LN1, &[Dim::Batch, Dim::Fixed(n), Dim::Fixed(d)]);
        for name in [contract::Q, contract::K, contract::V] {
            self.g.output(
                name,
                &[Dim::Batch, Dim::Fixed(heads), Dim::Fixed(n), Dim::Fixed(hd)],
            );
        }
        for name in [contract::R_QK, contract::R_VV] {
            self.g.output(
                name,
                &[Dim::Batch, Dim::Fixed(heads), Dim::Fixed(n), Dim::Fixed(n)],
            );
        }
        Ok(())
    }

    /// LayerNormalization over the last axis with the checkpoint's `prefix.weight`/`.bias`.
    fn layer_norm(
        &mut self,
        scope: &str,
        prefix: &str,
        x: &str,
        output: Option<&str>,
    ) -> Result<String, ExportError> {
        let d = self.arch.dim;
        let w = self.weight(&format!("{prefix}.weight"), &[d])?;
        let b = self.weight(&format!("{prefix}.bias"), &[d])?;
        let attrs = vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(LN_EPS))];
        let inputs = [x, w.as_str(), b.as_str()];
        Ok(match output {
            Some(name) => self
                .g
                .named_node(scope, "LayerNormalization", &inputs, attrs, name),
            None => self.g.node(scope, "LayerNormalization", &inputs, attrs),
        })
    }

    /// `x Wᵀ + b` for the checkpoint's Linear `prefix` (`weight [out, in]`, stored transposed).
    fn linear(
        &mut self,
        scope: &str,
        prefix: &str,
        x: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<String, ExportError> {
        let name = format!("{prefix}.weight");
        let w = self.checkpoint.load_f32(&name)?;
        let mut wt = vec![0f32; w.len()];
        for (o, row) in w.chunks_exact(inputs).enumerate() {
            for (i, &value) in row.iter().enumerate() {
                wt[i * outputs + o] = value;
            }
        }
        let wt = self.g.weight(&format!("{name}.t"), &[inputs, outputs], &wt);
        let b = self.weight(&format!("{prefix}.bias"), &[outputs])?;
        let y = self.g.node(scope, "MatMul", &[x, &wt], vec![]);
        Ok(self.g.node(scope, "Add", &[&y, &b], vec![]))
    }

    /// Exact GELU: x · ½ · (1 + erf(x / √2)).
    fn gelu(&mut self, scope: &str, x: &str) -> String {
        let sqrt2 = self.g.scalar(scope, std::f32::consts::SQRT_2);
        let one = self.g.scalar(scope, 1.0);
        let half = self.g.scalar(scope, 0.5);
        let t = self.g.node(scope, "Div", &[x, &sqrt2], vec![]);
        let t = self.g.node(scope, "Erf", &[&t], vec![]);
        let t = self.g.node(scope, "Add", &[&t, &one], vec![]);
        let t = self.g.node(scope, "Mul", &[x, &t], vec![]);
        self.g.node(scope, "Mul", &[&t, &half], vec![])
    }

    /// `[B, N, 3D]` → q, k, v `[B, H, N, d]` (rows of W: q, then k, then v; head h = channels
    /// `[h·d, (h+1)·d)` of each).
    fn split_heads(
        &mut self,
        scope: &str,
        qkv: &str,
        heads: usize,
        names: Option<[&str; 3]>,
    ) -> [String; 3] {
        let d = (self.arch.dim / heads) as i64;
        let shape = self.g.int64s(scope, &[5], &[0, 0, 3, heads as i64, d]);
        let split = self.g.node(scope, "Reshape", &[qkv, &shape], vec![]);
        let split = self.g.node(
            scope,
            "Transpose",
            &[&split],
            vec![("perm", Attr::Ints(vec![2, 0, 3, 1, 4]))],
        );
        [0, 1, 2].map(|i| {
            let index = self.g.int64s(scope, &[], &[i]);
            let attrs = vec![("axis", Attr::Int(0))];
            match names {
                Some(names) => {
                    self.g
                        .named_node(scope, "Gather", &[&split, &index], attrs, names[i as usize])
                }
                None => self.g.node(scope, "Gather", &[&split, &index], attrs),
            }
        })
    }

    /// Softmax(a bᵀ · d^-½) over the last axis: `[B, H, N, N]`.
    fn attention_map(
        &mut self,
        scope: &str,
        a: &str,
        b: &str,
        head_dim: usize,
        output: Option<&str>,
    ) -> String {
        let bt = self.g.node(
            scope,
            "Transpose",
            &[b],
            vec![("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        );
        let logits = self.g.node(scope, "MatMul", &[a, &bt], vec![]);
        let scale = self.g.scalar(scope, (head_dim as f64).powf(-0.5) as f32);
        let logits = self.g.node(scope, "Mul", &[&logits, &scale], vec![]);
        let attrs = vec![("axis", Attr::Int(-1))];
        match output {
            Some(name) => self.g.named_node(scope, "Softmax", &[&logits], attrs, name),
            None => self.g.node(scope, "Softmax", &[&logits], attrs),
        }
    }
}
