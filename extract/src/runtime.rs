//! ONNX Runtime: finding its shared library without help from the user, starting it once per
//! process, and choosing the execution provider (CUDA when asked for or available, else CPU).
//!
//! `ort` is built with `load-dynamic`, so the library is loaded at run time. It is looked for,
//! in order, at
//!
//! 1. `$ORT_DYLIB_PATH` (a file);
//! 2. `$TINYMIM_CACHE/onnxruntime-gpu/` then `$TINYMIM_CACHE/onnxruntime/`
//!    (`libonnxruntime.so*`: the GPU build of `scripts/setup.sh --ort-gpu`, then the CPU one);
//! 3. the same two folders of the project's cache `<workspace>/.cache/tinymim/`, the workspace
//!    being the one this crate was compiled in, or any folder above the running executable that
//!    has a cache;
//! 4. the `onnxruntime` package of the user's Python (`onnxruntime/capi/libonnxruntime.so*`;
//!    the `onnxruntime-gpu` wheel installs under that name too).
//!
//! `ort` panics when an environment is built before a library is loaded, and refuses a second
//! environment in one process: [`Runtime::get`] loads the library first and keeps the one
//! environment for the life of the process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use tinymim_formats::launch::local_gpu;

/// Environment variable naming the ONNX Runtime library file explicitly.
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
/// Environment variable naming the asset cache (see `scripts/setup.sh`).
pub const TINYMIM_CACHE: &str = "TINYMIM_CACHE";

/// Where the teacher runs, as asked for on the command line (`--device`): with `auto`, CUDA on
/// the launcher's local GPU ([`tinymim_formats::launch::local_gpu`]) when the library has the
/// CUDA execution provider and a GPU is present, else the CPU; bare `cuda` is that GPU too.
pub use tinymim_formats::DeviceSpec as Device;

/// The execution provider a session actually runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// ONNX Runtime's CPU execution provider.
    Cpu,
    /// ONNX Runtime's CUDA execution provider on this GPU.
    Cuda(usize),
}

impl Provider {
    /// The provider's ONNX Runtime name, for logs and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda(_) => "CUDAExecutionProvider",
        }
    }
}

/// Why ONNX Runtime could not be started or a session could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No library was found anywhere on the search path.
    #[error(
        "the ONNX Runtime library was not found (looked in {searched}); run scripts/setup.sh \
         to fetch it into the project cache, or set ORT_DYLIB_PATH to a libonnxruntime.so"
    )]
    NotFound {
        /// Every place looked in, comma-separated.
        searched: String,
    },
    /// `ORT_DYLIB_PATH` names a file that does not exist.
    #[error("ORT_DYLIB_PATH names {path}, which does not exist")]
    EnvPathMissing {
        /// The value of `ORT_DYLIB_PATH`.
        path: PathBuf,
    },
    /// The library exists but could not be loaded (wrong file, too old a version, …).
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Load {
        /// The library file.
        path: PathBuf,
        /// What `ort` reported.
        reason: String,
    },
    /// `--device cuda[:N]` was asked for but cannot be honoured.
    #[error("--device {device}: {reason}")]
    CudaUnavailable {
        /// What was asked for.
        device: Device,
        /// Why not.
        reason: String,
    },
    /// An earlier attempt to start ONNX Runtime in this process failed with this message.
    #[error("{0}")]
    Failed(String),
    /// ONNX Runtime reported an error while starting or configuring a session.
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
}

/// The started ONNX Runtime: the loaded library and the process's one environment.
pub struct Runtime {
    library: PathBuf,
    environment: Environment,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

impl Runtime {
    /// Finds and loads the library and builds the environment, once per process; later calls
    /// return the same runtime (or the same error).
    pub fn get() -> Result<&'static Runtime, RuntimeError> {
        // A failed start is remembered as its message: the library stays loaded (or not) for
        // the whole process, so retrying cannot succeed.
        let started = RUNTIME.get_or_init(|| Runtime::start().map_err(|e| e.to_string()));
        match started {
            Ok(runtime) => Ok(runtime),
            Err(message) => Err(RuntimeError::Failed(message.clone())),
        }
    }

