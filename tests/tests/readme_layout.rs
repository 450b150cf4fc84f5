//! README's layout section is a map of the rooms of the workspace: every path it names (in
//! backticks, under a crate folder) exists, so the map stays true when modules move.

use std::path::Path;

/// The text of README's "## Layout" section.
fn layout_section(readme: &str) -> &str {
    let start = readme
        .find("\n## Layout\n")
        .expect("README has a Layout section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn every_module_the_readme_layout_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = layout_section(&readme);
    let crates = ["formats/", "extract/", "train/", "tests/"];
    let mut named = Vec::new();
    for (i, part) in section.split('`').enumerate() {
        // Odd pieces are the backticked spans; keep those that are paths into a crate.
        if i % 2 == 1 && crates.iter().any(|c| part.starts_with(c)) && part.contains('/') {
            named.push(part.to_string());
        }
    }
    // The fused kernels' files are named bare, inside their folder's row.
    let fused = root.join("train/src/model/fused");
    for file in [
        "mod.rs",
        "lanes.rs",
        "softmax.rs",
        "attention.rs",
        "products.rs",
        "linear.rs",
        "norm.rs",
        "elementwise.rs",
    ] {
        assert!(
            section.contains(&format!("`{file}`")),
            "the layout names {file}"
        );
        assert!(
            fused.join(file).is_file(),
            "train/src/model/fused/{file} is named but missing"
        );
    }
    assert!(
        named.len() >= 25,
        "only {} paths found in the layout section",
        named.len()
    );
    let missing: Vec<&String> = named
        .iter()
        .filter(|p| !root.join(p.as_str()).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "README's layout names paths that do not exist: {missing:?}"
    );
}
