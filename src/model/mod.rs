//! Models: croco bundles (`docs/bundle-format.md`) and, on top of them, the
//! ONNX Runtime sessions that generate, score and compute log-probs.

pub mod bundle;

use std::path::PathBuf;

/// Errors at the model boundary. Each names the bundle file or key concerned.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A bundle file could not be read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The manifest is not valid TOML of the bundle format.
    #[error("{}: {message}", path.display())]
    Manifest { path: PathBuf, message: String },
    /// The bundle is readable but does not hold together.
    #[error("bundle {}: {problem}", dir.display())]
    Invalid { dir: PathBuf, problem: String },
}
