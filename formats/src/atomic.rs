//! Crash-safe file replacement for the whole workspace (the store's metadata, checkpoints,
//! exports, the teacher ONNX, the metrics log): a reader, or the machine after a crash, sees
//! the old file or the complete new one, never a torn one, and two writers never share a
//! temporary file.
//!
//! The new content goes to a temporary file with a unique name in the same folder (so the
//! rename stays within one file system), which is synced, renamed over the target, and then
//! the folder itself is synced so that the rename survives a power loss.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// An atomic write that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct AtomicWriteError {
    /// The file being replaced (or its folder, for the final sync).
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` atomically: `write` fills the temporary file at the path it is given (it
/// may create or truncate it), which is then made an ordinary file (mode 0644 on Unix), synced,
/// renamed over `path`, and the folder synced. On any error the temporary file is removed and
/// `path` is untouched.
pub fn replace_file<E: From<AtomicWriteError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let fail = |source| AtomicWriteError {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail(std::io::Error::other("not a file path")))?;
    let folder = folder_of(path);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(folder)
        .map_err(fail)?;
    write(tmp.path())?;
    // Temporary files are private (0600); the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(fail)?;
    }
    std::fs::File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    sync_folder(folder).map_err(|source| AtomicWriteError {
        path: folder.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// [`replace_file`] with the given bytes.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    replace_file(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|source| AtomicWriteError {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Syncs a folder's entries (a rename or a new file in it) to disk. A no-op where folders
/// cannot be opened as files (Windows).
pub fn sync_folder(folder: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(folder)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = folder;
    Ok(())
}

/// A name part that no other writer uses: this process's id and a random token drawn once
/// per process (two machines sharing a file system may reuse a pid), and a counter.
pub fn unique_tag() -> String {
    static TOKEN: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let token = TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{token:016x}-{n}", std::process::id())
}

fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_is_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_file(&path, b"old").unwrap();
        write_file(&path, b"new content").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        }
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_file(&path, b"committed").unwrap();
        let result: Result<(), AtomicWriteError> = replace_file(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(AtomicWriteError {
                path: tmp.to_path_buf(),
                source: std::io::Error::other("disk full"),
            })
        });
        assert!(result.unwrap_err().to_string().contains("disk full"));
        assert_eq!(std::fs::read(&path).unwrap(), b"committed");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_writers_never_share_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zarr.json");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_file(path, &[i; 4096]).unwrap();
                    }
                });
            }
        });
        // Whichever writer came last, its content is whole.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096);
        assert!(bytes.iter().all(|&b| b == bytes[0]));
        let tags: std::collections::HashSet<String> = (0..100).map(|_| unique_tag()).collect();
        assert_eq!(tags.len(), 100);
    }
}
