//! What each tensor name of a timm/MAE ViT checkpoint is: part of the model, ignorable (it
//! only serves a head or decoder that the teacher and student never run), or unknown — and an
//! unknown tensor is refused, because a network that has one is not the plain ViT described
//! here (LayerScale's `ls1.gamma`, BEiT's `relative_position_bias_table` or `q_bias`, DeiT's
//! `dist_token`, registers).

use std::collections::BTreeMap;

/// The tensors of the stem, before the blocks.
pub const STEM_TENSORS: [&str; 4] = [
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "cls_token",
    "pos_embed",
];

/// The tensors of one pre-norm block, after `blocks.{i}.`.
pub const BLOCK_TENSORS: [&str; 12] = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.qkv.bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
];

/// The final LayerNorm after the last block.
pub const FINAL_NORM_TENSORS: [&str; 2] = ["norm.weight", "norm.bias"];

/// Parts of a checkpoint that neither phase runs, by name prefix, with what they are.
const IGNORABLE: [(&str, &str); 6] = [
    ("decoder_", "the MAE decoder"),
    ("decoder.", "the MAE decoder"),
    ("mask_token", "the MAE decoder"),
    ("head.", "the classifier head"),
    ("head_dist.", "the classifier head"),
    ("fc_norm.", "the classifier's pooled-feature norm"),
];

/// What one tensor of a checkpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorRole {
    /// A tensor of the ViT itself: the stem, a block, the final norm.
    Model,
    /// A tensor of something the phases never run; the text says what.
    Ignorable(&'static str),
    /// Not a tensor of a plain ViT.
    Unknown,
}

/// The role of tensor `name`.
pub fn role(name: &str) -> TensorRole {
    if STEM_TENSORS.contains(&name) || FINAL_NORM_TENSORS.contains(&name) {
        return TensorRole::Model;
    }
    if let Some(rest) = name.strip_prefix("blocks.") {
        let known = rest.split_once('.').is_some_and(|(index, suffix)| {
            index.parse::<usize>().is_ok() && BLOCK_TENSORS.contains(&suffix)
        });
        return if known {
            TensorRole::Model
        } else {
            TensorRole::Unknown
        };
    }
    IGNORABLE
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix) || name == prefix.trim_end_matches('.'))
        .map_or(TensorRole::Unknown, |(_, what)| TensorRole::Ignorable(what))
}

/// The timm/MAE name of a tensor of block `index` (0-based), e.g. `blocks.17.attn.qkv.weight`.
pub fn block_tensor(index: usize, suffix: &str) -> String {
    format!("blocks.{index}.{suffix}")
}

/// How a checkpoint's tensors were accounted for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TensorAccount {
    /// Tensors of the ViT.
    pub model: usize,
    /// Ignorable tensors, counted by what they are.
    pub ignored: BTreeMap<&'static str, usize>,
    /// Tensors that are not part of a plain ViT, sorted.
    pub unknown: Vec<String>,
}

impl TensorAccount {
    /// Sorts every name into its role.
    pub fn of<'a>(names: impl IntoIterator<Item = &'a str>) -> TensorAccount {
        let mut account = TensorAccount::default();
        for name in names {
            match role(name) {
                TensorRole::Model => account.model += 1,
                TensorRole::Ignorable(what) => *account.ignored.entry(what).or_default() += 1,
                TensorRole::Unknown => account.unknown.push(name.to_string()),
            }
        }
        account.unknown.sort();
        account
    }

    /// The ignored tensors for a log line, e.g. `ignored 40 tensors: the MAE decoder (38),
    /// the classifier head (2)`; `None` when nothing was ignored.
    pub fn ignored_summary(&self) -> Option<String> {
        let total: usize = self.ignored.values().sum();
        (total > 0).then(|| {
            let parts: Vec<String> = self
                .ignored
                .iter()
                .map(|(what, n)| format!("{what} ({n})"))
                .collect();
            let noun = if total == 1 { "tensor" } else { "tensors" };
            format!("ignored {total} {noun}: {}", parts.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_vit_tensors_are_the_model() {
        for name in [
            "cls_token",
            "pos_embed",
            "patch_embed.proj.weight",
            "blocks.0.norm1.weight",
            "blocks.23.mlp.fc2.bias",
            "norm.bias",
        ] {
            assert_eq!(role(name), TensorRole::Model, "{name}");
        }
    }

    #[test]
    fn decoder_and_heads_are_ignorable() {
        for (name, what) in [
            ("decoder_embed.weight", "the MAE decoder"),
            ("decoder_blocks.3.attn.qkv.weight", "the MAE decoder"),
            ("decoder_pos_embed", "the MAE decoder"),
            ("mask_token", "the MAE decoder"),
            ("head.weight", "the classifier head"),
            ("fc_norm.bias", "the classifier's pooled-feature norm"),
        ] {
            assert_eq!(role(name), TensorRole::Ignorable(what), "{name}");
        }
    }

    #[test]
    fn tensors_that_change_the_network_are_unknown() {
        for name in [
            "blocks.0.ls1.gamma",
            "blocks.0.ls2.gamma",
            "blocks.3.attn.relative_position_bias_table",
            "blocks.1.attn.q_bias",
            "blocks.x.norm1.weight",
            "dist_token",
            "reg_token",
            "norm_pre.weight",
            "headless",
        ] {
            assert_eq!(role(name), TensorRole::Unknown, "{name}");
        }
    }

    #[test]
    fn the_account_counts_and_names() {
        let account = TensorAccount::of([
            "cls_token",
            "decoder_embed.weight",
            "decoder_norm.bias",
            "head.weight",
            "blocks.1.ls1.gamma",
            "blocks.0.ls1.gamma",
        ]);
        assert_eq!(account.model, 1);
        assert_eq!(
            account.unknown,
            ["blocks.0.ls1.gamma", "blocks.1.ls1.gamma"]
        );
        assert_eq!(
            account.ignored_summary().unwrap(),
            "ignored 3 tensors: the MAE decoder (2), the classifier head (1)"
        );
        assert_eq!(TensorAccount::of(["cls_token"]).ignored_summary(), None);
    }
}