    fn start() -> Result<Runtime, RuntimeError> {
        let library = locate_library()?;
        let builder = ort::init_from(&library).map_err(|e| RuntimeError::Load {
            path: library.clone(),
            reason: e.to_string(),
        })?;
        let environment = builder.with_name("tinymim-extract").build()?;
        Ok(Runtime {
            library,
            environment,
        })
    }

    /// The library file that was loaded.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// ONNX Runtime's version string, e.g. `1.31.1`.
    pub fn version(&self) -> String {
        // The loaded file is `libonnxruntime.so.<version>`; the build string is long and noisy.
        self.library
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("libonnxruntime.so."))
            .unwrap_or("unknown")
            .to_string()
    }

    /// Whether the loaded library was built with the CUDA execution provider.
    pub fn has_cuda_provider(&self) -> bool {
        ep::CUDA::is_available().unwrap_or(false)
    }

    /// A session of the ONNX model `model` on `device` with `threads` intra-op threads
    /// (`None`: ONNX Runtime's default, one per core) and full graph optimisation, and the
    /// provider it runs on. With [`Device::Auto`], a CUDA provider that fails to start falls
    /// back to the CPU with a message on stderr; with [`Device::Cuda`] that is an error.
    pub fn session(
        &self,
        model: &[u8],
        device: Device,
        threads: Option<usize>,
    ) -> Result<(Session, Provider), RuntimeError> {
        let provider = self.choose_provider(device)?;
        match self.try_session(model, provider, threads) {
            Err(e) if provider != Provider::Cpu && device == Device::Auto => {
                eprintln!("extract: the CUDA execution provider failed ({e}); using the CPU");
                Ok((
                    self.try_session(model, Provider::Cpu, threads)?,
                    Provider::Cpu,
                ))
            }
            Err(RuntimeError::Ort(e)) if provider != Provider::Cpu => {
                Err(RuntimeError::CudaUnavailable {
                    device,
                    reason: format!("the CUDA execution provider failed to start: {e}"),
                })
            }
            result => Ok((result?, provider)),
        }
    }

    fn try_session(
        &self,
        model: &[u8],
        provider: Provider,
        threads: Option<usize>,
    ) -> Result<Session, RuntimeError> {
        let mut builder = Session::builder(&self.environment)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort::Error::from)?;
        if let Some(threads) = threads {
            builder = builder
                .with_intra_threads(threads)
                .map_err(ort::Error::from)?;
        }
        if let Provider::Cuda(gpu) = provider {
            // `error_on_failure`: a provider that cannot start is an error here, never a silent
            // run on the CPU (ONNX Runtime's default); `session` decides what `auto` does.
            let cuda = ep::CUDA::default().with_device_id(gpu as i32);
            builder = builder
                .with_execution_providers([cuda.build().error_on_failure()])
                .map_err(ort::Error::from)?;
        }
        Ok(builder.commit_from_memory(model)?)
    }

    /// The provider `device` resolves to on this machine.
    pub fn choose_provider(&self, device: Device) -> Result<Provider, RuntimeError> {
        let has_provider = self.has_cuda_provider();
        let has_gpu = gpu_present();
        match device {
            Device::Cpu => Ok(Provider::Cpu),
            Device::Auto if has_provider && has_gpu => {
                Ok(Provider::Cuda(local_gpu(&|name| std::env::var(name).ok())))
            }
            Device::Auto => Ok(Provider::Cpu),
            Device::Cuda(_) if !has_provider => Err(RuntimeError::CudaUnavailable {
                device,
                reason: format!(
                    "{} is a build without the CUDA execution provider (install the \
                     onnxruntime-gpu build and point ORT_DYLIB_PATH at its library)",
                    self.library.display()
                ),
            }),
            Device::Cuda(_) if !has_gpu => Err(RuntimeError::CudaUnavailable {
                device,
                reason: "no NVIDIA GPU is visible on this machine (no /dev/nvidia0)".into(),
            }),
            Device::Cuda(gpu) => Ok(Provider::Cuda(gpu)),
        }
    }
}

