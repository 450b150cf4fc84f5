//! What the extraction benchmarks share: the asset cache, positional arguments and the real
//! DINOv2-S teacher.

use std::path::PathBuf;

use tinymim_extract::teacher::{Teacher, TeacherConfig, TeacherOptions};

/// The asset cache laid out by `scripts/setup.sh` (`$TINYMIM_CACHE`, else `.cache/tinymim`).
pub fn cache() -> PathBuf {
    std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/tinymim"))
}

/// Positional argument `i` as a positive integer, or `default`.
pub fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .map(|a| a.parse().expect("a positive integer argument"))
        .unwrap_or(default)
}

/// The cached DINOv2-S/14 teacher with its config (`configs/teachers/dinov2-small.toml`).
pub fn dinov2_teacher(options: &TeacherOptions) -> anyhow::Result<Teacher> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = TeacherConfig::load(&workspace.join("configs/teachers/dinov2-small.toml"))?;
    Ok(Teacher::load(
        &cache().join("teachers/vit_s_focus.onnx"),
        Some(&config),
        options,
    )?)
}
