//! ONNX Runtime for croco: finding the library, the one environment of the
//! process, and sessions on the requested execution provider.
//!
//! The library is loaded at run time (`load-dynamic`): from `ORT_DYLIB_PATH`,
//! else from the `onnxruntime` / `onnxruntime-gpu` Python package of the
//! active `python3`. Nothing is downloaded. `ort` panics when `dlopen` fails,
//! so the path is checked here first and a missing library is a clear error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::value::DynValue;
use serde::{Deserialize, Serialize};

use super::ModelError;

/// Where sessions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when its provider loads, else CPU (logged).
    #[default]
    Auto,
    /// The CPU execution provider.
    Cpu,
    /// The CUDA execution provider; failing to load it is an error.
    Cuda,
}

/// What to run sessions on, resolved from a [`Device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// CPU execution provider.
    Cpu,
    /// CUDA execution provider on this device id.
    Cuda(i32),
}

/// Session settings of a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Requested device.
    pub device: Device,
    /// CUDA device id.
    pub device_id: i32,
    /// Intra-op threads (0: ONNX Runtime's default).
    pub threads: usize,
}

const INSTALL_HINT: &str = "install ONNX Runtime 1.31: `pip install onnxruntime==1.31.1` (CPU) or \
                            `pip install onnxruntime-gpu==1.31.1` (CUDA), or set ORT_DYLIB_PATH to libonnxruntime.so";

/// The process's ONNX Runtime environment, created on first use.
pub fn environment() -> Result<&'static Environment, ModelError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let library = find_library().map_err(|e| e.to_string())?;
        tracing::info!(library = %library.display(), "loading ONNX Runtime");
        let builder = ort::init_from(&library).map_err(|e| format!("{}: {e}", library.display()))?;
        builder.with_name("croco").build().map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|message| ModelError::Unavailable(message.clone()))
}

/// Finds `libonnxruntime`: `ORT_DYLIB_PATH`, else the Python package.
pub fn find_library() -> Result<PathBuf, ModelError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return match path.is_file() {
            true => Ok(path),
            false => {
                Err(ModelError::Unavailable(format!("ORT_DYLIB_PATH={} is not a file; {INSTALL_HINT}", path.display())))
            }
        };
    }
    python_package_library().ok_or_else(|| ModelError::Unavailable(format!("ONNX Runtime not found; {INSTALL_HINT}")))
}

/// `libonnxruntime.so*` inside the `onnxruntime` package of `python3`, if any.
fn python_package_library() -> Option<PathBuf> {
    let script = "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))";
    let output = std::process::Command::new("python3").args(["-c", script]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let capi = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    // The fully versioned file sorts last (libonnxruntime.so.1.31.1).
    candidates.sort();
    candidates.pop()
}

/// Resolves `device` to a target: `Auto` probes the CUDA provider.
pub fn resolve_target(config: &SessionConfig) -> Result<Target, ModelError> {
    environment()?;
    let cuda_available = || ep::CUDA::is_available().unwrap_or(false);
    let target = match config.device {
        Device::Cpu => Target::Cpu,
        Device::Cuda if !cuda_available() => {
            return Err(ModelError::Unavailable(format!(
                "device = \"cuda\", but this ONNX Runtime ({}) has no CUDA execution provider; install \
                 `onnxruntime-gpu==1.31.1` or set ORT_DYLIB_PATH to its libonnxruntime.so",
                find_library()?.display()
            )));
        }
        Device::Cuda => Target::Cuda(config.device_id),
        Device::Auto if cuda_available() => Target::Cuda(config.device_id),
        Device::Auto => Target::Cpu,
    };
    if config.device == Device::Auto {
        tracing::info!(?target, "device = \"auto\" resolved");
    }
    Ok(target)
}

/// Builds a session for the ONNX file at `path` on `target`. A CUDA target
/// that cannot register its provider fails here instead of silently falling
/// back to the CPU.
pub fn session(path: &Path, target: Target, threads: usize) -> Result<Session, ModelError> {
    let error = |source: ort::Error| ModelError::Session { path: path.to_path_buf(), source };
    builder(path, target, threads)?.commit_from_file(path).map_err(error)
}

/// Like [`session`], for a graph compiled into croco; `name` stands for its
/// path in errors.
pub fn session_from_memory(name: &str, model: &[u8], target: Target, threads: usize) -> Result<Session, ModelError> {
    packed_session(Path::new(name), model, target, threads, &[], None, false)
}

/// The session of the graph `model` (`path` names it in errors), with
/// `initializers` replacing the graph's placeholder initializers of those
/// names ([`super::onnx_proto::weights_as_initializers`]) through
/// `AddInitializer`: the session reads them where they are, and the CPU's
/// kernels pack them once, into `packed` when given (sessions given the same
/// container pack each matrix once between them; ONNX Runtime shares packed
/// copies only of initializers added this way, not of external ones). With
/// `decode_attention`, croco's decode-step attention kernel is registered
/// ([`super::decode_attention`]).
pub fn packed_session(
    path: &Path,
    model: &[u8],
    target: Target,
    threads: usize,
    initializers: &[(String, Arc<DynValue>)],
    packed: Option<&PrepackedWeights>,
    decode_attention: bool,
) -> Result<Session, ModelError> {
    let error = |source: ort::Error| ModelError::Session { path: path.to_path_buf(), source };
    let mut builder = builder(path, target, threads)?;
    for (name, value) in initializers {
        builder = builder.with_initializer(name, Arc::clone(value)).map_err(|e| error(e.into()))?;
    }
    if let Some(packed) = packed {
        builder = builder.with_prepacked_weights(packed).map_err(|e| error(e.into()))?;
    }
    if decode_attention {
        let domain = super::decode_attention::domain().map_err(error)?;
        builder = builder.with_operators(domain).map_err(|e| error(e.into()))?;
    }
    builder.commit_from_memory(model).map_err(error)
}

/// A session builder on `target`; `path` names the graph in errors.
fn builder(path: &Path, target: Target, threads: usize) -> Result<ort::session::builder::SessionBuilder, ModelError> {
    let error = |source: ort::Error| ModelError::Session { path: path.to_path_buf(), source };
    let mut builder = Session::builder(environment()?).map_err(error)?;
    builder = builder.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| error(e.into()))?;
    if threads > 0 {
        builder = builder.with_intra_threads(threads).map_err(|e| error(e.into()))?;
    }
    if let Target::Cuda(id) = target {
        let cuda = ep::CUDA::default().with_device_id(id).build().error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|e| error(e.into()))?;
    }
    Ok(builder)
}