/// Whether an NVIDIA GPU is visible to this process.
fn gpu_present() -> bool {
    Path::new("/dev/nvidia0").exists()
        || std::fs::read_dir("/proc/driver/nvidia/gpus")
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
}

/// Finds the ONNX Runtime library along the search path of the module documentation.
pub fn locate_library() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os(ORT_DYLIB_PATH).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RuntimeError::EnvPathMissing { path })
        };
    }
    let mut searched = Vec::new();
    for folder in cache_folders() {
        if let Some(lib) = library_in(&folder) {
            return Ok(lib);
        }
        searched.push(folder.display().to_string());
    }
    if let Some(folder) = python_onnxruntime_capi() {
        if let Some(lib) = library_in(&folder) {
            return Ok(lib);
        }
        searched.push(folder.display().to_string());
    } else {
        searched.push("the onnxruntime package of python3 (not installed)".into());
    }
    Err(RuntimeError::NotFound {
        searched: searched.join(", "),
    })
}

/// The library folders of the asset caches, most specific first, without duplicates: in each
/// cache the GPU build (`onnxruntime-gpu/`, from `scripts/setup.sh --ort-gpu`) before the CPU
/// build (`onnxruntime/`). The GPU build runs on the CPU too; its CUDA provider's libraries are
/// only loaded when a session asks for CUDA.
fn cache_folders() -> Vec<PathBuf> {
    let mut caches = Vec::new();
    if let Some(cache) = std::env::var_os(TINYMIM_CACHE).filter(|p| !p.is_empty()) {
        caches.push(PathBuf::from(cache));
    }
    let project_cache = |root: &Path| root.join(".cache/tinymim");
    // The workspace this binary was compiled in.
    if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        caches.push(project_cache(workspace));
    }
    // Any folder above the executable (a copied workspace, an installed tree next to a cache).
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let cache = project_cache(dir);
            if cache.is_dir() {
                caches.push(cache);
                break;
            }
        }
    }
    let mut unique = Vec::new();
    for cache in caches {
        for folder in [cache.join("onnxruntime-gpu"), cache.join("onnxruntime")] {
            if !unique.contains(&folder) {
                unique.push(folder);
            }
        }
    }
    unique
}

/// `libonnxruntime.so*` in `folder` (the highest version when several are there).
fn library_in(folder: &Path) -> Option<PathBuf> {
    let mut libs: Vec<PathBuf> = std::fs::read_dir(folder)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .collect();
    libs.sort_by_key(|p| version_key(p));
    libs.pop()
}

/// Sort key of `libonnxruntime.so.<a>.<b>.<c>`: its numeric version parts.
fn version_key(path: &Path) -> Vec<u64> {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so"))
        .map(|v| v.split('.').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// `<site-packages>/onnxruntime/capi` of the user's `python3`, if it has `onnxruntime`.
fn python_onnxruntime_capi() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = String::from_utf8(out.stdout).ok()?;
    Some(PathBuf::from(dir.trim()).join("capi"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_in_picks_the_highest_version_and_ignores_providers() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.31.1",
            "libonnxruntime_providers_shared.so",
            "README",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let lib = library_in(dir.path()).unwrap();
        assert_eq!(lib.file_name().unwrap(), "libonnxruntime.so.1.31.1");
    }

    #[test]
    fn each_cache_offers_its_gpu_build_before_its_cpu_build() {
        let folders = cache_folders();
        let gpu = folders
            .iter()
            .position(|f| f.ends_with(".cache/tinymim/onnxruntime-gpu"));
        let cpu = folders
            .iter()
            .position(|f| f.ends_with(".cache/tinymim/onnxruntime"));
        assert!(gpu.is_some() && cpu.is_some(), "{folders:?}");
        assert_eq!(gpu.unwrap() + 1, cpu.unwrap(), "{folders:?}");
    }

    #[test]
    fn library_in_an_empty_or_missing_folder_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in(dir.path()), None);
        assert_eq!(library_in(&dir.path().join("missing")), None);
    }
}
