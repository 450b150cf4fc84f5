//! The architecture flags of `extract teacher`; the architecture itself is described in
//! [`tinymim_formats::vit`], which `train`'s online teacher reads checkpoints with too.

use tinymim_formats::vit::ArchOverrides;

/// Architecture flags of `extract teacher`; each overrides the preset or architecture file.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ArchArgs {
    /// Width D of the model.
    #[arg(long)]
    pub dim: Option<usize>,
    /// Number of blocks in the checkpoint.
    #[arg(long)]
    pub depth: Option<usize>,
    /// Relation heads H of the target block (d = D / H). Defaults to the model's attention
    /// heads; the blocks before the target always run with the model's own heads, which this
    /// flag supplies only when no preset or architecture file does.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Patch size in pixels.
    #[arg(long)]
    pub patch: Option<usize>,
    /// Input side in pixels (square input).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Hidden width of the MLP (default 4 · dim).
    #[arg(long)]
    pub mlp_dim: Option<usize>,
    /// Target block, 1-based (default: the preset's, else the last block).
    #[arg(long)]
    pub block: Option<usize>,
    /// Architecture name recorded in the teacher geometry (default: the preset's, else `vit`).
    #[arg(long)]
    pub arch: Option<String>,
}

impl ArchArgs {
    /// The flags as overrides of every other source of the architecture.
    pub fn overrides(&self) -> ArchOverrides {
        ArchOverrides {
            dim: self.dim,
            depth: self.depth,
            heads: self.heads,
            patch: self.patch,
            image_size: self.image_size,
            mlp_dim: self.mlp_dim,
            target_block: self.block,
            arch: self.arch.clone(),
        }
    }
}
