//! Shared by the extract integration tests: where the cached assets are.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

/// The asset cache: `$TINYMIM_CACHE`, else `<workspace>/.cache/tinymim` (scripts/setup.sh).
pub fn cache() -> PathBuf {
    std::env::var_os("TINYMIM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/tinymim"))
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The real DINOv2 ViT-S/14 teacher (shared/ASSETS.md).
pub fn dinov2_onnx() -> PathBuf {
    cache().join("teachers/vit_s_focus.onnx")
}

/// Its shipped teacher config.
pub fn dinov2_config() -> PathBuf {
    workspace().join("configs/teachers/dinov2-small.toml")
}

/// A cached real photo.
pub fn photo(name: &str) -> PathBuf {
    cache().join("photos").join(name)
}
