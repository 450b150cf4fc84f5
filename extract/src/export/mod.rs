//! `extract teacher`: export a ViT checkpoint as a truncated teacher ONNX that follows the
//! teacher contract ([`tinymim_formats::teacher::contract`]).
//!
//! ```text
//! extract teacher --checkpoint mae_pretrain_vit_large.pth --block 18 --out mae_vit_l.onnx
//! extract teacher --checkpoint runs/vit-base/export/model.safetensors --heads 12 --out vit_b.onnx
//! ```
//!
//! The checkpoint is an MAE/timm `.pth` or a `.safetensors` (a student exported by `train`,
//! with a `config.json` beside it). The graph runs the model up to its target block and ends
//! with that block's `ln1`, `q`, `k`, `v`, `r_qk` and `r_vv` ([`vit`]); the file carries the
//! teacher geometry and the checkpoint's blake3 in its metadata.

mod arch;
mod error;
mod onnx;
mod vit;

use std::path::PathBuf;
use std::time::Instant;

use tinymim_formats::teacher::contract;
use tinymim_formats::Hash32;

pub use arch::ArchArgs;
pub use error::ExportError;
pub use onnx::WeightDtype;
use tinymim_formats::vit::{ArchFile, Checkpoint, VitArch, VitError};

/// Arguments of `extract teacher`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// The checkpoint: a PyTorch .pth (a state dict, or MAE's dict with one under `model`) or a
    /// .safetensors, with timm/MAE tensor names.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write the teacher ONNX (written to a temporary file, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// A built-in architecture preset: mae-vit-large (target block 18) or mae-vit-base (12).
    /// What it, --config and the flags leave open comes from a config.json beside a
    /// .safetensors checkpoint, then the preset of the checkpoint's width and depth, then the
    /// checkpoint's tensor shapes (heads: those of the built-in presets of its width, 192/3,
    /// 384/6, 768/12, 1024/16).
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// An architecture file: a TOML preset or a student's config.json.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub arch: ArchArgs,
    /// How weights are stored: float32, or float16 (half the size; cast to float32 in the
    /// graph, so computation stays float32). The target block's qkv initializers are always
    /// float32.
    #[arg(long, value_enum, default_value_t = WeightDtype::Float32)]
    pub dtype: WeightDtype,
}

/// What an export produced, for the summary line and for callers.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    /// The resolved architecture.
    pub arch: VitArch,
    /// blake3 of the checkpoint file, recorded as [`contract::META_WEIGHTS`].
    pub weights: Hash32,
    /// Size of the written ONNX file in bytes.
    pub bytes: u64,
}

/// Runs `extract teacher`: exports, then prints a one-line summary.
pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let summary = export(args)?;
    println!(
        "wrote {} ({:.1} MB, {} weights, checkpoint blake3 {}): {}, target block {}, \
         {} relation heads, {} tokens, in {:.1} s",
        args.out.display(),
        summary.bytes as f64 / 1e6,
        args.dtype.name(),
        summary.weights.short(),
        summary.arch.summary(),
        summary.arch.target_block,
        summary.arch.relation_heads,
        summary.arch.tokens(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// Exports the teacher described by `args`: resolves and checks the architecture against the
/// checkpoint, builds the truncated graph and writes it with the contract's metadata.
pub fn export(args: &ExportArgs) -> Result<ExportSummary, ExportError> {
    let checkpoint = Checkpoint::open(&args.checkpoint)?;
    let given = match (&args.preset, &args.config) {
        (Some(name), _) => Some(ArchFile::preset(name)?),
        (None, Some(path)) => Some(ArchFile::load(path)?),
        (None, None) => None,
    };
    let file = ArchFile::describe(&checkpoint, given)?;
    let arch = VitArch::resolve(&args.arch.overrides(), &file)?;
    let account = arch.check(&checkpoint)?;
    if let Some(ignored) = account.ignored_summary() {
        eprintln!("{}: {ignored}", args.checkpoint.display());
    }
    let weights =
        Hash32::of_file(&args.checkpoint).map_err(|e| VitError::CheckpointUnreadable {
            path: args.checkpoint.clone(),
            reason: e.to_string(),
        })?;
    let graph = vit::teacher_graph(&arch, &checkpoint, args.dtype)?;
    let geometry = serde_json::to_string(&arch.geometry()).expect("geometry serialises to JSON");
    let metadata = [
        (contract::META_VERSION, "1".to_string()),
        (contract::META_GEOMETRY, geometry),
        (contract::META_WEIGHTS, weights.to_hex()),
    ];
    onnx::write_model(graph, &metadata, &args.out)?;
    let bytes = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    Ok(ExportSummary {
        arch,
        weights,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use onnx_protobuf::{Message, ModelProto};
    use tinymim_formats::TeacherGeometry;

    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mae_tiny/mae_tiny.pth")
    }

    fn tiny_args(out: PathBuf) -> ExportArgs {
        ExportArgs {
            checkpoint: fixture(),
            out,
            preset: None,
            config: None,
            arch: ArchArgs {
                dim: Some(64),
                depth: Some(4),
                heads: Some(4),
                patch: Some(16),
                image_size: Some(64),
                block: Some(3),
                arch: Some("mae-tiny".into()),
                ..ArchArgs::default()
            },
            dtype: WeightDtype::Float32,
        }
    }

    #[test]
    fn exported_graph_ends_at_the_target_block_and_carries_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("teacher.onnx");
        export(&tiny_args(out.clone())).unwrap();
        let model = ModelProto::parse_from_bytes(&std::fs::read(&out).unwrap()).unwrap();
        assert!(model.ir_version <= 10);
        assert_eq!(model.opset_import[0].version, 17);
        let graph = model.graph.as_ref().unwrap();

        let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outputs, ["ln1", "q", "k", "v", "r_qk", "r_vv"]);
        // Two full blocks and the target block's LN1: 5 LayerNorms; GELU (Erf) only in the two
        // full blocks; one attention Softmax per full block plus the two relation maps.
        let count = |op: &str| graph.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(
            (count("LayerNormalization"), count("Erf"), count("Softmax")),
            (5, 2, 4)
        );
        for init in &graph.initializer {
            let n = &init.name;
            assert!(
                !n.starts_with("blocks.3.") && !n.starts_with("norm."),
                "{n} is past the target"
            );
            assert!(
                !n.starts_with("blocks.2.") || n.starts_with("blocks.2.norm1."),
                "{n}: the target block needs only norm1 (its qkv is the contract's)"
            );
        }
        let qkv = graph
            .initializer
            .iter()
            .find(|t| t.name == contract::QKV_WEIGHT)
            .unwrap();
        assert_eq!(qkv.dims, [192, 64]);

        let meta: BTreeMap<&str, &str> = model
            .metadata_props
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(meta[contract::META_VERSION], "1");
        let geometry: TeacherGeometry =
            serde_json::from_str(meta[contract::META_GEOMETRY]).unwrap();
        assert_eq!((geometry.tokens, geometry.heads, geometry.dim), (17, 4, 64));
        assert_eq!(
            (geometry.target_block, geometry.patch, geometry.image_size),
            (3, 16, 64)
        );
        let file_hash = blake3::hash(&std::fs::read(fixture()).unwrap());
        assert_eq!(meta[contract::META_WEIGHTS], file_hash.to_hex().as_str());
    }
}
